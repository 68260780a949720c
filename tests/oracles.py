"""Independent reference implementations the tests compare dsocr against, and random weights for them.

Nothing here imports dsocr: these are the oracles.
"""

from __future__ import annotations

import sys
import types

import torch


def install_torchvision_stub() -> None:
    """segment-anything's package __init__ imports torchvision (absent here); the encoder does not use it."""
    try:
        import torchvision  # noqa: F401
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
    for name, module in {
        "torchvision": root, "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
    }.items():
        sys.modules[name] = module


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
            vocab_size=1000, hidden_size=lm_width, intermediate_size=64, num_hidden_layers=2,
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
