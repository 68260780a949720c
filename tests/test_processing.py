"""Image pre-processing: modes, token counts, tiling, padding, normalisation, loading (spec §3-4)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsocr.errors import DsocrError
from dsocr.processing import (
    MODES,
    Mode,
    choose_tile_grid,
    get_mode,
    load_image,
    num_image_tokens,
    pad_to_square,
    prepare_image,
    split_into_tiles,
    to_tensor,
)

GREY = (127, 127, 127)
RED = (255, 0, 0)


# ---------------------------------------------------------------- modes and token counts


def test_modes_table():
    expected = {
        "tiny": (512, 512, False),
        "small": (640, 640, False),
        "base": (1024, 1024, False),
        "large": (1280, 1280, False),
        "gundam": (1024, 640, True),
        "gundam-m": (1280, 1024, True),
    }
    assert {k: (m.base_size, m.image_size, m.crop) for k, m in MODES.items()} == expected
    assert MODES["base"].global_grid == 16
    assert MODES["gundam"].tile_grid == 10
    assert MODES["gundam-m"].global_grid == 20 and MODES["gundam-m"].tile_grid == 16
    assert MODES["tiny"].global_grid == 8


def test_get_mode_names():
    assert get_mode("Gundam") is MODES["gundam"]
    assert get_mode("gundam_m") is MODES["gundam-m"]
    assert get_mode("GUNDAM-M") is MODES["gundam-m"]
    with pytest.raises(DsocrError) as err:
        get_mode("huge")
    msg = str(err.value)
    assert "huge" in msg and "\n" not in msg
    for name in MODES:
        assert name in msg


@pytest.mark.parametrize("name, tokens", [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_non_crop_token_counts(name, tokens):
    assert num_image_tokens(MODES[name], None) == tokens


@pytest.mark.parametrize("wt, ht", [(w, h) for w in range(1, 10) for h in range(1, 10) if 2 <= w * h <= 9])
def test_crop_token_counts(wt, ht):
    assert num_image_tokens(MODES["gundam"], (wt, ht)) == 273 + 10 * ht * (10 * wt + 1)
    assert num_image_tokens(MODES["gundam-m"], (wt, ht)) == 421 + 16 * ht * (16 * wt + 1)


def test_untiled_crop_counts():
    assert num_image_tokens(MODES["gundam"], None) == 273
    assert num_image_tokens(MODES["gundam"], (1, 1)) == 273  # official: tiles only if wt > 1 or ht > 1
    assert num_image_tokens(MODES["gundam-m"], None) == 421


# ---------------------------------------------------------------- worked Gundam examples (spec §4)


def solid(width: int, height: int, color=(200, 30, 90)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


GUNDAM_EXAMPLES = [
    ((1654, 2339), (2, 3), 903),
    ((2480, 3508), (2, 3), 903),
    ((800, 600), (3, 2), 893),
    ((641, 400), (3, 2), 893),
    ((1280, 720), (2, 1), 483),
    ((3000, 1000), (3, 1), 583),
    ((1200, 1200), (2, 2), 693),
    ((640, 640), None, 273),
]


@pytest.mark.parametrize("path", ["vllm", "hf"])
@pytest.mark.parametrize("size, grid, tokens", GUNDAM_EXAMPLES)
def test_gundam_examples(size, grid, tokens, path):
    prepared = prepare_image(solid(*size), "gundam", path=path)
    assert prepared.grid == grid
    assert prepared.num_tokens == tokens
    assert prepared.original_size == size
    assert prepared.global_view.shape == (3, 1024, 1024)
    assert prepared.global_view.dtype == torch.float32
    if grid is None:
        assert prepared.tiles is None
    else:
        assert prepared.tiles is not None
        assert prepared.tiles.shape == (grid[0] * grid[1], 3, 640, 640)


def test_2000_square_hf_vs_vllm():
    image = solid(2000, 2000)
    vllm = prepare_image(image, "gundam")
    assert vllm.grid == (2, 2) and vllm.num_tokens == 693
    hf = prepare_image(image, "gundam", path="hf")
    assert hf.grid == (3, 3) and hf.num_tokens == 1203
    assert hf.tiles is not None and hf.tiles.shape == (9, 3, 640, 640)
    assert prepare_image(image, "gundam", max_tiles=9).grid == (3, 3)
    assert prepare_image(image, "gundam", path="hf", max_tiles=6).grid == (2, 2)


def test_gundam_m_vllm_tiles_are_1024_threshold_640():
    prepared = prepare_image(solid(700, 650), "gundam-m")
    assert prepared.grid == (2, 2)
    assert prepared.tiles is not None and prepared.tiles.shape == (4, 3, 1024, 1024)
    assert prepared.global_view.shape == (3, 1280, 1280)
    assert prepared.num_tokens == 421 + 16 * 2 * (16 * 2 + 1)
    untiled = prepare_image(solid(640, 600), "gundam-m")
    assert untiled.grid is None and untiled.tiles is None and untiled.num_tokens == 421


def test_gundam_m_hf_uses_640_tiles():
    prepared = prepare_image(solid(700, 650), "gundam-m", path="hf")
    assert prepared.tiles is not None and prepared.tiles.shape[-1] == 640
    assert prepared.global_view.shape == (3, 1280, 1280)


@pytest.mark.parametrize("name, side, tokens", [("tiny", 512, 73), ("small", 640, 111), ("base", 1024, 273), ("large", 1280, 421)])
@pytest.mark.parametrize("path", ["vllm", "hf"])
def test_non_crop_modes(name, side, tokens, path):
    prepared = prepare_image(solid(1500, 900), name, path=path)
    assert prepared.grid is None and prepared.tiles is None
    assert prepared.global_view.shape == (3, side, side)
    assert prepared.num_tokens == tokens


def test_non_crop_small_resizes_without_padding():
    """Tiny/Small: resize to a square first (aspect distorted), so there is no grey border."""
    prepared = prepare_image(solid(1500, 300, RED), "small")
    expected = to_tensor(solid(640, 640, RED))
    assert torch.equal(prepared.global_view, expected)


def test_non_crop_base_pads():
    prepared = prepare_image(solid(200, 100, RED), "base")
    view = prepared.global_view
    grey = (np.float32(127) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert torch.all(view[:, :256] == torch.from_numpy(np.array(grey)))  # rows above the content are padding
    assert torch.all(view[0, 256:768] == 1.0)


def test_hf_non_crop_uses_image_size():
    """HF `infer` with crop_mode=False builds its single view at image_size; vLLM at base_size."""
    odd = Mode("custom", 1024, 640, False)
    hf = prepare_image(solid(900, 500), odd, path="hf")
    assert hf.global_view.shape == (3, 640, 640) and hf.num_tokens == 111
    vllm = prepare_image(solid(900, 500), odd)
    assert vllm.global_view.shape == (3, 1024, 1024) and vllm.num_tokens == 273


def test_prepare_image_matches_manual_pipeline():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8))
    prepared = prepare_image(image, "gundam")
    assert prepared.grid == choose_tile_grid(1000, 700, tile_size=640)
    assert torch.equal(prepared.global_view, to_tensor(pad_to_square(image, 1024)))
    assert prepared.tiles is not None
    manual = torch.stack([to_tensor(t) for t in split_into_tiles(image, prepared.grid, 640)])
    assert torch.equal(prepared.tiles, manual)


def test_prepare_image_converts_non_rgb():
    prepared = prepare_image(Image.new("L", (100, 100), 10), "tiny")
    assert prepared.global_view.shape == (3, 512, 512)


def test_min_tiles_one_can_mean_no_tiles():
    # 700x700 with min 1: (1,1) and (2,2) tie at diff 0; area 490000 <= 0.5*640^2*4, so (1,1) stays.
    prepared = prepare_image(solid(700, 700), "gundam", min_tiles=1)
    assert prepared.grid is None and prepared.tiles is None and prepared.num_tokens == 273


@pytest.mark.parametrize("kwargs", [{"max_tiles": 1}, {"max_tiles": 10}, {"min_tiles": 0}, {"min_tiles": 7, "max_tiles": 6}])
def test_tile_bounds_validated(kwargs):
    with pytest.raises(DsocrError):
        choose_tile_grid(1000, 800, tile_size=640, **kwargs)
    with pytest.raises(DsocrError):
        prepare_image(solid(10, 10), "gundam", **kwargs)


def test_unknown_path_rejected():
    with pytest.raises(DsocrError):
        prepare_image(solid(10, 10), "gundam", path="tf")  # type: ignore[arg-type]


# ---------------------------------------------------------------- tile choice vs an independent oracle


def official_tile_choice(width, height, tile_size, min_num, max_num):
    """Re-statement of the official `dynamic_preprocess` + `find_closest_aspect_ratio` choice."""
    ratios = set()
    for n in range(min_num, max_num + 1):
        for i in range(1, n + 1):
            for j in range(1, n + 1):
                if min_num <= i * j <= max_num:
                    ratios.add((i, j))
    ordered = sorted(ratios, key=lambda r: r[0] * r[1])
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    for r in ordered:
        d = abs(aspect - r[0] / r[1])
        if d < best_diff:
            best_diff = d
            best = r
        elif d == best_diff:
            if width * height > 0.5 * tile_size * tile_size * r[0] * r[1]:
                best = r
    return best


GRID_SIDES = [1, 300, 400, 500, 600, 639, 640, 641, 700, 800, 960, 1000, 1200, 1280, 1281, 1600,
              1654, 1920, 2000, 2339, 2480, 2560, 3000, 3508, 4000, 6000]


@pytest.mark.parametrize("max_tiles", [6, 9])
@pytest.mark.parametrize("min_tiles", [1, 2])
@pytest.mark.parametrize("tile_size", [640, 1024])
def test_tile_choice_grid(max_tiles, min_tiles, tile_size):
    for w in GRID_SIDES:
        for h in GRID_SIDES:
            got = choose_tile_grid(w, h, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
            assert got == official_tile_choice(w, h, tile_size, min_tiles, max_tiles), (w, h)


@settings(max_examples=1500, deadline=None)
@given(
    w=st.integers(1, 12000),
    h=st.integers(1, 12000),
    max_tiles=st.integers(2, 9),
    min_tiles=st.integers(1, 2),
    tile_size=st.sampled_from([640, 1024]),
)
def test_tile_choice_random(w, h, max_tiles, min_tiles, tile_size):
    got = choose_tile_grid(w, h, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    assert got == official_tile_choice(w, h, tile_size, min_tiles, max_tiles)


@settings(max_examples=500, deadline=None)
@given(wt=st.integers(1, 9), ht=st.integers(1, 9), scale=st.integers(1, 1500), max_tiles=st.sampled_from([6, 9]))
def test_tile_choice_exact_ratios(wt, ht, scale, max_tiles):
    """Images whose ratio equals a candidate's hit the tie rule; sizes around the 0.5*S^2*n area threshold."""
    w, h = wt * scale, ht * scale
    assert choose_tile_grid(w, h, tile_size=640, max_tiles=max_tiles) == official_tile_choice(w, h, 640, 2, max_tiles)


def test_split_into_tiles_row_major():
    image = Image.new("RGB", (40, 20))
    for c in range(4):
        for r in range(2):
            image.paste((c * 60, r * 100, 7), (c * 10, r * 10, c * 10 + 10, r * 10 + 10))
    tiles = split_into_tiles(image, (2, 1), 10)  # resize 40x20 -> 20x10, then two 10x10 tiles
    assert [t.size for t in tiles] == [(10, 10), (10, 10)]
    tiles = split_into_tiles(image, (4, 2), 10)  # no-op resize: tiles are the original blocks
    assert len(tiles) == 8
    for k, tile in enumerate(tiles):
        r, c = divmod(k, 4)
        assert tile.getpixel((5, 5)) == (c * 60, r * 100, 7)


# ---------------------------------------------------------------- pad_to_square


def red_rows(image: Image.Image) -> list[int]:
    a = np.asarray(image)
    return [int(i) for i in np.nonzero((a == RED).all(axis=-1).all(axis=1))[0]]


def red_cols(image: Image.Image) -> list[int]:
    a = np.asarray(image)
    return [int(i) for i in np.nonzero((a == RED).all(axis=-1).all(axis=0))[0]]


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(np.asarray(image).reshape(-1, 3), axis=0)}


def test_pad_wide():
    out = pad_to_square(solid(100, 50, RED), 64)
    assert out.size == (64, 64)
    assert red_rows(out) == list(range(16, 48))  # height 32, offset round(32/2) = 16
    assert colours(out) == {RED, GREY}


def test_pad_tall():
    out = pad_to_square(solid(50, 100, RED), 64)
    assert red_cols(out) == list(range(16, 48))
    assert colours(out) == {RED, GREY}


def test_pad_round_half_even():
    # 100x50 -> 65: height round(32.5) = 32 (half-even), offset round(16.5) = 16 (half-even).
    out = pad_to_square(solid(100, 50, RED), 65)
    assert red_rows(out) == list(range(16, 48))
    # 100x50 -> 63: height round(31.5) = 32, offset round(15.5) = 16.
    out = pad_to_square(solid(100, 50, RED), 63)
    assert red_rows(out) == list(range(16, 48))
    # 100x30 -> 64: height round(19.2) = 19, offset round(22.5) = 22.
    out = pad_to_square(solid(100, 30, RED), 64)
    assert red_rows(out) == list(range(22, 41))


def test_pad_square_input_is_plain_resize():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(pad_to_square(image, 64)), np.asarray(image.resize((64, 64))))


# ---------------------------------------------------------------- to_tensor


def test_to_tensor_matches_torchvision_formula():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    pixels[0, 0] = 0
    pixels[0, 1] = 255
    out = to_tensor(Image.fromarray(pixels))
    assert out.dtype == torch.float32 and out.shape == (3, 7, 5)
    chw = pixels.transpose(2, 0, 1).astype(np.float32)
    expected = (chw / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert np.array_equal(out.numpy(), expected)
    assert out.min() == -1.0 and out.max() == 1.0


def test_to_tensor_all_levels():
    levels = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.stack([levels, levels[::-1], levels], axis=-1)[None])
    out = to_tensor(image)
    expected = (levels.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert np.array_equal(out[0, 0].numpy(), expected)
    assert np.array_equal(out[1, 0].numpy(), expected[::-1])


def test_to_tensor_rejects_non_rgb():
    with pytest.raises(ValueError):
        to_tensor(Image.new("L", (4, 4)))


# ---------------------------------------------------------------- load_image


def assert_one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(DsocrError) as err:
        load_image(path, **kwargs)
    msg = str(err.value)
    assert path.name in msg
    assert "\n" not in msg
    return msg


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_load_ok(tmp_path):
    path = tmp_path / "page.png"
    Image.new("P", (30, 20)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)
    assert load_image(str(path)).size == (30, 20)


def test_load_accepts_pil_image():
    image = load_image(Image.new("RGBA", (12, 8), (1, 2, 3, 4)))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (1, 2, 3)


def test_load_missing(tmp_path):
    assert "no such file" in assert_one_line_error(tmp_path / "missing.png")


def test_load_directory(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert "directory" in assert_one_line_error(folder)


def test_load_text_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello\nworld\n")
    assert "not an image" in assert_one_line_error(path)


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_load_truncated(tmp_path, fmt, suffix):
    buffer = io.BytesIO()
    noise(64, 64).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in assert_one_line_error(path)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is rewritten to declare `width x height`."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_load_decompression_bomb_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_declared_size(20000, 20000))
    assert "too large" in assert_one_line_error(path)


def test_load_decompression_bomb_own_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_with_declared_size(6000, 6000))  # under Pillow's limits, over ours
    msg = assert_one_line_error(path, max_pixels=1_000_000)
    assert "too large" in msg and "6000x6000" in msg


def test_load_max_pixels_real_image(tmp_path):
    path = tmp_path / "ok.png"
    noise(100, 100).save(path)
    assert_one_line_error(path, max_pixels=5000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_load_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    solid(100, 50).save(path, exif=exif)
    assert load_image(path).size == (50, 100)
    assert load_image(path, exif_transpose=False).size == (100, 50)
