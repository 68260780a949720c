"""Independent reference implementations the tests compare dsocr against, and random weights for them.

Nothing here imports dsocr: these are the oracles.
"""

from __future__ import annotations

import sys
import types

import torch


def install_torchvision_stub() -> None:
    """Import segment-anything, whose package __init__ imports torchvision (absent here; the image
    encoder does not use it), behind a stub that is removed again right after: transformers must
    keep seeing torchvision as absent."""
    if "segment_anything" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        import segment_anything  # noqa: F401
        return
    except Exception:  # noqa: BLE001 - missing, or broken beside this torch
        pass

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub: not available in tests")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = functional.to_pil_image = unavailable
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = boxes.box_area = unavailable
    root.transforms, transforms.functional, root.ops, ops.boxes = transforms, functional, ops, boxes
    stubs = {
        "torchvision": root, "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
    }
    sys.modules.update(stubs)
    try:
        import segment_anything  # noqa: F401
        import segment_anything.modeling  # noqa: F401
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with random values (norm weights around 1), so no zero-init hides a bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("weight") and ("norm" in name or "layer_norm" in name or "neck.1" in name or "neck.3" in name) and p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif "pos" in name or "embedding" in name or "newline" in name or "seperator" in name or "separator" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(std * noise)
    return module


# Tiny DeepEncoder sizes shared by the oracles: SAM 128 wide (2 heads of 64), 4 blocks with global
# attention in 1 and 3; CLIP 128 wide, 2 layers; LM width 96.
TINY_SAM = dict(width=128, depth=4, heads=2, mlp_dim=256, global_attn_indexes=(1, 3), neck=32, compressor=(64, 128))
TINY_CLIP = dict(width=128, depth=2, heads=2, mlp_dim=256)
TINY_LM_WIDTH = 96


def unlimited_ocr_model(seed: int = 0, sam=TINY_SAM, clip=TINY_CLIP, lm_width: int = TINY_LM_WIDTH):
    """transformers' `unlimited_ocr` (a DeepSeek-OCR v1 derivative that reads and writes the official
    key names), tiny, with random weights."""
    from transformers import UnlimitedOcrConfig, UnlimitedOcrForConditionalGeneration

    config = UnlimitedOcrConfig(
        vision_config=dict(
            sam_config=dict(
                hidden_size=sam["width"], num_hidden_layers=sam["depth"], num_attention_heads=sam["heads"],
                mlp_dim=sam["mlp_dim"], output_channels=sam["neck"],
                global_attn_indexes=list(sam["global_attn_indexes"]), downsample_channels=list(sam["compressor"]),
            ),
            encoder_config=dict(
                hidden_size=clip["width"], num_hidden_layers=clip["depth"], num_attention_heads=clip["heads"],
                intermediate_size=clip["mlp_dim"],
            ),
        ),
        text_config=dict(
            vocab_size=129280, hidden_size=lm_width, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, n_shared_experts=1, sliding_window=8192,
        ),
    )
    torch.manual_seed(seed)
    model = UnlimitedOcrForConditionalGeneration(config).eval()
    return randomize_(model, seed)


def segment_anything_encoder(seed: int = 0, sam=TINY_SAM):
    """segment-anything's `ImageEncoderViT` with SAM-B's structure at the tiny sizes."""
    install_torchvision_stub()
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(
        img_size=1024, patch_size=16, in_chans=3, embed_dim=sam["width"], depth=sam["depth"],
        num_heads=sam["heads"], mlp_ratio=sam["mlp_dim"] / sam["width"], out_chans=sam["neck"], qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
        rel_pos_zero_init=True, window_size=14, global_attn_indexes=tuple(sam["global_attn_indexes"]),
    ).eval()
    return randomize_(encoder, seed)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


# -- checkpoints in the public formats, for the weight conversion tests (tests/test_weights_*.py) --


def segment_anything_checkpoint(encoder: torch.nn.Module) -> dict:
    """A full-SAM-like state dict, as in `sam_vit_b_01ec64.pth`: the encoder under `image_encoder.`
    plus a few prompt-encoder / mask-decoder tensors and the pixel statistics."""
    gen = torch.Generator().manual_seed(123)
    state = {f"image_encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128, generator=gen)
    state["prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, 256, generator=gen)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256, generator=gen)
    state["mask_decoder.transformer.layers.0.self_attn.q_proj.weight"] = torch.randn(256, 256, generator=gen)
    state["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    state["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    return state


def hf_sam_model(seed: int = 0, sam=TINY_SAM):
    """transformers' `SamModel` (vision encoder + prompt encoder + mask decoder), tiny, random."""
    from transformers import SamConfig, SamModel

    config = SamConfig(vision_config=dict(
        hidden_size=sam["width"], num_hidden_layers=sam["depth"], num_attention_heads=sam["heads"],
        mlp_dim=sam["mlp_dim"], output_channels=sam["neck"], global_attn_indexes=list(sam["global_attn_indexes"]),
    ))
    torch.manual_seed(seed)
    return randomize_(SamModel(config).eval(), seed)


def _clip_vision_config(clip, image_size: int, patch_size: int) -> dict:
    return dict(
        hidden_size=clip["width"], intermediate_size=clip["mlp_dim"], num_hidden_layers=clip["depth"],
        num_attention_heads=clip["heads"], image_size=image_size, patch_size=patch_size, hidden_act="quick_gelu",
    )


def hf_clip_vision_model(seed: int = 0, clip=TINY_CLIP, image_size: int = 224, patch_size: int = 14):
    """transformers' `CLIPVisionModel`, random."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**_clip_vision_config(clip, image_size, patch_size)))
    return randomize_(model.eval(), seed)


def hf_clip_model(seed: int = 0, clip=TINY_CLIP, image_size: int = 224, patch_size: int = 14):
    """transformers' `CLIPModel` (vision + a tiny text tower + projections), random."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=_clip_vision_config(clip, image_size, patch_size),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return randomize_(CLIPModel(config).eval(), seed)


class OpenAIQuickGELU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class OpenAIResidualAttentionBlock(torch.nn.Module):
    """openai/CLIP `model.py` ResidualAttentionBlock (sequence-first, nn.MultiheadAttention)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        from collections import OrderedDict

        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(OrderedDict([
            ("c_fc", torch.nn.Linear(width, width * 4)),
            ("gelu", OpenAIQuickGELU()),
            ("c_proj", torch.nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = torch.nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class OpenAITransformer(torch.nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = torch.nn.Sequential(*[OpenAIResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class OpenAIVisionTransformer(torch.nn.Module):
    """openai/CLIP `model.py` VisionTransformer; `tokens` returns every token before ln_post."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        scale = width**-0.5
        self.conv1 = torch.nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = torch.nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = torch.nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = OpenAITransformer(width, layers, heads)
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(scale * torch.randn(width, output_dim))

    @torch.jit.export
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        return self.transformer(x).permute(1, 0, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.tokens(x)[:, 0, :]) @ self.proj


class OpenAICLIP(torch.nn.Module):
    """openai/CLIP's CLIP with a ViT image tower and a tiny text tower: the `ViT-L-14.pt` names."""

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 2, image_size: int = 224, patch_size: int = 14):
        super().__init__()
        embed_dim, text_width, context, vocab = 32, 64, 8, 100
        self.visual = OpenAIVisionTransformer(image_size, patch_size, width, layers, heads, embed_dim)
        self.transformer = OpenAITransformer(text_width, 1, 2)
        self.token_embedding = torch.nn.Embedding(vocab, text_width)
        self.positional_embedding = torch.nn.Parameter(torch.randn(context, text_width))
        self.ln_final = torch.nn.LayerNorm(text_width)
        self.text_projection = torch.nn.Parameter(torch.randn(text_width, embed_dim))
        self.logit_scale = torch.nn.Parameter(torch.ones([]) * 2.6592)
        self.register_buffer("input_resolution", torch.tensor(image_size))
        self.register_buffer("context_length", torch.tensor(context))
        self.register_buffer("vocab_size", torch.tensor(vocab))

    @torch.jit.export
    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual.tokens(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def openai_clip_archive(path, seed: int = 0, width: int = 128, layers: int = 2, heads: int = 2,
                        image_size: int = 224, patch_size: int = 14, dtype: torch.dtype = torch.float32):
    """Write an OpenAI-style CLIP TorchScript archive (`torch.jit.script` + `torch.jit.save`) with
    random weights; returns the eager module it was made from."""
    torch.manual_seed(seed)
    import warnings

    model = randomize_(OpenAICLIP(width, layers, heads, image_size, patch_size).eval(), seed).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, the files still exist
        torch.jit.save(torch.jit.script(model), str(path))
    return model


def official_model_dir(oracle, directory, patch_embedding_seed: int = 0):
    """Write `oracle` (an unlimited_ocr model) as an official DeepSeek-OCR directory: its own
    safetensors (official key names) plus CLIP's unused patch embedding, which unlimited_ocr drops,
    and a config.json in the official layout (`language_config`) built from the oracle's config."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    oracle.save_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    clip = oracle.config.vision_config.encoder_config
    gen = torch.Generator().manual_seed(patch_embedding_seed)
    state["model.vision_model.embeddings.patch_embedding.weight"] = 0.02 * torch.randn(
        clip.hidden_size, 3, clip.patch_size, clip.patch_size, generator=gen
    )
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    text = oracle.config.text_config
    language = dict(
        architectures=["DeepseekV2ForCausalLM"], bos_token_id=0, eos_token_id=1,
        first_k_dense_replace=text.mlp_layer_types.index("sparse") if "sparse" in text.mlp_layer_types else text.num_hidden_layers,
        hidden_size=text.hidden_size, intermediate_size=text.intermediate_size, kv_lora_rank=None, lm_head=True,
        max_position_embeddings=8192, moe_intermediate_size=text.moe_intermediate_size, n_group=1,
        n_routed_experts=text.n_routed_experts, n_shared_experts=text.n_shared_experts,
        num_attention_heads=text.num_attention_heads, num_experts_per_tok=text.num_experts_per_tok,
        num_hidden_layers=text.num_hidden_layers, num_key_value_heads=text.num_key_value_heads, q_lora_rank=None,
        qk_nope_head_dim=0, qk_rope_head_dim=0, rm_head=False, topk_group=1, topk_method="greedy",
        torch_dtype="bfloat16", use_mla=False, v_head_dim=0, vocab_size=text.vocab_size,
    )
    config = {
        "architectures": ["DeepseekOCRForCausalLM"], "model_type": "deepseek_vl_v2", "language_config": language,
        "projector_config": {"input_dim": clip.hidden_size * 2, "model_type": "mlp_projector", "n_embed": text.hidden_size, "projector_type": "linear"},
        "tile_tag": "2D", "global_view_pos": "head", **{k: v for k, v in language.items() if k != "architectures"},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def split_fused_experts(state: dict, n_experts: int) -> dict:
    """transformers keeps each MoE layer's experts fused ([E, 2I, D] gate+up, [E, D, I] down); the
    official checkpoint has one module per expert. Views, no copies."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e in range(n_experts):
                out[f"{prefix}{e}.gate_proj.weight"], out[f"{prefix}{e}.up_proj.weight"] = tensor[e].chunk(2, dim=0)
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(n_experts):
                out[f"{prefix}{e}.down_proj.weight"] = tensor[e]
        else:
            out[name] = tensor
    return out
