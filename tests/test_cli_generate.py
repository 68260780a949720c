"""A small random DeepSeek-OCR in the official directory layout (config.json with the official
fields, safetensors, tokenizer files) run end to end: Python API and `dsocr generate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from dsocr.cli import main
from dsocr.inference.generate import GenerationSettings, generate
from dsocr.inference.pipeline import DeepSeekOCR
from dsocr.processing import get_mode, load_image, prepare_image
from dsocr.processing.prompts import build_prompt_ids
from dsocr.processing.tokenizer import build_builtin_tokenizer, load_tokenizer
from oracles import official_model_dir, unlimited_ocr_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = official_model_dir(unlimited_ocr_model(seed=8), tmp_path_factory.mktemp("DeepSeek-OCR"))
    build_builtin_tokenizer().save(str(directory / "tokenizer.json"))
    added = {"added_tokens_decoder": {}, "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(added))
    return directory


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "page.png"
    Image.effect_noise((900, 700), 50).convert("RGB").save(path)
    return path


def test_official_layout_is_what_loads(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["language_config"]["use_mla"] is False and config["model_type"] == "deepseek_vl_v2"
    ocr = DeepSeekOCR.from_pretrained(model_dir)
    assert ocr.model.config.language.hidden_size == config["language_config"]["hidden_size"]
    assert ocr.tokenizer.encode("<image>\n<|grounding|>Convert the document to markdown. ") == [
        128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16, 223]


def test_api_equals_the_pieces_and_streams(model_dir, page):
    ocr = DeepSeekOCR.from_pretrained(model_dir)
    settings = GenerationSettings(max_new_tokens=12)
    streamed: list[str] = []
    result = ocr.generate(page, prompt="free", mode="gundam", settings=settings, stream=lambda _b, t: streamed.append(t))[0]
    # the same run assembled by hand from the documented pieces
    prepared = prepare_image(load_image(page), get_mode("gundam"))
    tokens = ocr.model.model.encode(prepared)
    ids = build_prompt_ids(load_tokenizer(model_dir), "<image>\nFree OCR.", [tokens.shape[0]])
    expected = generate(ocr.model, [ids], [tokens], settings)[0]
    assert result.token_ids == expected.ids and len(result.token_ids) == 12
    assert result.image_tokens == 273 + 10 * prepared.grid[1] * (10 * prepared.grid[0] + 1)
    assert "".join(streamed) == result.text == ocr.tokenizer.decode(result.token_ids)


def test_batch_of_prompts_and_several_images_per_prompt(model_dir, page):
    ocr = DeepSeekOCR.from_pretrained(model_dir)
    settings = GenerationSettings(max_new_tokens=5, ngram_size=None)
    small = Image.new("RGB", (300, 200), "white")
    singles = [ocr.generate(img, prompt="free", mode="tiny", settings=settings)[0].token_ids for img in (page, small)]
    batched = ocr.generate([page, small], prompt="free", mode="tiny", settings=settings)
    assert [r.token_ids for r in batched] == singles
    two = ocr.generate([[page, small]], prompt="<image>\n<image>\nFree OCR.", mode="tiny", settings=settings)[0]
    assert two.image_tokens == 2 * 73
    with pytest.raises(Exception, match="image"):
        ocr.generate([[page, small]], prompt="free", mode="tiny", settings=settings)


def test_cli_generate_streams_raw_output(model_dir, page):
    result = subprocess.run(
        [sys.executable, "-m", "dsocr", "generate", str(page), "--model", str(model_dir), "--mode", "small",
         "--prompt", "free", "--max-new-tokens", "6"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "111 image tokens" in result.stderr and "6 generated" in result.stderr and "without EOS" in result.stderr
    ocr = DeepSeekOCR.from_pretrained(model_dir)
    expected = ocr.generate(page, prompt="free", mode="small", settings=GenerationSettings(max_new_tokens=6))[0].text
    assert result.stdout.rstrip("\n") == expected.rstrip("\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "huge"], "unknown"),
        (["--prompt", "no placeholder here"], "<image>"),
        (["--max-new-tokens", "0"], "max-new-tokens"),
    ],
)
def test_cli_generate_errors(model_dir, page, capsys, args, message):
    assert main(["generate", str(page), "--model", str(model_dir), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dsocr generate: error:") and message in err


def test_missing_model_dir_is_a_clear_error(page, tmp_path, capsys):
    assert main(["generate", str(page), "--model", str(tmp_path / "nothing-here")]) == 1
    assert "no such directory" in capsys.readouterr().err
