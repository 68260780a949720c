"""Fonts for the synthetic page renderer.

The TrueType files come from matplotlib, which bundles the DejaVu families (Sans, Serif, Sans
Mono; regular, bold, oblique) in `matplotlib/mpl-data/fonts/ttf/`. matplotlib is already a
dependency of dsocr (`dsocr.evaluation.report` plots with it), so no font package is needed; the
files are located with `importlib.util.find_spec`, without importing matplotlib.

When matplotlib is not installed, every family falls back to Pillow's built-in scalable font
(`ImageFont.load_default(size=...)`, Pillow >= 10.1), which has no bold or italic face.

Fonts are opened with Pillow's BASIC layout engine, so that the rendered pixels do not depend on
whether libraqm happens to be installed: with the same Pillow (and FreeType) build and the same
font files, the same text gives the same pixels.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

DEFAULT_FAMILY = "default"
"""Pillow's built-in font: always available."""

FAMILIES: dict[str, dict[str, str]] = {
    "sans": {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "italic": "DejaVuSans-Oblique.ttf"},
    "serif": {"regular": "DejaVuSerif.ttf", "bold": "DejaVuSerif-Bold.ttf", "italic": "DejaVuSerif-Italic.ttf"},
    "mono": {"regular": "DejaVuSansMono.ttf", "bold": "DejaVuSansMono-Bold.ttf",
             "italic": "DejaVuSansMono-Oblique.ttf"},
}
"""Font families by name, each a file per style, looked up in `font_dir()`."""

STYLES = ("regular", "bold", "italic")


@lru_cache(maxsize=1)
def font_dir() -> Path | None:
    """matplotlib's bundled TrueType folder, or None when matplotlib is not installed."""
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    directory = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
    return directory if directory.is_dir() else None


def family_files(family: str) -> dict[str, Path] | None:
    """The existing files of a family by style, or None if its regular face is missing."""
    directory = font_dir()
    if directory is None or family not in FAMILIES:
        return None
    files = {style: directory / name for style, name in FAMILIES[family].items() if (directory / name).is_file()}
    return files if "regular" in files else None


def available_families() -> list[str]:
    """Families usable for rendering, in a fixed order; `["default"]` when no TrueType file is found."""
    found = [family for family in FAMILIES if family_files(family) is not None]
    return found or [DEFAULT_FAMILY]


@lru_cache(maxsize=256)
def get_font(family: str, size: int, style: str = "regular") -> ImageFont.FreeTypeFont:
    """A font of `family` in `style` at `size` pixels (a missing style falls back to regular;
    an unknown or missing family falls back to Pillow's built-in font)."""
    if style not in STYLES:
        raise ValueError(f"unknown font style {style!r}; use one of {', '.join(STYLES)}")
    size = max(1, int(size))
    files = family_files(family) if family != DEFAULT_FAMILY else None
    if files is None:
        return ImageFont.load_default(size=size)
    path = files.get(style, files["regular"])
    return ImageFont.truetype(str(path), size=size, layout_engine=ImageFont.Layout.BASIC)
