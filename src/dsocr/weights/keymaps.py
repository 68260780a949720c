"""Explicit name maps from public SAM and CLIP checkpoints to DeepEncoder's names (spec §9).

One planning function per source format turns the source's {name: shape} into a `KeyPlan`: the
DeepEncoder tensors it provides (`Mapped`: target name, source name(s), transform, target shape),
the source tensors deliberately dropped, and the ones not understood. Target names are
DeepEncoder's `state_dict()` names (the official ones without the leading `model.`).

Transforms:
- `rename`: the tensor as it is.
- `concat q,k,v`: CLIP's separate q/k/v projections stacked (rows q, then k, then v).
- `resample positions`: a CLIP position table of another grid (24x24 for -336) resampled to
  DeepEncoder's 16x16 with `resample_grid` (fp32 bicubic, antialias), class row kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import DsocrError
from ..model.positions import resample_grid

RENAME = "rename"
CONCAT_QKV = "concat q,k,v"
RESAMPLE_POSITIONS = "resample positions"

# DeepEncoder's CLIP reads 16x16 SAM tokens at 1024 px; the official table is 16x16 + class row.
TARGET_POSITION_GRID = 16

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Mapped:
    """One DeepEncoder tensor made from one or more source tensors."""

    target: str
    sources: tuple[str, ...]
    transform: str
    shape: tuple[int, ...]


@dataclass
class KeyPlan:
    source_kind: str
    mapped: list[Mapped] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def target_shapes(self) -> dict[str, tuple[int, ...]]:
        return {m.target: m.shape for m in self.mapped}


# -- rename tables ----------------------------------------------------------------------------
# (source regex, DeepEncoder name template). Every source name must match exactly one line or a
# dropped prefix; anything else is reported as unexpected.

# segment-anything's ImageEncoderViT names are DeepEncoder's `sam_model.` names.
SEGMENT_ANYTHING_ENCODER = [
    (r"patch_embed\.proj\.(weight|bias)", r"sam_model.patch_embed.proj.\1"),
    (r"pos_embed", r"sam_model.pos_embed"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"sam_model.blocks.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"sam_model.blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.attn\.rel_pos_([hw])", r"sam_model.blocks.\1.attn.rel_pos_\2"),
    (r"blocks\.(\d+)\.mlp\.lin([12])\.(weight|bias)", r"sam_model.blocks.\1.mlp.lin\2.\3"),
    (r"neck\.([0-3])\.(weight|bias)", r"sam_model.neck.\1.\2"),
]
SEGMENT_ANYTHING_DROPPED = ("prompt_encoder.", "mask_decoder.", "pixel_mean", "pixel_std")

# transformers' SamModel / SamVisionModel (`vision_encoder.`), the inverse of convert_sam_to_hf.py.
HF_SAM = [
    (r"vision_encoder\.patch_embed\.projection\.(weight|bias)", r"sam_model.patch_embed.proj.\1"),
    (r"vision_encoder\.pos_embed", r"sam_model.pos_embed"),
    (r"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"sam_model.blocks.\1.norm\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"sam_model.blocks.\1.attn.\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.attn\.rel_pos_([hw])", r"sam_model.blocks.\1.attn.rel_pos_\2"),
    (r"vision_encoder\.layers\.(\d+)\.mlp\.lin([12])\.(weight|bias)", r"sam_model.blocks.\1.mlp.lin\2.\3"),
    (r"vision_encoder\.neck\.conv1\.weight", r"sam_model.neck.0.weight"),
    (r"vision_encoder\.neck\.layer_norm1\.(weight|bias)", r"sam_model.neck.1.\1"),
    (r"vision_encoder\.neck\.conv2\.weight", r"sam_model.neck.2.weight"),
    (r"vision_encoder\.neck\.layer_norm2\.(weight|bias)", r"sam_model.neck.3.\1"),
]
HF_SAM_DROPPED = ("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")

# transformers' CLIPVisionModel / CLIPModel vision tower, after its prefix (`vision_model.` in
# hub files and CLIPModel; none in transformers 5's own CLIPVisionModel files). q/k/v are
# grouped separately (HF_CLIP_QKV).
HF_CLIP = [
    (r"embeddings\.class_embedding", r"vision_model.embeddings.class_embedding"),
    (r"embeddings\.patch_embedding\.weight", r"vision_model.embeddings.patch_embedding.weight"),
    (r"embeddings\.position_embedding\.weight", r"vision_model.embeddings.position_embedding.weight"),
    (r"pre_layrnorm\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"vision_model.transformer.layers.\1.layer_norm\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"vision_model.transformer.layers.\1.self_attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"vision_model.transformer.layers.\1.mlp.fc\2.\3"),
]
HF_CLIP_QKV = r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"
HF_CLIP_QKV_TARGET = "vision_model.transformer.layers.{layer}.self_attn.qkv_proj.{param}"
HF_CLIP_DROPPED_IN_TOWER = ("post_layernorm.", "embeddings.position_ids")
HF_CLIP_DROPPED_OUTSIDE = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")

# OpenAI's CLIP (`ViT-L-14.pt`, TorchScript): the vision tower is under `visual.`, attention is
# nn.MultiheadAttention whose in_proj is already q,k,v stacked.
OPENAI_CLIP = [
    (r"visual\.conv1\.weight", r"vision_model.embeddings.patch_embedding.weight"),
    (r"visual\.class_embedding", r"vision_model.embeddings.class_embedding"),
    (r"visual\.positional_embedding", r"vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", r"vision_model.transformer.layers.\1.layer_norm\2.\3"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"vision_model.transformer.layers.\1.self_attn.qkv_proj.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"vision_model.transformer.layers.\1.self_attn.out_proj.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"vision_model.transformer.layers.\1.mlp.fc1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"vision_model.transformer.layers.\1.mlp.fc2.\2"),
]
OPENAI_CLIP_DROPPED = (
    "visual.ln_post.", "visual.proj",
    # the text tower and the model's scalar attributes
    "transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
    "logit_scale", "input_resolution", "context_length", "vocab_size",
)

# The official checkpoint / a dsocr file: vision names are DeepEncoder's, with or without `model.`.
DEEPENCODER_ROOTS = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")


def compile_table(table):
    """[(regex, template)] -> [(compiled regex, template)]."""
    return [(re.compile(pattern), template) for pattern, template in table]


_SEGMENT_ANYTHING = compile_table(SEGMENT_ANYTHING_ENCODER)
_HF_SAM = compile_table(HF_SAM)
_HF_CLIP = compile_table(HF_CLIP)
_OPENAI_CLIP = compile_table(OPENAI_CLIP)
_HF_CLIP_QKV = re.compile(HF_CLIP_QKV)


def rename(name: str, table) -> str | None:
    """The new name for `name` under a compiled rename table (first full match), or None."""
    for pattern, template in table:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(template)
    return None


def _is_dropped(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p) for p in prefixes)


def _position_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """Target shape and transform of a CLIP position table [1 + g^2, C]."""
    grid = math.isqrt(shape[0] - 1)
    if grid * grid + 1 != shape[0]:
        raise DsocrError(f"CLIP position table of {shape[0]} rows is not a square grid plus a class row")
    if grid == TARGET_POSITION_GRID:
        return tuple(shape), RENAME
    return (TARGET_POSITION_GRID**2 + 1, shape[1]), RESAMPLE_POSITIONS


def sam_target_from_hf(name: str) -> str | None:
    """DeepEncoder's name for a transformers SAM vision name (`vision_encoder.layers.0.layer_norm1.weight`
    -> `sam_model.blocks.0.norm1.weight`), or None."""
    return rename(name, _HF_SAM)


def _strip(name: str, prefix: str) -> str | None:
    """`name` without `prefix`, or None when it lacks it."""
    return name[len(prefix):] if name.startswith(prefix) else None


def _plan_renames(kind: str, shapes: Shapes, table, dropped: tuple[str, ...], prefix: str = "") -> KeyPlan:
    plan = KeyPlan(kind)
    for name, shape in shapes.items():
        local = _strip(name, prefix)
        target = rename(local, table) if local is not None else None
        if target is None:
            if _is_dropped(name, dropped):
                plan.dropped.append(name)
            else:
                plan.unexpected.append(name)
            continue
        transform = RENAME
        if target == "vision_model.embeddings.position_embedding.weight":
            shape, transform = _position_shape(tuple(shape))
        plan.mapped.append(Mapped(target, (name,), transform, tuple(shape)))
    return plan


# -- one planner per source format ------------------------------------------------------------


def plan_sam_segment_anything(shapes: Shapes) -> KeyPlan:
    """segment-anything `.pth` (`image_encoder.*` of a full SAM) or a bare ImageEncoderViT state dict."""
    prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in shapes) else ""
    return _plan_renames("sam-segment-anything", shapes, _SEGMENT_ANYTHING, SEGMENT_ANYTHING_DROPPED, prefix)


def plan_sam_hf(shapes: Shapes) -> KeyPlan:
    """transformers SamModel / SamVisionModel (`vision_encoder.*`)."""
    return _plan_renames("sam-hf", shapes, _HF_SAM, HF_SAM_DROPPED)


def hf_clip_prefix(names: Iterable[str]) -> str:
    """`vision_model.` for hub files and CLIPModel, '' for transformers 5's CLIPVisionModel files."""
    return "vision_model." if any(k.startswith("vision_model.") for k in names) else ""


def plan_clip_hf(shapes: Shapes) -> KeyPlan:
    """transformers CLIPVisionModel / CLIPModel: q,k,v concatenated into qkv_proj per layer."""
    prefix = hf_clip_prefix(shapes)
    plan = KeyPlan("clip-hf")
    qkv: dict[tuple[str, str], dict[str, str]] = {}
    for name, shape in shapes.items():
        local = _strip(name, prefix)
        match = _HF_CLIP_QKV.fullmatch(local) if local is not None else None
        if match:
            layer, which, param = match.groups()
            qkv.setdefault((layer, param), {})[which] = name
            continue
        target = rename(local, _HF_CLIP) if local is not None else None
        if target is not None:
            transform = RENAME
            if target == "vision_model.embeddings.position_embedding.weight":
                shape, transform = _position_shape(tuple(shape))
            plan.mapped.append(Mapped(target, (name,), transform, tuple(shape)))
        elif local is not None and _is_dropped(local, HF_CLIP_DROPPED_IN_TOWER):
            plan.dropped.append(name)
        elif _is_dropped(name, HF_CLIP_DROPPED_OUTSIDE):
            plan.dropped.append(name)
        else:
            plan.unexpected.append(name)
    for (layer, param), parts in sorted(qkv.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        if set(parts) != {"q", "k", "v"}:
            absent = sorted({"q", "k", "v"} - set(parts))
            raise DsocrError(f"CLIP layer {layer} lacks its {'/'.join(absent)}_proj.{param}")
        sources = (parts["q"], parts["k"], parts["v"])
        q_shape = tuple(shapes[parts["q"]])
        if any(tuple(shapes[s]) != q_shape for s in sources):
            raise DsocrError(f"CLIP layer {layer}: q/k/v_proj.{param} shapes differ")
        target = HF_CLIP_QKV_TARGET.format(layer=layer, param=param)
        plan.mapped.append(Mapped(target, sources, CONCAT_QKV, (3 * q_shape[0], *q_shape[1:])))
    return plan


def plan_clip_openai(shapes: Shapes) -> KeyPlan:
    """OpenAI CLIP (`visual.*`, from the TorchScript `.pt` or a state dict of it)."""
    return _plan_renames("clip-openai", shapes, _OPENAI_CLIP, OPENAI_CLIP_DROPPED)


def plan_deepencoder(shapes: Shapes) -> KeyPlan:
    """Official DeepSeek-OCR or dsocr files: vision tensors map to themselves, the LM is dropped."""
    plan = KeyPlan("deepencoder")
    for name, shape in shapes.items():
        local = name[len("model."):] if name.startswith("model.") else name
        if local.startswith(DEEPENCODER_ROOTS):
            plan.mapped.append(Mapped(local, (name,), RENAME, tuple(shape)))
        else:
            plan.dropped.append(name)
    return plan


PLANNERS: dict[str, Callable[[Shapes], KeyPlan]] = {
    "sam-segment-anything": plan_sam_segment_anything,
    "sam-hf": plan_sam_hf,
    "clip-hf": plan_clip_hf,
    "clip-openai": plan_clip_openai,
    "deepseek-ocr": plan_deepencoder,
    "dsocr-deepencoder": plan_deepencoder,
}


# -- making the tensors -----------------------------------------------------------------------


def concat_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.cat([q, k, v], dim=0)


def resample_positions(table: torch.Tensor, grid: int = TARGET_POSITION_GRID) -> torch.Tensor:
    """[1 + s^2, C] -> [1 + grid^2, C]: class row kept, the s x s grid resampled (fp32 bicubic,
    antialias, as DeepEncoder resamples at run time), returned in float32."""
    cls_row, patches = table[:1].float(), table[1:].float()
    side = math.isqrt(patches.shape[0])
    grid_nchw = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resampled = resample_grid(grid_nchw, grid).permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([cls_row, resampled], dim=0)


def materialize(mapped: Mapped, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The target tensor of `mapped`, reading its sources with `read(name)`."""
    if mapped.transform == RENAME:
        return read(mapped.sources[0])
    if mapped.transform == CONCAT_QKV:
        return concat_qkv(*(read(s) for s in mapped.sources))
    if mapped.transform == RESAMPLE_POSITIONS:
        return resample_positions(read(mapped.sources[0]))
    raise ValueError(f"unknown transform {mapped.transform}")


# -- sizes read off DeepEncoder-named shapes -----------------------------------------------------


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)})


def sam_dimensions(shapes: Shapes) -> dict:
    """SAM sizes from DeepEncoder `sam_model.*` shapes (as a plan's target shapes)."""
    try:
        width, _, patch, _ = shapes["sam_model.patch_embed.proj.weight"]
        grid = shapes["sam_model.pos_embed"][1]
        blocks = _indices(shapes, "sam_model.blocks.")
        rel = {i: shapes[f"sam_model.blocks.{i}.attn.rel_pos_h"] for i in blocks}
        head_dim = rel[blocks[0]][1]
        global_idx = tuple(i for i in blocks if rel[i][0] == 2 * grid - 1)
        windows = sorted({(rel[i][0] + 1) // 2 for i in blocks if i not in global_idx})
        return dict(
            width=width, depth=len(blocks), heads=width // head_dim, head_dim=head_dim,
            mlp_dim=shapes["sam_model.blocks.0.mlp.lin1.weight"][0], patch_size=patch, grid=grid,
            image_size=grid * patch, window_size=windows[0] if windows else 14,
            global_attn_indexes=global_idx, neck_channels=shapes["sam_model.neck.0.weight"][0],
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise DsocrError(f"SAM weights are incomplete (no {exc})") from None


def clip_dimensions(shapes: Shapes) -> dict:
    """CLIP sizes from DeepEncoder `vision_model.*` shapes. Heads are not stored in weights:
    CLIP's head size is 64 (OpenAI: heads = width // 64)."""
    try:
        width = shapes["vision_model.embeddings.class_embedding"][0]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        grid = math.isqrt(positions - 1)
        return dict(
            width=width, depth=len(_indices(shapes, "vision_model.transformer.layers.")),
            heads=max(1, width // 64), mlp_dim=shapes["vision_model.transformer.layers.0.mlp.fc1.weight"][0],
            patch_size=patch, grid=grid, image_size=grid * patch,
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise DsocrError(f"CLIP weights are incomplete (no {exc})") from None
