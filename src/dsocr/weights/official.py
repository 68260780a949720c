"""The official DeepSeek-OCR checkpoint's names for DeepEncoder, and loading them strictly.

Official names carry a `model.` prefix (`model.sam_model.*`, `model.vision_model.*`,
`model.projector.layers.*`, `model.image_newline`, `model.view_seperator`); vLLM's loader and
a DeepEncoder's own `state_dict()` use the same names without it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import DsocrError
from ..model.config import ClipConfig, DeepEncoderConfig, SamConfig

VISION_ROOTS = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")
OFFICIAL_PREFIX = "model."


def is_vision_key(name: str) -> bool:
    return name.startswith(VISION_ROOTS)


def vision_keys(names) -> dict[str, str]:
    """Map DeepEncoder names -> names in the checkpoint, for keys with or without the `model.` prefix."""
    found: dict[str, str] = {}
    for name in names:
        local = name[len(OFFICIAL_PREFIX):] if name.startswith(OFFICIAL_PREFIX) else name
        if is_vision_key(local):
            if local in found:
                raise DsocrError(f"checkpoint holds both {found[local]} and {name}")
            found[local] = name
    return found


def _block_indices(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)})


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], head_dim: int = 64) -> DeepEncoderConfig:
    """Read DeepEncoder's sizes off the tensor shapes (DeepEncoder names, no `model.` prefix).

    Head counts are not stored in weights: they follow from the official head size of 64.
    """
    try:
        width = shapes["sam_model.patch_embed.proj.weight"][0]
        grid = shapes["sam_model.pos_embed"][1]
        patch = shapes["sam_model.patch_embed.proj.weight"][-1]
        sam_blocks = _block_indices(shapes, "sam_model.blocks.")
        rel = {i: shapes[f"sam_model.blocks.{i}.attn.rel_pos_h"][0] for i in sam_blocks}
        global_idx = tuple(i for i in sam_blocks if rel[i] == 2 * grid - 1)
        window_sizes = {(rel[i] + 1) // 2 for i in sam_blocks if i not in global_idx}
        sam = SamConfig(
            image_size=grid * patch,
            patch_size=patch,
            width=width,
            depth=len(sam_blocks),
            heads=max(1, width // head_dim),
            mlp_dim=shapes["sam_model.blocks.0.mlp.lin1.weight"][0],
            window_size=window_sizes.pop() if window_sizes else 14,
            global_attn_indexes=global_idx,
            neck_channels=shapes["sam_model.neck.0.weight"][0],
            compressor_channels=(shapes["sam_model.net_2.weight"][0], shapes["sam_model.net_3.weight"][0]),
        )
        clip_width = shapes["vision_model.embeddings.class_embedding"][0]
        clip_patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        clip = ClipConfig(
            width=clip_width,
            depth=len(_block_indices(shapes, "vision_model.transformer.layers.")),
            heads=max(1, clip_width // head_dim),
            mlp_dim=shapes["vision_model.transformer.layers.0.mlp.fc1.weight"][0],
            image_size=round((positions - 1) ** 0.5) * clip_patch,
            patch_size=clip_patch,
        )
        return DeepEncoderConfig(sam=sam, clip=clip, output_dim=shapes["projector.layers.weight"][0])
    except (KeyError, IndexError, ValueError) as exc:
        raise DsocrError(f"not DeepSeek-OCR vision weights (cannot read {exc} from them)") from None


def check_state_dict(model: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise one DsocrError naming every missing key, unexpected key and shape mismatch."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != tuple(shapes[k]))
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_sample(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_sample(unexpected)})")
    if wrong:
        parts.append(
            f"{len(wrong)} with wrong shape ("
            + _sample([f"{k}: {tuple(shapes[k])} != {expected[k]}" for k in wrong])
            + ")"
        )
    raise DsocrError(f"{source}: DeepEncoder weights do not fit: " + "; ".join(parts))


def _sample(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")
