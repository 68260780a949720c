"""The whole model (DeepEncoder + DeepSeek-3B-MoE) against transformers' unlimited_ocr on the same
random weights in an official checkpoint directory: logits (float32, rel. error <= 1e-5), cached
vs. uncached decoding, greedy tokens."""

from __future__ import annotations

import pytest
import torch

from dsocr import DsocrError
from dsocr.model.deepseek_ocr import DeepSeekOCRForCausalLM
from oracles import official_model_dir, relative_error, unlimited_ocr_model

TOL = 1e-5
IMAGE = 128815


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    oracle = unlimited_ocr_model(seed=4)
    directory = official_model_dir(oracle, tmp_path_factory.mktemp("official"))
    return oracle, DeepSeekOCRForCausalLM.from_pretrained(directory), directory


def _prompt(n_image: int, seed: int, vocab: int = 1000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    before, after = torch.randint(3, vocab, (3,), generator=gen), torch.randint(3, vocab, (6,), generator=gen)
    return torch.cat([torch.tensor([0]), before, torch.full((n_image,), IMAGE), after])[None]


def _pixels(size: int, seed: int, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_loads_every_official_tensor(pair):
    oracle, ours, directory = pair
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert set(ours.state_dict()) == names


@pytest.mark.parametrize("size", [512, 1024])
def test_logits_match_unlimited_ocr(pair, size):
    oracle, ours, _ = pair
    pixels = _pixels(size, seed=size)
    g = size // 64
    ids = _prompt(g * (g + 1) + 1, seed=1)
    # the oracle's text model is "reference sliding window": with sliding_window >= length it is full attention
    assert oracle.config.text_config.sliding_window >= ids.shape[1]
    with torch.inference_mode():
        expected = oracle(input_ids=ids, pixel_values=pixels).logits
        tokens = ours.model(pixels)
        actual = ours(ids, tokens)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOL


def test_tiled_image_logits_match_unlimited_ocr(pair):
    oracle, ours, _ = pair
    global_view, tiles = _pixels(1024, seed=3), _pixels(640, seed=4, n=2)
    ids = _prompt(273 + 10 * 1 * (10 * 2 + 1), seed=2)
    with torch.inference_mode():
        expected = oracle(
            input_ids=ids, pixel_values=global_view, pixel_values_local=tiles, num_local_patches=[2], patches_grid=[[2, 1]]
        ).logits
        actual = ours(ids, ours.model(global_view, [tiles], [(2, 1)]))
    assert relative_error(actual, expected) <= TOL


def test_cached_decoding_equals_uncached(pair):
    _, ours, _ = pair
    pixels = _pixels(512, seed=5)
    ids = _prompt(73, seed=6)
    extra = torch.randint(3, 1000, (1, 5), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        tokens = ours.model(pixels)
        full = ours(torch.cat([ids, extra], 1), tokens)
        cache = ours.new_cache(1, ids.shape[1] + extra.shape[1])
        steps = [ours(ids, tokens, cache=cache)[:, -1]]
        for i in range(extra.shape[1]):
            steps.append(ours(extra[:, i : i + 1], cache=cache)[:, -1])
    incremental = torch.stack(steps[:-1], 1)
    assert relative_error(incremental, full[:, ids.shape[1] - 1 : -1]) <= TOL


def test_image_count_mismatch_is_a_clear_error(pair):
    _, ours, _ = pair
    with torch.inference_mode():
        tokens = ours.model(_pixels(512, seed=8))
        with pytest.raises(DsocrError, match="72 image placeholders but its images give 73 tokens"):
            ours(_prompt(72, seed=9), tokens)


def test_save_pretrained_round_trip(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path)
    again = DeepSeekOCRForCausalLM.from_pretrained(tmp_path)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert again.config == ours.config
