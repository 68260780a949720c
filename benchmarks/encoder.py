"""Time DeepEncoder per resolution mode against a reference built from the public implementations
(segment-anything's `ImageEncoderViT` + transformers' CLIP encoder) on the same random weights.

    python benchmarks/encoder.py [--modes tiny small base large gundam] [--dtypes float32 bfloat16] [--repeat 2]

Prints seconds per image for both, the speed-up (reference / dsocr) and the largest relative
difference between the two outputs (they must compute the same function).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import install_torchvision_stub, randomize_  # noqa: E402

from dsocr.model import DeepEncoder  # noqa: E402
from dsocr.processing import get_mode, prepare_image  # noqa: E402

# Image sizes (W, H) per mode; gundam's 1280x720 page gives a 2x1 tile grid.
IMAGE_SIZES = {"tiny": (800, 1000), "small": (800, 1000), "base": (800, 1000), "large": (800, 1000), "gundam": (1280, 720)}


class Reference(torch.nn.Module):
    """DeepEncoder assembled from segment-anything and transformers parts, weights copied from `ours`."""

    def __init__(self, ours: DeepEncoder):
        super().__init__()
        install_torchvision_stub()
        from segment_anything.modeling import ImageEncoderViT
        from transformers import CLIPVisionConfig, CLIPVisionModel

        sam_cfg, clip_cfg = ours.config.sam, ours.config.clip
        self.sam = ImageEncoderViT(
            img_size=sam_cfg.image_size, patch_size=sam_cfg.patch_size, embed_dim=sam_cfg.width, depth=sam_cfg.depth,
            num_heads=sam_cfg.heads, mlp_ratio=sam_cfg.mlp_dim / sam_cfg.width, out_chans=sam_cfg.neck_channels,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=sam_cfg.window_size, global_attn_indexes=sam_cfg.global_attn_indexes,
        )
        sam_state = ours.sam_model.state_dict()
        self.net_2, self.net_3 = ours.sam_model.net_2, ours.sam_model.net_3
        self.sam.load_state_dict({k: v for k, v in sam_state.items() if not k.startswith("net_")})
        self.clip = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=clip_cfg.width, intermediate_size=clip_cfg.mlp_dim, num_hidden_layers=clip_cfg.depth,
            num_attention_heads=clip_cfg.heads, image_size=clip_cfg.image_size, patch_size=clip_cfg.patch_size,
            hidden_act="quick_gelu", layer_norm_eps=clip_cfg.layer_norm_eps, attn_implementation="sdpa",
        ))
        clip_state = {}
        for k, v in ours.vision_model.state_dict().items():
            k = k.replace("transformer.", "encoder.")
            if "qkv_proj" in k:
                for part, chunk in zip("qkv", v.chunk(3)):
                    clip_state[k.replace("qkv_proj", f"{part}_proj")] = chunk
            else:
                clip_state[k] = v
        missing, unexpected = self.clip.load_state_dict(clip_state, strict=False)
        assert not unexpected and all("post_layernorm" in k or "position_ids" in k for k in missing), (missing, unexpected)
        self.projector = ours.projector.layers
        self.newline, self.separator = ours.image_newline, ours.view_seperator

    def views(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = pixels.shape[-1] // 16
        if grid != self.sam.pos_embed.shape[1]:  # segment-anything adds its table as is: resample it as the official code
            pos = F.interpolate(self.sam_pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", antialias=True)
            self.sam.pos_embed = torch.nn.Parameter(pos.permute(0, 2, 3, 1).to(pixels.dtype))
        sam = self.net_3(self.net_2(self.sam(pixels)))
        tokens = sam.flatten(2).transpose(1, 2)
        emb = self.clip.embeddings
        g = sam.shape[-1]
        table = emb.position_embedding.weight
        patch_pos = table[1:].reshape(1, 16, 16, -1).permute(0, 3, 1, 2)
        if g != 16:
            patch_pos = F.interpolate(patch_pos.float(), size=(g, g), mode="bicubic", antialias=True).to(table.dtype)
        pos = torch.cat([table[:1], patch_pos.permute(0, 2, 3, 1).reshape(g * g, -1)])
        x = torch.cat([emb.class_embedding.expand(tokens.shape[0], 1, -1), tokens], dim=1) + pos
        clip = self.clip.encoder(inputs_embeds=self.clip.pre_layrnorm(x)).last_hidden_state
        return self.projector(torch.cat([clip[:, 1:], tokens], dim=-1))

    def forward(self, global_view, tiles=None, grid=None):
        self.sam_pos = getattr(self, "sam_pos", self.sam.pos_embed.detach().clone())
        self.sam.pos_embed = torch.nn.Parameter(self.sam_pos)
        parts = []
        if tiles is not None:
            local = self.views(tiles)
            self.sam.pos_embed = torch.nn.Parameter(self.sam_pos)
            wt, ht = grid
            t = int(local.shape[1] ** 0.5)
            mosaic = local.view(ht, wt, t, t, -1).permute(0, 2, 1, 3, 4).reshape(ht * t, wt * t, -1)
            parts.append(torch.cat([mosaic, self.newline.expand(ht * t, 1, -1)], 1).flatten(0, 1))
        glob = self.views(global_view)[0]
        g = int(glob.shape[0] ** 0.5)
        parts.append(torch.cat([glob.view(g, g, -1), self.newline.expand(g, 1, -1)], 1).flatten(0, 1))
        parts.append(self.separator[None])
        return torch.cat(parts)


def timed(fn, repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["tiny", "small", "base", "large", "gundam"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    ours = randomize_(DeepEncoder(), seed=0, std=0.02).eval()
    reference = Reference(ours).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeat} after a warm-up")
    print(f"{'mode':8} {'dtype':9} {'tokens':>6} {'dsocr s':>8} {'reference s':>12} {'speed-up':>9} {'max rel diff':>13}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        ours.to(dtype)
        reference.to(dtype)
        if hasattr(reference, "sam_pos"):
            del reference.sam_pos
        for mode_name in args.modes:
            from PIL import Image

            image = Image.new("RGB", IMAGE_SIZES[mode_name], (230, 230, 230))
            prepared = prepare_image(image, get_mode(mode_name))
            g = prepared.global_view[None].to(dtype)
            tiles = prepared.tiles.to(dtype) if prepared.tiles is not None else None
            with torch.inference_mode():
                t_ours, a = timed(lambda: ours(g, [tiles], [prepared.grid])[0], args.repeat)
                t_ref, b = timed(lambda: reference(g, tiles, prepared.grid), args.repeat)
            diff = ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
            print(f"{mode_name:8} {dtype_name:9} {a.shape[0]:6d} {t_ours:8.2f} {t_ref:12.2f} {t_ref / t_ours:8.2f}x {diff:13.2e}", flush=True)


if __name__ == "__main__":
    main()
