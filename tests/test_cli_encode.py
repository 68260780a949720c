"""`dsocr encode` end to end: image file -> safetensors tokens, checked against the unlimited_ocr
oracle fed the same official pixels; every bad input gives one line, exit 1 and no output file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dsocr.cli import main
from dsocr.processing import get_mode, load_image, prepare_image
from oracles import relative_error, unlimited_ocr_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    oracle = unlimited_ocr_model(seed=3)
    oracle.save_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    state["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(128, 3, 14, 14)
    save_file(state, directory / "model.safetensors")
    return oracle, directory


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "page.png"
    image = Image.effect_noise((1280, 720), 60).convert("RGB")
    image.save(path)
    return path


@pytest.mark.parametrize("mode, tokens, grid", [("tiny", 73, None), ("base", 273, None), ("gundam", 483, [2, 1])])
def test_encode_writes_the_oracles_tokens(checkpoint, page, tmp_path, capsys, mode, tokens, grid):
    oracle, weights = checkpoint
    out = tmp_path / "tokens.safetensors"
    assert main(["encode", str(page), "--weights", str(weights), "--mode", mode, "--out", str(out)]) == 0
    assert f"{tokens} tokens" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta, written = f.metadata(), f.get_tensor("tokens")
    assert meta["mode"] == mode and int(meta["num_tokens"]) == tokens and json.loads(meta["grid"]) == grid
    prepared = prepare_image(load_image(page), get_mode(mode))
    kwargs = {}
    if prepared.tiles is not None:
        kwargs = dict(pixel_values_local=prepared.tiles, num_local_patches=[len(prepared.tiles)], patches_grid=[list(prepared.grid)])
    with torch.inference_mode():
        expected = oracle.model.get_image_features(prepared.global_view[None], **kwargs).pooler_output[0]
    assert relative_error(written, expected) <= 1e-5


def test_encode_bfloat16(checkpoint, page, tmp_path):
    out = tmp_path / "t.safetensors"
    assert main(["encode", str(page), "-w", str(checkpoint[1]), "-m", "small", "--dtype", "bfloat16", "-o", str(out)]) == 0
    assert load_file(out)["tokens"].dtype == torch.bfloat16


def _bad_inputs(tmp_path, weights, page):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(page.read_bytes()[:2000])
    lm_only = tmp_path / "lm.safetensors"
    save_file({"model.norm.weight": torch.ones(4)}, lm_only)
    return {
        "missing image": ([str(tmp_path / "nope.png"), "-w", weights], "no such file"),
        "not an image": ([str(text), "-w", weights], "not an image"),
        "truncated image": ([str(truncated), "-w", weights], "cut.png"),
        "unknown mode": ([str(page), "-w", weights, "--mode", "huge"], "unknown"),
        "bad max tiles": ([str(page), "-w", weights, "--mode", "gundam", "--max-tiles", "12"], "max_tiles"),
        "not vision weights": ([str(page), "-w", str(lm_only)], "not DeepSeek-OCR vision weights"),
        "missing weights": ([str(page), "-w", str(tmp_path / "none.safetensors")], "no such file"),
        "bad output name": ([str(page), "-w", weights, "-o", str(tmp_path / "x.txt")], ".safetensors"),
    }


def test_bad_inputs_give_one_line_exit_1_and_no_output(checkpoint, page, tmp_path, capsys):
    for name, (args, message) in _bad_inputs(tmp_path, str(checkpoint[1]), page).items():
        out = tmp_path / "out" / "tokens.safetensors"
        extra = [] if "-o" in args else ["-o", str(out)]
        assert main(["encode", *args, *extra]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith("dsocr encode: error:") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert not out.exists() and not (tmp_path / "x.txt").exists(), name
        assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_decompression_bomb_is_refused_without_traceback(checkpoint, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx, a few KB on disk
    out = tmp_path / "o.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "dsocr", "encode", str(bomb), "-w", str(checkpoint[1]), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "bomb.png" in result.stderr
    assert not out.exists()


def test_help_explains_modes_and_weights():
    result = subprocess.run([sys.executable, "-m", "dsocr", "encode", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for word in ("gundam", "hub id", "--dtype", "safetensors"):
        assert word in result.stdout
