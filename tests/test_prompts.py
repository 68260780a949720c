"""Prompt presets and prompt ids in the official plain format (spec §3, §6)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsocr.errors import DsocrError
from dsocr.processing.prompts import PRESETS, build_prompt_ids, left_pad, resolve_prompt
from dsocr.processing.tokenizer import load_tokenizer

MARKDOWN_TAIL = [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_presets_are_the_official_prompts():
    assert PRESETS == {
        "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
        "ocr": "<image>\n<|grounding|>OCR this image.",
        "free": "<image>\nFree OCR.",
        "figure": "<image>\nParse the figure.",
        "describe": "<image>\nDescribe this image in detail.",
        "locate": "<image>\nLocate <|ref|>{ref}<|/ref|> in the image.",
    }


def test_resolve_prompt():
    assert resolve_prompt("markdown") == PRESETS["markdown"]
    assert resolve_prompt("locate", ref="the {red} car") == "<image>\nLocate <|ref|>the {red} car<|/ref|> in the image."
    assert resolve_prompt("<image>\nRead the title.") == "<image>\nRead the title."
    assert resolve_prompt("Hello", allow_no_image=True) == "Hello"
    with pytest.raises(DsocrError, match="ref"):
        resolve_prompt("locate")
    with pytest.raises(DsocrError, match="ref"):
        resolve_prompt("free", ref="x")
    with pytest.raises(DsocrError, match="ref"):
        resolve_prompt("<image>\ncustom", ref="x")
    with pytest.raises(DsocrError, match="<image>"):
        resolve_prompt("markdwon")  # a typo of a preset name is no prompt for an image


@pytest.mark.parametrize("n", [273, 903, 1])
def test_hf_prefill_for_the_markdown_prompt(tok, n):
    # The README/HF-script prompt has a trailing space; HF infer strips it (spec §6).
    readme = "<image>\n<|grounding|>Convert the document to markdown. "
    expected = [0] + [128815] * n + MARKDOWN_TAIL
    assert build_prompt_ids(tok, readme, [n], strip=True) == expected
    assert build_prompt_ids(tok, PRESETS["markdown"], [n]) == expected  # vLLM config prompt: verbatim
    assert build_prompt_ids(tok, readme, [n]) == expected + [223]


def test_text_around_and_between_images(tok):
    prompt = "First: <image> then <image>\nCompare."
    ids = build_prompt_ids(tok, prompt, [3, 2])
    assert ids == [0, *tok.encode("First: "), *[128815] * 3, *tok.encode(" then "), *[128815] * 2, *tok.encode("\nCompare.")]
    assert build_prompt_ids(tok, "<image><image>", [1, 2]) == [0, 128815, 128815, 128815]
    assert build_prompt_ids(tok, "Hi", []) == [0, *tok.encode("Hi")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.text(max_size=15).filter(lambda t: "<image>" not in t), min_size=1, max_size=4), data=st.data())
def test_same_as_tokenizing_the_expanded_prompt(tok, pieces, data):
    # Splitting at <image> first (official tokenize_with_images) equals tokenizing the whole text:
    # <image> is an added token, so the BPE never merges across it.
    counts = [data.draw(st.integers(1, 5)) for _ in pieces[1:]]
    prompt = "<image>".join(pieces)
    expanded = pieces[0] + "".join("<image>" * c + p for c, p in zip(counts, pieces[1:]))
    assert build_prompt_ids(tok, prompt, counts) == [0, *tok.encode(expanded)]


def test_image_count_must_match(tok):
    with pytest.raises(DsocrError, match="1 <image> but 2"):
        build_prompt_ids(tok, PRESETS["free"], [273, 273])
    with pytest.raises(DsocrError, match="0 <image> but 1"):
        build_prompt_ids(tok, "no image", [273])
    with pytest.raises(DsocrError, match="placeholder"):
        build_prompt_ids(tok, PRESETS["free"], [0])


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=2)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8], [2, 2, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(DsocrError):
        left_pad([], pad_id=2)
