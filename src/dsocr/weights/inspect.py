"""What a checkpoint is, how it fits DeepEncoder, and how two checkpoints differ.

`identify` recognises SAM (segment-anything or transformers), CLIP (transformers or OpenAI),
the official DeepSeek-OCR checkpoint and dsocr's own DeepEncoder files from tensor names and
shapes alone (no tensor is read). `summarize`, `compatibility` and `compare` return plain dicts
that `dsocr inspect` prints as text or JSON.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import DsocrError
from . import keymaps
from .formats import describe_formats, open_checkpoint

SAM_SEGMENT_ANYTHING = "sam-segment-anything"
SAM_HF = "sam-hf"
CLIP_HF = "clip-hf"
CLIP_OPENAI = "clip-openai"
DEEPSEEK_OCR = "deepseek-ocr"
DSOCR_DEEPENCODER = "dsocr-deepencoder"
UNKNOWN = "unknown"

KIND_NAMES = {
    SAM_SEGMENT_ANYTHING: "SAM (segment-anything)",
    SAM_HF: "SAM (transformers)",
    CLIP_HF: "CLIP (transformers)",
    CLIP_OPENAI: "CLIP (OpenAI)",
    DEEPSEEK_OCR: "DeepSeek-OCR (official)",
    DSOCR_DEEPENCODER: "dsocr DeepEncoder",
    UNKNOWN: "unknown",
}
SAM_KINDS = (SAM_SEGMENT_ANYTHING, SAM_HF)
CLIP_KINDS = (CLIP_HF, CLIP_OPENAI)
DEEPENCODER_KINDS = (DEEPSEEK_OCR, DSOCR_DEEPENCODER)

# Public sizes, by width.
SAM_VARIANTS = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}
CLIP_VARIANTS = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}

CONFIG_METADATA_KEY = "dsocr.deepencoder.config"
LM_MARKERS = ("model.layers.", "model.embed_tokens.", "lm_head.", "model.norm.")


@dataclass
class Identity:
    """What a checkpoint holds. `standard` is False for sizes that are no public variant."""

    kind: str
    variant: str = ""
    standard: bool = False
    details: dict = field(default_factory=dict)
    plan: keymaps.KeyPlan | None = None

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]

    def describe(self) -> str:
        return f"{self.name} {self.variant}".strip()


# -- identification ---------------------------------------------------------------------------


def identify(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Identity:
    """Recognise a checkpoint from its tensor names and shapes."""
    metadata = metadata or {}
    names = set(shapes)
    locals_ = {n[len("model."):] if n.startswith("model.") else n for n in names}
    if any(n.startswith(("sam_model.", "vision_model.transformer.", "projector.layers.")) for n in locals_):
        return _identify_deepencoder(shapes, metadata)
    if "image_encoder.patch_embed.proj.weight" in names or {"patch_embed.proj.weight", "pos_embed"} <= names:
        return _identify_sam(SAM_SEGMENT_ANYTHING, shapes)
    if "vision_encoder.patch_embed.projection.weight" in names:
        return _identify_sam(SAM_HF, shapes)
    prefix = keymaps.hf_clip_prefix(shapes)
    if f"{prefix}encoder.layers.0.self_attn.q_proj.weight" in names and f"{prefix}embeddings.class_embedding" in names:
        return _identify_clip(CLIP_HF, shapes)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in names:
        return _identify_clip(CLIP_OPENAI, shapes)
    if "visual.layer1.0.conv1.weight" in names:
        return Identity(CLIP_OPENAI, "ResNet", True, {"architecture": "ResNet"})
    return Identity(UNKNOWN)


def _identify_sam(kind: str, shapes) -> Identity:
    plan = keymaps.PLANNERS[kind](shapes)
    try:
        dims = keymaps.sam_dimensions(plan.target_shapes())
    except DsocrError as exc:
        return Identity(kind, "incomplete", False, {"incomplete": str(exc)}, plan)
    known = dims["width"] in SAM_VARIANTS
    variant = SAM_VARIANTS.get(dims["width"], "non-standard ViT")
    details = {**dims, "global_attn_indexes": list(dims["global_attn_indexes"])}
    return Identity(kind, variant, known, details, plan)


def _clip_variant(dims: dict) -> tuple[str, bool]:
    known = dims["width"] in CLIP_VARIANTS
    name = CLIP_VARIANTS.get(dims["width"], "ViT")
    variant = f"{name}/{dims['patch_size']} ({dims['image_size']} px)"
    return (variant, True) if known else (f"non-standard {variant}", False)


def _identify_clip(kind: str, shapes) -> Identity:
    plan = keymaps.PLANNERS[kind](shapes)
    targets = plan.target_shapes()
    position = next((m for m in plan.mapped if m.target == "vision_model.embeddings.position_embedding.weight"), None)
    if position is not None:
        targets[position.target] = tuple(shapes[position.sources[0]])  # the source grid, before resampling
    try:
        dims = keymaps.clip_dimensions(targets)
    except DsocrError as exc:
        return Identity(kind, "incomplete", False, {"incomplete": str(exc)}, plan)
    variant, known = _clip_variant(dims)
    dims["text_tower"] = any(n.startswith(("text_model.", "token_embedding.")) for n in shapes)
    return Identity(kind, variant, known, dims, plan)


def _identify_deepencoder(shapes, metadata) -> Identity:
    plan = keymaps.plan_deepencoder(shapes)
    targets = plan.target_shapes()
    lm = sum(1 for n in shapes if n.startswith(LM_MARKERS))
    if lm:
        kind = DEEPSEEK_OCR
    elif CONFIG_METADATA_KEY in metadata or not any(n.startswith("model.") for n in shapes):
        kind = DSOCR_DEEPENCODER
    else:
        kind = DEEPSEEK_OCR  # vision tensors only, official names
    details: dict = {"language_model_tensors": lm}
    parts = []
    if any(t.startswith("sam_model.") for t in targets):
        sam = keymaps.sam_dimensions(targets)
        details["sam"] = {**sam, "global_attn_indexes": list(sam["global_attn_indexes"])}
        parts.append(f"SAM {SAM_VARIANTS.get(sam['width'], 'non-standard ViT (width %d)' % sam['width'])}")
    if any(t.startswith("vision_model.") for t in targets):
        clip = keymaps.clip_dimensions(targets)
        details["clip"] = clip
        variant, known = _clip_variant(clip)
        parts.append(f"+ CLIP {variant}" + ("" if known else f" (width {clip['width']})"))
    if "projector.layers.weight" in targets:
        details["output_dim"] = targets["projector.layers.weight"][0]
        parts.append(f"-> {details['output_dim']}")
    if lm:
        parts.append(f"+ language model ({lm} tensors)")
    standard = details.get("sam", {}).get("width") == 768 and details.get("clip", {}).get("width") == 1024
    return Identity(kind, " ".join(parts), standard, details, plan)


# -- summaries --------------------------------------------------------------------------------


def summarize(path: str | Path, against: str | None = "deepencoder") -> dict:
    """Format, counts, dtypes, sizes and identity of one checkpoint (no tensor data is read for
    safetensors; pickles are memory-mapped)."""
    checkpoint = open_checkpoint(path)
    shapes = {name: checkpoint.shape(name) for name in checkpoint}
    dtypes: dict[str, int] = {}
    parameters = 0
    nbytes = 0
    for name, shape in shapes.items():
        dtype = checkpoint.dtype(name)
        count = math.prod(shape)
        dtypes[_dtype_name(dtype)] = dtypes.get(_dtype_name(dtype), 0) + 1
        if dtype is not None and dtype.is_floating_point:
            parameters += count
        nbytes += count * (dtype.itemsize if dtype is not None else 0)
    identity = identify(shapes, checkpoint.metadata)
    summary = {
        "path": str(path),
        "format": describe_formats(checkpoint),
        "files": [str(f) for f in checkpoint.files],
        "file_bytes": sum(f.stat().st_size for f in checkpoint.files),
        "tensors": len(shapes),
        "parameters": parameters,
        "tensor_bytes": nbytes,
        "dtypes": dtypes,
        "model": {"kind": identity.kind, "name": identity.name, "variant": identity.variant,
                  "standard_size": identity.standard, "details": identity.details},
    }
    if CONFIG_METADATA_KEY in checkpoint.metadata:
        summary["model"]["config"] = checkpoint.metadata[CONFIG_METADATA_KEY]
    if against == "deepencoder":
        summary["compatibility"] = compatibility(identity)
    return summary


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "unknown"


@lru_cache(maxsize=1)
def official_shapes() -> dict[str, tuple[int, ...]]:
    """DeepEncoder's tensor shapes at the official sizes (SAM ViT-B + CLIP ViT-L/14 -> 1280)."""
    from ..model import DeepEncoder, DeepEncoderConfig

    with torch.device("meta"):
        model = DeepEncoder(DeepEncoderConfig())
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


# Tensors no SAM/CLIP checkpoint has; `dsocr convert` initialises them (spec §9).
INITIALISED_BY_CONVERT = (
    "sam_model.net_2.weight", "sam_model.net_3.weight", "projector.layers.weight", "projector.layers.bias",
    "image_newline", "view_seperator",
)


def compatibility(identity: Identity) -> dict:
    """How the checkpoint's tensors land in the official-size DeepEncoder: mapped, dropped,
    unexpected, missing and shape mismatches, for the part(s) it can provide."""
    if identity.plan is None:
        return {"part": None, "note": f"{identity.describe()} does not map to DeepEncoder"}
    if identity.kind in SAM_KINDS:
        parts = ("sam_model.",)
    elif identity.kind in CLIP_KINDS:
        parts = ("vision_model.",)
    else:
        parts = keymaps.DEEPENCODER_ROOTS
    expected = {k: v for k, v in official_shapes().items() if k.startswith(parts)}
    produced = {m.target: m for m in identity.plan.mapped}
    mapped = [
        {"target": t, "sources": list(m.sources), "transform": m.transform, "shape": list(m.shape),
         "expected": list(expected[t]) if t in expected else None}
        for t, m in produced.items()
    ]
    mismatched = [row for row in mapped if row["expected"] is not None and row["shape"] != row["expected"]]
    not_in_deepencoder = sorted((t for t in produced if t not in expected), key=natural_key)
    missing = [t for t in expected if t not in produced]  # in DeepEncoder's order
    return {
        "part": " + ".join(p.rstrip(".") for p in parts),
        "mapped": mapped,
        "dropped": list(identity.plan.dropped),
        "unexpected": list(identity.plan.unexpected),
        "missing": [{"target": t, "initialised_by_convert": t in INITIALISED_BY_CONVERT} for t in missing],
        "shape_mismatches": mismatched,
        "not_in_deepencoder": not_in_deepencoder,
    }


def natural_key(name: str) -> list:
    """Sort `blocks.2` before `blocks.10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# -- comparing two checkpoints ------------------------------------------------------------------


def compare(path_a: str | Path, path_b: str | Path) -> dict:
    """Common tensors, shape differences and the max abs difference per common tensor.

    Names are compared as they are; when the two share no name but both map to DeepEncoder
    (e.g. a SAM .pth and a converted file), they are compared under DeepEncoder names, through
    the same transforms `dsocr convert` applies."""
    a, b = open_checkpoint(path_a), open_checkpoint(path_b)
    read_a, names_a = _named(a, mapped=False)
    read_b, names_b = _named(b, mapped=False)
    space = "raw"
    if not set(names_a) & set(names_b):
        mapped_a, mapped_b = _named(a, mapped=True), _named(b, mapped=True)
        if mapped_a and mapped_b and set(mapped_a[1]) & set(mapped_b[1]):
            (read_a, names_a), (read_b, names_b), space = mapped_a, mapped_b, "deepencoder"
    common = [n for n in names_a if n in names_b]
    rows = []
    for name in common:
        shape_a, shape_b = names_a[name], names_b[name]
        row = {"name": name, "shape_a": list(shape_a), "shape_b": list(shape_b), "max_abs_diff": None}
        if tuple(shape_a) == tuple(shape_b):
            row["max_abs_diff"] = _max_abs_diff(read_a(name), read_b(name))
        rows.append(row)
    return {
        "a": str(path_a), "b": str(path_b), "names": space,
        "common": len(common),
        "only_in_a": [n for n in names_a if n not in names_b],
        "only_in_b": [n for n in names_b if n not in names_a],
        "shape_differences": [r for r in rows if r["max_abs_diff"] is None],
        "tensors": rows,
        "max_abs_diff": max((r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None), default=None),
    }


def _named(checkpoint, mapped: bool):
    """(read(name) -> tensor, {name: shape}) in raw names, or under DeepEncoder names (None if
    the checkpoint does not map)."""
    if not mapped:
        return (lambda n: checkpoint[n]), {n: checkpoint.shape(n) for n in checkpoint}
    shapes = {n: checkpoint.shape(n) for n in checkpoint}
    identity = identify(shapes, checkpoint.metadata)
    if identity.plan is None:
        return None
    by_target = {m.target: m for m in identity.plan.mapped}
    return (lambda n: keymaps.materialize(by_target[n], checkpoint.__getitem__)), {
        t: m.shape for t, m in by_target.items()
    }


def _max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    compute = torch.float64 if not (x.is_floating_point() and y.is_floating_point()) else torch.float32
    return (x.to(compute) - y.to(compute)).abs().max().item()

