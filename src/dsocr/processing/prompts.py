"""Prompts and prompt token ids (spec §6 "Template", "Standard prompts").

The official inference uses the PLAIN format: no role tags, no system prompt, no `<|Assistant|>`.
The ids are `[BOS] + enc(text before the 1st <image>) + N1 x <image> + enc(text between) + ...
+ enc(text after)`, each piece encoded with `add_special_tokens=False` (vLLM
`tokenize_with_images`, HF `infer`). HF `infer` also `.strip()`s the prompt, which drops the
trailing space of the README's markdown prompt; the vLLM config prompt has none to drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from dsocr.errors import DsocrError

IMAGE_TOKEN = "<image>"

PRESETS: dict[str, str] = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
    "locate": "<image>\nLocate <|ref|>{ref}<|/ref|> in the image.",
}
"""The official standard prompts (config.py / README); `locate` is a template for `ref`."""


class _Tokenizer(Protocol):
    bos_id: int
    image_id: int

    def encode(self, text: str) -> list[int]: ...


def resolve_prompt(preset_or_text: str, ref: str | None = None, *, allow_no_image: bool = False) -> str:
    """A preset's prompt (`locate` filled with `ref`), or `preset_or_text` itself when it is no preset name.

    A prompt without `<image>` is refused unless `allow_no_image`: the model would never see the image.
    """
    if preset_or_text in PRESETS:
        prompt = PRESETS[preset_or_text]
        if "{ref}" in prompt:
            if not ref:
                raise DsocrError(f"the {preset_or_text!r} prompt needs the text to locate (ref)")
            prompt = prompt.replace("{ref}", ref)
        elif ref is not None:
            raise DsocrError(f"ref is only used by the 'locate' prompt, not {preset_or_text!r}")
    else:
        if ref is not None:
            raise DsocrError("ref is only used by the 'locate' prompt; write it into a custom prompt directly")
        prompt = preset_or_text
    if IMAGE_TOKEN not in prompt and not allow_no_image:
        raise DsocrError(
            f"the prompt {prompt!r} has no {IMAGE_TOKEN}: it is neither a preset "
            f"({', '.join(PRESETS)}) nor a prompt that shows the image to the model"
        )
    return prompt


def build_prompt_ids(
    tokenizer: _Tokenizer, prompt: str, image_token_counts: Sequence[int], *, strip: bool = False
) -> list[int]:
    """Prompt ids in the official plain format, each `<image>` expanded to its placeholder count.

    `image_token_counts[k]` placeholders (id 128815) replace the k-th `<image>`; the counts come
    from `dsocr.processing.num_image_tokens`. `strip=True` reproduces HF `infer`'s `.strip()`.
    """
    if strip:
        prompt = prompt.strip()
    pieces = prompt.split(IMAGE_TOKEN)
    if len(pieces) - 1 != len(image_token_counts):
        raise DsocrError(
            f"the prompt has {len(pieces) - 1} {IMAGE_TOKEN} but {len(image_token_counts)} image(s) were given"
        )
    ids = [tokenizer.bos_id]
    for piece, count in zip(pieces, image_token_counts):
        if count < 1:
            raise DsocrError(f"an image needs at least one placeholder token, got {count}")
        ids += tokenizer.encode(piece) if piece else []
        ids += [tokenizer.image_id] * count
    if pieces[-1]:
        ids += tokenizer.encode(pieces[-1])
    return ids


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to one length (vLLM processor's padding side): `(ids, attention_mask)`, both `[B, L]` int64."""
    if not batch:
        raise DsocrError("left_pad: empty batch")
    length = max(len(seq) for seq in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, seq in enumerate(batch):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids, mask
