"""Logits processors and sampling against restatements of the official code and transformers (spec §6)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr.errors import DsocrError
from dsocr.inference.logits import TABLE_CELL_IDS, HFNoRepeatNGram, NoRepeatNGram, sample_next, top_p_mask

V = 12
NEG = float("-inf")


def brute_force_banned(ids: list[int], n: int, window: int, whitelist: frozenset[int]) -> set[int]:
    """The official vLLM processor restated literally (DeepSeek-OCR-vllm/process/ngram_norepeat.py):
    prefix = tuple(ids[-(n-1):]), every n-gram starting in [max(0, L-window), L-n] whose head
    equals the prefix bans its last id, minus the whitelist. Note ids[-0:] is the whole list."""
    if len(ids) < n:
        return set()
    prefix = tuple(ids[-(n - 1):])
    banned = set()
    for i in range(max(0, len(ids) - window), len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram[:-1] == prefix:
            banned.add(gram[-1])
    return banned - whitelist


def expected_logits(logits: torch.Tensor, banned: set[int]) -> torch.Tensor:
    out = logits.clone()
    for t in banned:
        out[t] = NEG
    return out


ID_LISTS = st.lists(st.integers(0, V - 1), max_size=60) | st.lists(st.integers(0, 2), max_size=60)


@settings(max_examples=500, deadline=None)
@given(ids=ID_LISTS, n=st.integers(1, 8), window=st.integers(1, 70), wl=st.frozensets(st.integers(0, V - 1), max_size=3))
def test_no_repeat_matches_official_restatement(ids, n, window, wl):
    proc = NoRepeatNGram(n, window, whitelist=wl)
    banned = brute_force_banned(ids, n, window, wl)
    assert proc.banned_tokens(ids) == banned
    logits = torch.randn(V, generator=torch.Generator().manual_seed(len(ids)))
    assert torch.equal(proc(list(ids), logits.clone()), expected_logits(logits, banned))
    assert proc.banned_tokens(torch.tensor(ids, dtype=torch.long)) == banned


def test_no_repeat_long_random_sequences():
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 400))]
        n, window = rng.choice([(30, 90), (20, 50), (40, 90), (3, 10), (2, 5)])
        if rng.random() < 0.5:  # make the tail repeat an earlier stretch
            ids += ids[: rng.randrange(0, 60)]
        assert NoRepeatNGram(n, window).banned_tokens(ids) == brute_force_banned(ids, n, window, TABLE_CELL_IDS)


def test_no_repeat_basic_and_whitelist():
    proc = NoRepeatNGram(3, 100, whitelist=frozenset())
    assert proc.banned_tokens([5, 6, 7, 5, 6]) == {7}
    assert proc.banned_tokens([5, 6]) == set()  # L < n
    assert proc.banned_tokens([5, 6, 5]) == set()  # (6, 5) was never followed by anything
    td, end_td = 128821, 128822
    table = [td, 1, end_td, td, 1, end_td, td, 1]
    assert NoRepeatNGram(3, 100).banned_tokens(table) == set()  # </td> whitelisted by default
    assert NoRepeatNGram(3, 100, whitelist=frozenset()).banned_tokens(table) == {end_td}
    assert NoRepeatNGram(2, 100).banned_tokens([4, td, 1, 4]) == set()  # <td> after 4 stays allowed
    assert NoRepeatNGram(2, 100).banned_tokens([td, 4, 1, td, 5, td]) == {4, 5}  # only as the banned id
    assert TABLE_CELL_IDS == {128821, 128822}


def test_no_repeat_window_edges():
    ids = [1, 2, 3, 9, 9, 9, 9, 1, 2]  # L = 9; the n-gram (1, 2, 3) starts at 0
    assert NoRepeatNGram(3, 9).banned_tokens(ids) == {3}  # start 0 = L - window: inside
    assert NoRepeatNGram(3, 8).banned_tokens(ids) == set()  # start 0 < L - window: outside
    assert NoRepeatNGram(3, 2).banned_tokens(ids) == set()  # window < n: no start left
    assert NoRepeatNGram(1, 100).banned_tokens(ids) == set()  # official n == 1 quirk: nothing banned
    # The n-gram may end right at the current position (start L - n).
    assert NoRepeatNGram(2, 100).banned_tokens([7, 7]) == {7}


def test_no_repeat_in_place_and_batched():
    proc = NoRepeatNGram(2, 10, whitelist=frozenset())
    logits = torch.zeros(2, V)
    out = proc.apply_batch([[1, 2, 1], [3, 4]], logits)
    assert out is logits
    assert logits[0, 2] == NEG and torch.isfinite(logits[1]).all() and torch.isfinite(logits[0, [0, 1, 3]]).all()
    big = NoRepeatNGram(2, 10, whitelist=frozenset())([1, 100, 1], torch.zeros(V))  # id past the logits: ignored
    assert torch.isfinite(big).all()
    with pytest.raises(DsocrError):
        proc.apply_batch([[1]], logits)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(DsocrError):
            NoRepeatNGram(bad, 10)
        with pytest.raises(DsocrError):
            NoRepeatNGram(3, bad)


# ---- transformers' no_repeat_ngram_size -------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(rows=st.integers(1, 3), length=st.integers(1, 40), n=st.integers(1, 6), vocab=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_hf_no_repeat_matches_transformers(rows, length, n, vocab, seed):
    from transformers import NoRepeatNGramLogitsProcessor

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    logits = torch.randn(rows, V, generator=gen)
    expected = NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    assert torch.equal(HFNoRepeatNGram(n).apply_batch(ids, logits.clone()), expected)
    assert torch.equal(HFNoRepeatNGram(n)(ids[0].tolist(), logits[0].clone()), expected[0])


def test_hf_no_repeat_differs_from_vllm_as_the_spec_says():
    prompt = [0, 128815, 128815, 5, 6]
    generated = [5, 7, 8, 5]
    # HF sees the prompt: (5 -> 6) from the prompt and (5 -> 7) are banned. vLLM sees only generated ids.
    assert HFNoRepeatNGram(2).banned_tokens(prompt + generated) == {6, 7}
    assert NoRepeatNGram(2, 100).banned_tokens(generated) == {7}
    # HF has no whitelist and no window.
    far = [128821, 1] + [9] * 200 + [128821]
    assert HFNoRepeatNGram(2).banned_tokens(far) == {1}
    assert NoRepeatNGram(2, 90, whitelist=frozenset()).banned_tokens(far) == set()
    assert HFNoRepeatNGram(1).banned_tokens([4, 5, 4]) == {4, 5}  # transformers' n == 1: every seen id


# ---- sampling ---------------------------------------------------------------------------------------


def test_greedy_is_argmax_first_max():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 5.0]])
    assert sample_next(logits).tolist() == [1, 0]
    bf16 = torch.randn(4, 50).to(torch.bfloat16)
    assert torch.equal(sample_next(bf16), bf16.argmax(-1))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**16), top_p=st.floats(0.01, 1.0), temperature=st.floats(0.1, 3.0), rows=st.integers(1, 4))
def test_top_p_keeps_the_same_set_as_transformers(seed, top_p, temperature, rows):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(rows, 40, generator=torch.Generator().manual_seed(seed)) * 3
    scaled = TemperatureLogitsWarper(temperature)(None, logits.clone())
    expected_removed = torch.isinf(TopPLogitsWarper(top_p)(None, scaled))
    assert torch.equal(top_p_mask(logits / temperature, top_p), expected_removed)


def test_sampling_stays_in_the_nucleus_and_follows_the_generator():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    kept = ~top_p_mask(logits / 0.7, 0.9)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, temperature=0.7, top_p=0.9, generator=g) for _ in range(300)])
    for row in range(2):
        assert set(draws[:, row].tolist()) <= set(kept[row].nonzero().flatten().tolist())
    assert set(draws[:, 0].tolist()) == {0, 1}  # both nucleus members do come up
    a = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # A banned id (-inf) is never drawn.
    banned = torch.zeros(1, 5)
    banned[0, :4] = NEG
    assert sample_next(banned, temperature=2.0).tolist() == [4]


def test_sample_next_rejects_bad_arguments():
    with pytest.raises(DsocrError):
        sample_next(torch.zeros(5))
    with pytest.raises(DsocrError):
        sample_next(torch.zeros(1, 5), temperature=-1.0)
    for top_p in (0.0, 1.5):
        with pytest.raises(DsocrError):
            sample_next(torch.zeros(1, 5), temperature=1.0, top_p=top_p)
