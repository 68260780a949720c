"""Full-size conversions (SAM ViT-B 768 x 12, CLIP ViT-L/14 1024 x 24, random weights): the output
is exactly the official DeepEncoder layout and CLIP-L matches transformers numerically."""

from __future__ import annotations

import contextlib
import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsocr.cli import main
from dsocr.model import DeepEncoder, DeepEncoderConfig
from dsocr.weights.convert import convert
from dsocr.weights.inspect import official_shapes

from oracles import install_torchvision_stub, relative_error, segment_anything_checkpoint, segment_anything_encoder

pytestmark = pytest.mark.slow


def random_like(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes: norms around 1, everything else small."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if "norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = 0.02 * torch.randn(shape, generator=gen)
    return out


def sam_b_state() -> dict[str, torch.Tensor]:
    install_torchvision_stub()
    from segment_anything.modeling import ImageEncoderViT

    with torch.device("meta"):
        encoder = ImageEncoderViT(
            img_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, out_chans=256,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
            global_attn_indexes=(2, 5, 8, 11),
        )
    state = random_like({f"image_encoder.{k}": v.shape for k, v in encoder.state_dict().items()}, seed=0)
    state["mask_decoder.iou_token.weight"] = torch.zeros(4, 256)
    state["pixel_mean"], state["pixel_std"] = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    return state


def clip_l_model(image_size: int):
    """transformers' CLIPVisionModel at CLIP-L/14's sizes, random, and its hub-style state dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              patch_size=14, image_size=image_size, projection_dim=768)
    with torch.device("meta"):
        meta = CLIPVisionModel(config)
    state = random_like({k: v.shape for k, v in meta.state_dict().items()}, seed=image_size)
    try:
        from transformers.initialization import no_init_weights  # skip a random init we overwrite
    except ImportError:
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = CLIPVisionModel(config).eval()
    model.load_state_dict(state)
    hub_style = {f"vision_model.{k.removeprefix('vision_model.')}": v for k, v in state.items()}
    hub_style["visual_projection.weight"] = torch.zeros(768, 1024)
    hub_style["logit_scale"] = torch.tensor(4.6)
    return model, hub_style


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    torch.save(sam_b_state(), root / "sam_vit_b_01ec64.pth")
    return SimpleNamespace(root=root)


def test_full_size_layout_is_the_official_one(full, tmp_path, capsys):
    model, hub_style = clip_l_model(224)
    save_file(hub_style, str(full.root / "clip-l.safetensors"))
    del model
    out = tmp_path / "deepencoder.safetensors"
    result = convert(str(full.root / "sam_vit_b_01ec64.pth"), str(full.root / "clip-l.safetensors"), out,
                     verify=False, log=lambda s: None)
    assert result.config == DeepEncoderConfig()  # SAM-B + CLIP-L/14 -> 1280: the official sizes
    expected = {f"model.{k}": v for k, v in official_shapes().items()}
    with safe_open(str(out), framework="pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert got == expected and len(got) == 476  # 179 SAM + 293 CLIP + projector + 2 tags
        sam = torch.load(full.root / "sam_vit_b_01ec64.pth", mmap=True, weights_only=True)
        for name in ("pos_embed", "blocks.11.attn.rel_pos_h", "neck.2.weight"):
            assert torch.equal(f.get_tensor(f"model.sam_model.{name}"), sam[f"image_encoder.{name}"])
        layer = "vision_model.encoder.layers.23.self_attn"
        qkv = torch.cat([hub_style[f"{layer}.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(f.get_tensor("model.vision_model.transformer.layers.23.self_attn.qkv_proj.weight"), qkv)
    DeepEncoder.from_pretrained(out)
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"]["variant"] == "SAM ViT-B + CLIP ViT-L/14 (224 px) -> 1280" and summary["model"]["standard_size"]
    assert summary["compatibility"]["shape_mismatches"] == [] and summary["compatibility"]["missing"] == []


@pytest.mark.parametrize("image_size", [224, 336])
def test_full_size_clip_l_matches_transformers(full, tmp_path, image_size):
    """CLIP-L/14 verified against transformers' CLIPVisionModel at full size (SAM: the tiny encoder)."""
    model, hub_style = clip_l_model(image_size)
    save_file(hub_style, str(tmp_path / "clip.safetensors"))
    del hub_style
    torch.save(segment_anything_checkpoint(segment_anything_encoder()), tmp_path / "sam.pth")
    out = tmp_path / "out.safetensors"
    result = convert(str(tmp_path / "sam.pth"), str(tmp_path / "clip.safetensors"), out, log=lambda s: None)
    check = result.verifications[1]
    assert check.oracle == "transformers CLIPVisionModel" and check.max_relative_error <= 1e-5
    assert check.probe == (1, 3, image_size, image_size)
    if image_size == 224:  # independently of the built-in check
        probe = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            ours = DeepEncoder.from_pretrained(out).vision_model.forward_pixels(probe)
            assert relative_error(ours, model(pixel_values=probe).last_hidden_state) <= 1e-5
