"""Image pre-processing exactly as the official DeepSeek-OCR code (spec §3-4)."""

from dsocr.processing.images import (
    MAX_IMAGE_PIXELS,
    PAD_COLOR,
    PreparedImage,
    PreprocessPath,
    choose_tile_grid,
    load_image,
    pad_to_square,
    prepare_image,
    split_into_tiles,
    tile_candidates,
    to_tensor,
)
from dsocr.processing.modes import MODES, Mode, get_mode, num_image_tokens

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MODES",
    "PAD_COLOR",
    "Mode",
    "PreparedImage",
    "PreprocessPath",
    "choose_tile_grid",
    "get_mode",
    "load_image",
    "num_image_tokens",
    "pad_to_square",
    "prepare_image",
    "split_into_tiles",
    "tile_candidates",
    "to_tensor",
]
