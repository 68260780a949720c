"""Logits processors and the next-token sampler (spec §6 "Generation", §4 table, §10 item 7).

- `NoRepeatNGram`: the official vLLM scripts' windowed processor
  (`process/ngram_norepeat.py`, `NoRepeatNGramLogitsProcessor`), dsocr's default.
- `HFNoRepeatNGram`: transformers' `no_repeat_ngram_size`, used by HF `infer` (whole sequence).
- `sample_next`: greedy at temperature 0 (both official paths), else temperature + top-p sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dsocr.errors import DsocrError

TABLE_CELL_IDS = frozenset({128821, 128822})
"""`<td>`, `</td>`: the whitelist the official vLLM scripts pass to the no-repeat processor."""


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, list):
        return ids  # read only, never copied: called once per generated token
    return ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]


def _banned_by_prefix(ids: list[int], n: int, first_start: int) -> set[int]:
    """Ids that would complete an n-gram whose first n-1 ids equal the last n-1 ids of `ids`.

    Every start i from `first_start` to `len(ids) - n` (inclusive) is checked; the match bans
    `ids[i + n - 1]`. With n == 1 the prefix is empty, so every id from `first_start` on is banned.
    Only the starts whose n-gram head ends in the last id are compared (found with `list.index`),
    which keeps a whole-sequence scan of 8k ids cheap.
    """
    length = len(ids)
    if n == 1:
        return set(ids[first_start:])
    prefix = ids[length - n + 1 :]
    last = prefix[-1]
    banned: set[int] = set()
    # The head of the n-gram starting at i ends at j = i + n - 2: j in [first_start + n - 2, length - 2].
    j = first_start + n - 2
    while True:
        try:
            j = ids.index(last, j, length - 1)
        except ValueError:
            return banned
        i = j - n + 2
        if ids[i : j + 1] == prefix:
            banned.add(ids[j + 1])
        j += 1


def _ban(logits: torch.Tensor, banned: set[int]) -> torch.Tensor:
    """Set the banned ids' logits to -inf in place; ids beyond the logits are ignored."""
    ids = [i for i in banned if 0 <= i < logits.shape[-1]]
    if ids:
        logits[torch.tensor(ids, dtype=torch.long, device=logits.device)] = float("-inf")
    return logits


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DsocrError(f"{name} must be a positive integer, got {value!r}")
    return value


class NoRepeatNGram:
    """The official vLLM `NoRepeatNGramLogitsProcessor` (DeepSeek-OCR-vllm/process/ngram_norepeat.py).

    Called with the GENERATED ids only (vLLM V0 passes a two-argument processor the output ids,
    prompt excluded). With L ids: nothing while L < n; otherwise, for every start i from
    max(0, L - window) to L - n inclusive, if ids[i:i+n-1] equals the last n-1 ids, ids[i+n-1]
    is banned (logit -inf). Whitelisted ids are never banned. The official settings are
    (n 30, window 90) for images, (20, 50) for PDF pages, (40, 90) for the eval batch; its
    default window is 100 and the scripts whitelist `<td>`/`</td>`.

    n == 1 bans nothing: the official code takes the prefix as `ids[-(n-1):]`, which for n == 1
    is the whole list and never equals a 0-long n-gram head.
    """

    def __init__(self, ngram_size: int, window_size: int, whitelist: frozenset[int] | set[int] = TABLE_CELL_IDS) -> None:
        self.ngram_size = _check_positive("ngram_size", ngram_size)
        self.window_size = _check_positive("window_size", window_size)
        self.whitelist = frozenset(whitelist)

    def banned_tokens(self, generated_ids: Sequence[int] | torch.Tensor) -> set[int]:
        """The ids the next token may not be."""
        ids = _as_list(generated_ids)
        n = self.ngram_size
        if len(ids) < n or n == 1 or self.window_size < n:  # window < n leaves no start to check
            return set()
        window = ids[max(0, len(ids) - self.window_size) :]  # holds the prefix too: window >= n
        return _banned_by_prefix(window, n, 0) - self.whitelist

    def __call__(self, generated_ids: Sequence[int] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Ban in place in `logits` `[V]`; returns it."""
        return _ban(logits, self.banned_tokens(generated_ids))

    def apply_batch(self, generated: Sequence[Sequence[int] | torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Row b of `logits` `[B, V]` is processed with `generated[b]`; in place, returns `logits`."""
        if len(generated) != logits.shape[0]:
            raise DsocrError(f"{len(generated)} id lists for {logits.shape[0]} rows of logits")
        for row, ids in enumerate(generated):
            self(ids, logits[row])
        return logits


class HFNoRepeatNGram:
    """transformers' `NoRepeatNGramLogitsProcessor` (`generate(no_repeat_ngram_size=n)`), as HF `infer` uses it.

    Sees the WHOLE sequence (BOS, image placeholders, prompt, generated ids), no window, no
    whitelist: with L ids and L >= n, every id that followed an earlier occurrence of the last
    n-1 ids is banned. For n == 1 every id already in the sequence is banned.
    """

    def __init__(self, ngram_size: int) -> None:
        self.ngram_size = _check_positive("ngram_size", ngram_size)

    def banned_tokens(self, input_ids: Sequence[int] | torch.Tensor) -> set[int]:
        ids = _as_list(input_ids)
        if len(ids) < self.ngram_size:
            return set()
        return _banned_by_prefix(ids, self.ngram_size, 0)

    def __call__(self, input_ids: Sequence[int] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Ban in place in `logits` `[V]`; returns it."""
        return _ban(logits, self.banned_tokens(input_ids))

    def apply_batch(self, input_ids: Sequence[Sequence[int]] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Row b of `logits` `[B, V]` is processed with `input_ids[b]`; in place, returns `logits`."""
        if len(input_ids) != logits.shape[0]:
            raise DsocrError(f"{len(input_ids)} id lists for {logits.shape[0]} rows of logits")
        for row, ids in enumerate(input_ids):
            self(ids, logits[row])
        return logits


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask `[B, V]` of the ids nucleus filtering REMOVES.

    As transformers' `TopPLogitsWarper` (and vLLM's sampler): sort ascending, drop the ids whose
    cumulative probability is <= 1 - top_p, always keep the most probable id.
    """
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1] = False
    return remove_sorted.scatter(-1, order, remove_sorted)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids `[B]` from `logits` `[B, V]`.

    temperature == 0: greedy, `argmax` (the first maximum on ties), as both official paths run.
    Otherwise: softmax(logits / temperature) restricted to the top-p nucleus, then `torch.multinomial`.
    """
    if logits.ndim != 2:
        raise DsocrError(f"sample_next expects logits [B, V], got shape {tuple(logits.shape)}")
    if temperature < 0:
        raise DsocrError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise DsocrError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        scores = scores.masked_fill(top_p_mask(scores, top_p), float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
