"""Generation against transformers' unlimited_ocr `generate` on the same random weights: greedy
tokens identical (with and without the whole-sequence no-repeat guard), batches with left padding
equal to single prompts, streaming, sampling reproducible by seed."""

from __future__ import annotations

import pytest
import torch

from dsocr.inference.generate import GenerationSettings, generate
from dsocr.model.deepseek_ocr import DeepSeekOCRForCausalLM
from oracles import official_model_dir, unlimited_ocr_model

IMAGE = 128815
NEW = 50


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    oracle = unlimited_ocr_model(seed=6)
    directory = official_model_dir(oracle, tmp_path_factory.mktemp("official"))
    return oracle, DeepSeekOCRForCausalLM.from_pretrained(directory)


def _prompt(n_image: int, seed: int, text: int = 6) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [0, *torch.randint(3, 128000, (3,), generator=gen).tolist(), *[IMAGE] * n_image,
            *torch.randint(3, 128000, (text,), generator=gen).tolist()]


def _pixels(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _oracle_greedy(oracle, prompt, pixels, **kwargs) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = oracle.generate(
            input_ids=ids, pixel_values=pixels, max_new_tokens=NEW, do_sample=False, eos_token_id=1,
            pad_token_id=2, **kwargs,
        )
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(1)] if 1 in new else new


@pytest.mark.parametrize("no_repeat", [None, 3])
def test_greedy_tokens_equal_the_oracle(pair, no_repeat):
    oracle, ours = pair
    prompt, pixels = _prompt(73, seed=1), _pixels(seed=2)
    expected = _oracle_greedy(oracle, prompt, pixels, no_repeat_ngram_size=no_repeat)
    settings = GenerationSettings(max_new_tokens=NEW, ngram_size=no_repeat, hf_no_repeat=True)
    with torch.inference_mode():
        result = generate(ours, [prompt], [ours.model(pixels)[0]], settings)[0]
    assert len(expected) == NEW  # random weights rarely emit EOS: the whole 50 tokens are compared
    assert result.ids == expected


def test_batch_with_left_padding_equals_single_prompts(pair):
    _, ours = pair
    prompts = [_prompt(73, seed=3, text=2), _prompt(73, seed=4, text=9)]
    with torch.inference_mode():
        tokens = [ours.model(_pixels(seed=5))[0], ours.model(_pixels(seed=6))[0]]
        settings = GenerationSettings(max_new_tokens=20, ngram_size=None)
        batched = generate(ours, prompts, tokens, settings)
        single = [generate(ours, [p], [t], settings)[0] for p, t in zip(prompts, tokens)]
    assert [r.ids for r in batched] == [r.ids for r in single]


def test_streaming_reports_every_token_and_limits_hold(pair):
    _, ours = pair
    seen: list[tuple[int, int]] = []
    prompt = _prompt(73, seed=7)
    with torch.inference_mode():
        tokens = ours.model(_pixels(seed=8))[0]
        out = generate(ours, [prompt], [tokens], GenerationSettings(max_new_tokens=12, ngram_size=None),
                       on_token=lambda b, t: seen.append((b, t)))[0]
        capped = generate(ours, [prompt], [tokens], GenerationSettings(max_new_tokens=100, max_length=len(prompt) + 5))[0]
    assert [t for _, t in seen] == out.ids and len(out.ids) == 12 and not out.finished
    assert len(capped.ids) == 5


def test_eos_stops_and_is_not_returned(pair):
    _, ours = pair
    prompt = _prompt(73, seed=9)
    with torch.inference_mode():
        tokens = ours.model(_pixels(seed=10))[0]
        first = generate(ours, [prompt], [tokens], GenerationSettings(max_new_tokens=10, ngram_size=None))[0].ids
        # declare the first greedy token not seen before position k >= 1 to be EOS
        k = next(i for i in range(1, len(first)) if first[i] not in first[:i])
        out = generate(ours, [prompt], [tokens], GenerationSettings(max_new_tokens=10, ngram_size=None, eos_token_id=first[k]))[0]
    assert out.finished and out.ids == first[:k]


def test_sampling_is_reproducible_by_seed(pair):
    _, ours = pair
    prompt = _prompt(73, seed=11)
    with torch.inference_mode():
        tokens = ours.model(_pixels(seed=12))[0]
        runs = [generate(ours, [prompt], [tokens], GenerationSettings(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=s))[0].ids
                for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
