"""Token generation with a KV cache: greedy (the official default) or sampling, the official
no-repeat n-gram guard, stop at EOS or a length limit, tokens reported as they are produced."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..processing.prompts import left_pad
from .logits import HFNoRepeatNGram, NoRepeatNGram, sample_next


@dataclass
class GenerationSettings:
    """Defaults follow the official vLLM image script (spec §6, §10): greedy, no-repeat n-gram 30
    over a window of 90 generated tokens with `<td>`/`</td>` whitelisted, 8192 positions in all."""

    max_new_tokens: int = 8192
    max_length: int | None = 8192  # prompt (image placeholders included) + generated; None: no cap
    temperature: float = 0.0
    top_p: float = 1.0
    ngram_size: int | None = 30  # None or 0: no guard
    ngram_window: int = 90
    hf_no_repeat: bool = False  # transformers' whole-sequence no_repeat_ngram_size (HF infer) instead
    eos_token_id: int = 1
    seed: int | None = None


@dataclass
class Generated:
    ids: list[int]  # generated ids, EOS excluded
    finished: bool  # True when EOS ended it; False when a length limit did (e.g. a repetition loop)
    prompt_tokens: int


@torch.inference_mode()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    image_tokens: Sequence[torch.Tensor | None] | None = None,
    settings: GenerationSettings | None = None,
    on_token: Callable[[int, int], None] | None = None,
    pad_id: int = 2,
) -> list[Generated]:
    """Generate for a batch of prompts (token ids with `<image>` placeholders) and their image
    tokens. `on_token(sample, token_id)` is called for every new token (EOS excluded)."""
    settings = settings or GenerationSettings()
    batch = len(prompts)
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    prompt_len = ids.shape[1]
    budget = settings.max_new_tokens
    if settings.max_length is not None:
        budget = min(budget, settings.max_length - max(len(p) for p in prompts))
    budget = max(budget, 0)
    padded = bool((mask == 0).any())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = model.new_cache(batch, prompt_len + budget)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.seed is not None else None
    guard = _guard(settings)

    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    if budget == 0:
        return [Generated(g, f, len(p)) for g, f, p in zip(generated, finished, prompts)]

    logits = model(ids, image_tokens, positions=positions, padding=mask if padded else None, cache=cache, last_only=True)[:, -1]
    full = mask
    for step in range(budget):
        logits = logits.float()
        for b in range(batch):
            if guard is not None and not finished[b]:
                history = generated[b] if not settings.hf_no_repeat else list(prompts[b]) + generated[b]
                guard(history, logits[b])
        next_ids = sample_next(logits, settings.temperature, settings.top_p, generator).tolist()
        for b, token in enumerate(next_ids):
            if finished[b]:
                continue
            if token == settings.eos_token_id:
                finished[b] = True
                continue
            generated[b].append(token)
            if on_token is not None:
                on_token(b, token)
        if all(finished) or step == budget - 1:
            break
        feed = torch.tensor([[settings.eos_token_id if finished[b] else next_ids[b]] for b in range(batch)], device=ids.device)
        positions = positions[:, -1:] + 1
        full = torch.cat([full, torch.ones(batch, 1, dtype=full.dtype, device=full.device)], dim=1)
        logits = model(feed, positions=positions, padding=full if padded else None, cache=cache, last_only=True)[:, -1]
    return [Generated(g, f, len(p)) for g, f, p in zip(generated, finished, prompts)]


def _guard(settings: GenerationSettings):
    if not settings.ngram_size:
        return None
    if settings.hf_no_repeat:
        return HFNoRepeatNGram(settings.ngram_size)
    return NoRepeatNGram(settings.ngram_size, settings.ngram_window)
