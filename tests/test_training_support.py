"""Shared pieces of the training tests: tiny models, tiny images, tiny configs (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

# A DeepEncoder small enough for a CPU test: SAM 64 wide (2 blocks), CLIP 64 wide (2 layers),
# one head of 64 each (what `from_pretrained` infers a head count from).
TINY_VISION = {
    "sam": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 128, "global_attn_indexes": [1],
            "neck_channels": 32, "compressor_channels": [64, 64]},
    "clip": {"width": 64, "depth": 2, "heads": 1, "mlp_dim": 128},
}
# A compact LM with the real vocabulary (so the real tokenizer works): 2 layers, the second MoE.
TINY_DECODER = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
    "intermediate_size": 128, "moe_intermediate_size": 32, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1,
}
TINY_MODE = {"base_size": 128}  # 2x2 feature grid: 7 image tokens

TEXTS = ["Hello world.", "DeepSeek OCR 42", "a b c d e", "Tiny page 7", "Line one\nLine two", "x = y + 1",
         "Total: 3.50", "The end."]


def write_images(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        palette = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255), (128, 0, 128)]
        image = Image.new("RGB", (96 + 8 * i, 64), palette[i % len(palette)])
        draw = ImageDraw.Draw(image)
        draw.rectangle([4 + 3 * i, 4, 40 + 5 * i, 30 + i], fill=(20 * i % 255, 0, 255 - 20 * i % 255))
        draw.text((6, 40), TEXTS[i % len(TEXTS)][:8], fill=(0, 0, 0))
        path = directory / f"img{i}.png"
        image.save(path)
        paths.append(path)
    return paths


def write_manifest(directory: Path, n: int) -> Path:
    """A JSONL manifest of n one-image samples (the data module's format)."""
    paths = write_images(directory / "images", n)
    lines = [
        json.dumps({"images": [f"images/{p.name}"], "prompt": "<image>\nFree OCR.", "target": TEXTS[i % len(TEXTS)],
                    "id": f"s{i}"})
        for i, p in enumerate(paths)
    ]
    manifest = directory / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def stage1_values(tmp: Path, n: int = 4, **top) -> dict:
    """Config values (as if read from TOML) of a tiny stage-1 run."""
    values = {
        "seed": 0, "max_steps": 4, "out_dir": str(tmp / "run"),
        "model": {"stage": "stage1", "vision": TINY_VISION, "decoder": TINY_DECODER},
        "data": {"manifests": [str(write_manifest(tmp / "data", n))], "mode": TINY_MODE, "batch_size": 2,
                 "max_length": 64},
        "optim": {"lr": 1e-3, "schedule": "constant", "clip": 1.0, "weight_decay": 0.01},
        "checkpoint": {"every": 1000, "keep": 2},
        "logging": {"progress": False, "tensorboard": "off"},
    }
    for key, value in top.items():
        section, _, name = key.partition("__")
        if name:
            values.setdefault(section, {})[name] = value
        else:
            values[section] = value
    return values


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_toml(path: Path, values: dict) -> Path:
    """Top-level scalars, then one [section] per table (deeper tables inline)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for section, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
