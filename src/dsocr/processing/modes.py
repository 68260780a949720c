"""Resolution modes and image-placeholder counts (spec §3, §4).

The six presets are those of the official `config.py` / README; Gundam-M is the paper's
1024-tile / 1280-global variant. Token counts follow `tokenize_with_images` (vLLM) and
`infer` (HF): a `g x g` feature grid becomes `g * (g + 1)` embeddings (one newline per row),
the view separator adds one, and tiles add an `(nq*ht) x (nq*wt + 1)` mosaic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dsocr.errors import DsocrError

PATCH_SIZE = 16
"""SAM patch size in pixels."""

DOWNSAMPLE = 4
"""The 16x token compressor halves each side twice."""


def grid_side(view_size: int) -> int:
    """Feature-grid side for a square view: `ceil((view_size // 16) / 4)` as in the official code."""
    return math.ceil((view_size // PATCH_SIZE) / DOWNSAMPLE)


@dataclass(frozen=True)
class Mode:
    """One resolution preset: global view size, tile size and whether tiles are used."""

    name: str
    base_size: int
    image_size: int
    crop: bool

    @property
    def global_grid(self) -> int:
        """Feature-grid side of the global view (16 for base_size 1024)."""
        return grid_side(self.base_size)

    @property
    def tile_grid(self) -> int:
        """Feature-grid side of one tile (10 for image_size 640)."""
        return grid_side(self.image_size)


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("tiny", 512, 512, False),
        Mode("small", 640, 640, False),
        Mode("base", 1024, 1024, False),
        Mode("large", 1280, 1280, False),
        Mode("gundam", 1024, 640, True),
        Mode("gundam-m", 1280, 1024, True),
    )
}


def get_mode(name: str) -> Mode:
    """Look up a preset by name, case-insensitively; `_` and `-` are interchangeable."""
    key = name.strip().lower().replace("_", "-")
    try:
        return MODES[key]
    except KeyError:
        raise DsocrError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}") from None


def num_image_tokens(mode: Mode, grid: tuple[int, int] | None) -> int:
    """Image placeholders for one image, newlines and separator included.

    `grid` is `(width_tiles, height_tiles)`, or None when the image is not tiled. As in the
    official code, a `(1, 1)` grid also means "no tiles" (tiles are used only if wt > 1 or ht > 1).
    Tiny 73, Small 111, Base 273, Large 421; Gundam 273 + 10*ht*(10*wt + 1).
    """
    g = mode.global_grid
    total = g * (g + 1) + 1
    if grid is not None and (grid[0] > 1 or grid[1] > 1):
        wt, ht = grid
        nq = mode.tile_grid
        total += nq * ht * (nq * wt + 1)
    return total
