"""Image loading and pre-processing, pixel-for-pixel as the official DeepSeek-OCR code (spec §4).

Every resize is Pillow's `Image.resize` with its default filter (bicubic) and padding is
`ImageOps.pad`, exactly the calls of the official `process/image_process.py` (vLLM) and
`modeling_deepseekocr.py` (HF `infer`). torchvision is not used: `to_tensor` re-does
`ToTensor()` + `Normalize((0.5,)*3, (0.5,)*3)` with the same torch ops.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from dsocr.errors import DsocrError
from dsocr.processing.modes import Mode, get_mode, grid_side

MAX_IMAGE_PIXELS = 178_956_970
"""Default pixel limit of `load_image`; equal to Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS).

An A4 page scanned at 1200 dpi (~139 Mpx) still fits. Pillow refuses anything above its own
limit when opening the file, whatever `max_pixels` says; both refusals give the same error.
"""

PAD_COLOR = (127, 127, 127)
"""`tuple(int(0.5 * 255) for _ in range(3))`, the official padding colour."""

CROP_THRESHOLD = 640
"""Images with both sides <= 640 are never tiled; hard-coded in both official paths."""

HF_TILE_SIZE = 640
"""HF `infer` calls `dynamic_preprocess(image)` with its default tile size 640, in every mode."""

PreprocessPath = Literal["vllm", "hf"]
"""Which official pipeline `prepare_image` reproduces."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_image(
    source: str | os.PathLike[str] | Image.Image,
    *,
    exif_transpose: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Open an image fully decoded, EXIF-upright and RGB, as the official `load_image` + `.convert("RGB")`.

    `source` is a path or an already-open PIL image. The pixel count is checked against
    `max_pixels` from the header, before any decoding. Like the official scripts, an EXIF block
    that cannot be applied is ignored (the image is used as stored). Every failure is a
    one-line `DsocrError` naming the file.
    """
    if isinstance(source, Image.Image):
        name = _one_line(getattr(source, "filename", "") or "<image>")
        return _decode(source, name, exif_transpose, max_pixels)

    path = Path(source)
    name = _one_line(os.fspath(source))
    if not path.exists():
        raise DsocrError(f"{name}: no such file")
    if path.is_dir():
        raise DsocrError(f"{name}: is a directory, not an image file")
    with open_image_file(path, name) as image:
        return _decode(image, name, exif_transpose, max_pixels)


def open_image_file(path: Path, name: str) -> Image.Image:
    """`Image.open` (lazy: header only) with every failure as a one-line `DsocrError` naming `name`.
    Pillow's soft decompression-bomb warning is silenced: callers check the pixel count themselves."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-metadata chatter; real problems raise below
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DsocrError(f"{name}: image too large, refused as a possible decompression bomb ({_one_line(exc)})") from None
    except Image.UnidentifiedImageError:
        raise DsocrError(f"{name}: not an image file Pillow can read") from None
    except OSError as exc:
        raise DsocrError(f"{name}: cannot open ({_one_line(exc.strerror or exc)})") from None
    except Exception as exc:  # Pillow plugins raise assorted types on corrupt headers
        raise DsocrError(f"{name}: corrupt image ({_one_line(exc)})") from None


def _decode(image: Image.Image, name: str, exif_transpose: bool, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width * height > max_pixels:
        raise DsocrError(
            f"{name}: image too large ({width}x{height} = {width * height} pixels, limit {max_pixels}); "
            "refused as a possible decompression bomb"
        )
    if width == 0 or height == 0:
        raise DsocrError(f"{name}: image has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise DsocrError(f"{name}: image too large, refused as a possible decompression bomb ({_one_line(exc)})") from None
    except Exception as exc:
        raise DsocrError(f"{name}: truncated or corrupt image ({_one_line(exc)})") from None
    try:
        if exif_transpose:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:
                pass  # official load_image: on failure, fall back to the image as stored
        rgb = image.convert("RGB")
        rgb.load()
    except Exception as exc:
        raise DsocrError(f"{name}: cannot convert image to RGB ({_one_line(exc)})") from None
    return rgb


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """`ImageOps.pad(image, (size, size), color=(127,127,127))` with its default bicubic filter.

    The long side becomes `size`, the short side `round(short/long*size)` (round-half-even), and
    the result is pasted centred (offset `round((size - short) / 2)`) on a grey canvas.
    """
    return ImageOps.pad(image, (size, size), color=PAD_COLOR)


def _check_tile_bounds(min_tiles: int, max_tiles: int) -> None:
    if not 1 < max_tiles <= 9:
        raise DsocrError(f"max_tiles must be between 2 and 9, got {max_tiles}")
    if not 1 <= min_tiles <= max_tiles:
        raise DsocrError(f"min_tiles must be between 1 and max_tiles ({max_tiles}), got {min_tiles}")


def tile_candidates(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (wt, ht) with min_tiles <= wt*ht <= max_tiles, ordered by tile count (then by wt)."""
    pairs = [
        (i, j)
        for i in range(1, max_tiles + 1)
        for j in range(1, max_tiles + 1)
        if min_tiles <= i * j <= max_tiles
    ]
    return sorted(pairs, key=lambda p: (p[0] * p[1], p[0]))


def choose_tile_grid(
    width: int, height: int, *, tile_size: int, min_tiles: int = 2, max_tiles: int = 6
) -> tuple[int, int]:
    """The (width_tiles, height_tiles) grid of the official `dynamic_preprocess`.

    As `find_closest_aspect_ratio`: walk the candidates by increasing tile count, keep the one
    whose ratio `wt/ht` is closest to `width/height`; on an exact tie switch to the later
    candidate only if `width*height > 0.5 * tile_size**2 * wt*ht`. (The official code orders
    equal tile counts by CPython set order; that order never changes the result.)
    """
    _check_tile_bounds(min_tiles, max_tiles)
    if width < 1 or height < 1:
        raise DsocrError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    area = width * height
    best = (1, 1)
    best_diff = float("inf")
    for wt, ht in tile_candidates(min_tiles, max_tiles):
        diff = abs(aspect - wt / ht)
        if diff < best_diff:
            best, best_diff = (wt, ht), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * wt * ht:
            best = (wt, ht)
    return best


def split_into_tiles(image: Image.Image, grid: tuple[int, int], tile_size: int) -> list[Image.Image]:
    """Resize to `(tile_size*wt, tile_size*ht)` (default bicubic, aspect distorted), crop row-major."""
    wt, ht = grid
    resized = image.resize((tile_size * wt, tile_size * ht))
    return [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(ht)
        for c in range(wt)
    ]


_HALF = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float32).view(-1, 1, 1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 [3, H, W] in [-1, 1], bit-identical to torchvision `ToTensor()` + `Normalize(0.5, 0.5)`.

    Same op order: uint8 HWC -> CHW -> float32 -> `/255` -> `-mean` -> `/std` (on CPU).
    """
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {image.mode!r}")
    array = np.array(image, dtype=np.uint8, copy=True)
    chw = torch.from_numpy(array).view(image.height, image.width, 3).permute(2, 0, 1).contiguous()
    return chw.to(dtype=torch.float32).div(255).sub(_HALF).div(_HALF)


@dataclass
class PreparedImage:
    """The model inputs for one image, as the official processor builds them."""

    global_view: torch.Tensor  # [3, S, S]; S = base_size (vLLM, HF crop) or image_size (HF no-crop)
    tiles: torch.Tensor | None  # [n, 3, T, T], row-major; None when the image is not tiled
    grid: tuple[int, int] | None  # (width_tiles, height_tiles); None when not tiled
    mode: Mode
    original_size: tuple[int, int]  # (W, H) of the image given to prepare_image

    @property
    def num_tokens(self) -> int:
        """Image placeholders (newlines and separator included), counted as the official code does.

        Global part from the global view's side (so HF no-crop counts with image_size), tile part
        with `mode.image_size` (so HF Gundam-M counts 16 per tile side although its tiles are 640).
        """
        g = grid_side(self.global_view.shape[-1])
        total = g * (g + 1) + 1
        if self.grid is not None:
            wt, ht = self.grid
            nq = self.mode.tile_grid
            total += nq * ht * (nq * wt + 1)
        return total


def prepare_image(
    image: Image.Image,
    mode: Mode | str,
    *,
    min_tiles: int = 2,
    max_tiles: int | None = None,
    path: PreprocessPath = "vllm",
) -> PreparedImage:
    """Build the global view and the tiles of one (EXIF-corrected) image.

    path="vllm" (default; official `DeepseekOCRProcessor.tokenize_with_images`):
      - no-crop modes: if image_size <= 640 first `resize((image_size, image_size))` (aspect
        distorted), then `pad_to_square(..., base_size)`;
      - crop modes: global = `pad_to_square(original, base_size)`; tiles only when W > 640 or
        H > 640, from the original image with tile_size = image_size; max_tiles defaults to 6.
    path="hf" (official HF `infer`):
      - no-crop: as above but the single view is padded to image_size;
      - crop: tiles are always 640 px (HF calls `dynamic_preprocess` with its default), max_tiles
        defaults to 9. For Gundam-M this reproduces HF's mismatch (640-px tiles, 16-per-side count).
    A chosen (1, 1) grid (only possible with min_tiles=1) means no tiles, as in the official code.
    """
    if isinstance(mode, str):
        mode = get_mode(mode)
    if path not in ("vllm", "hf"):
        raise DsocrError(f"unknown preprocessing path {path!r}; valid: vllm, hf")
    if max_tiles is None:
        max_tiles = 9 if path == "hf" else 6
    _check_tile_bounds(min_tiles, max_tiles)
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size

    grid: tuple[int, int] | None = None
    tiles: torch.Tensor | None = None
    if mode.crop:
        tile_size = HF_TILE_SIZE if path == "hf" else mode.image_size
        if width > CROP_THRESHOLD or height > CROP_THRESHOLD:
            grid = choose_tile_grid(width, height, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
            if grid == (1, 1):
                grid = None
            else:
                tiles = torch.stack([to_tensor(t) for t in split_into_tiles(image, grid, tile_size)])
        view = pad_to_square(image, mode.base_size)
    else:
        if mode.image_size <= 640:
            image = image.resize((mode.image_size, mode.image_size))
        view = pad_to_square(image, mode.image_size if path == "hf" else mode.base_size)

    return PreparedImage(
        global_view=to_tensor(view),
        tiles=tiles,
        grid=grid,
        mode=mode,
        original_size=(width, height),
    )
