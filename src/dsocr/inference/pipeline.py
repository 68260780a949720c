"""`DeepSeekOCR`: the model, its tokenizer and the official pre-processing behind one call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DsocrError
from .generate import GenerationSettings, generate

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"


@dataclass
class OCRResult:
    text: str  # raw model output, special tokens (grounding tags, table cells) kept, EOS dropped
    token_ids: list[int]
    finished: bool  # False: stopped by a length limit without EOS (often a repetition loop)
    prompt_tokens: int
    image_tokens: int
    grids: list[tuple[int, int] | None] = field(default_factory=list)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """`None`/"auto": bfloat16 on CUDA, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise DsocrError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


class DeepSeekOCR:
    """DeepSeek-OCR end to end: images + prompt -> text.

    >>> ocr = DeepSeekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    >>> print(ocr.generate("page.png", prompt="markdown", mode="gundam")[0].text)
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_MODEL,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        hub: str = "hf",
        cache_dir: str | Path | None = None,
        pack: bool = True,
    ) -> "DeepSeekOCR":
        """A model directory, or a hub id downloaded once into the cache. On CPU the language
        model's linear layers are packed for oneDNN (`pack=False` keeps plain `nn.Linear`s)."""
        from ..model.deepseek_ocr import DeepSeekOCRForCausalLM
        from ..processing.tokenizer import load_tokenizer
        from ..weights.hub import resolve_model_dir

        directory = resolve_model_dir(str(source), hub=hub, cache_dir=cache_dir)
        model = DeepSeekOCRForCausalLM.from_pretrained(directory, dtype=resolve_dtype(dtype, device), device=device)
        if pack:
            model.pack_for_inference()
        return cls(model, load_tokenizer(directory))

    def generate(
        self,
        images,
        prompt: str = "markdown",
        mode: str = "gundam",
        *,
        max_tiles: int | None = None,
        preprocessing: str = "vllm",
        settings: GenerationSettings | None = None,
        stream: Callable[[int, str], None] | None = None,
        ref: str | None = None,
    ) -> list[OCRResult]:
        """Run the model on a batch of prompts.

        `images`: one image (PIL image or path) -> one prompt; a list of images -> one prompt
        each; a list of lists -> several images per prompt (the prompt then has as many
        `<image>` as each inner list). `prompt`: a preset name (markdown, ocr, free, figure,
        describe, locate — `ref` names what to locate) or literal text with `<image>`.
        `stream(sample, text)` receives decoded text as it is produced.
        """
        from ..processing import get_mode, load_image, prepare_image
        from ..processing.prompts import build_prompt_ids, resolve_prompt
        from ..processing.tokenizer import StreamDecoder

        mode_obj = get_mode(mode)
        groups = _group_images(images)
        text = resolve_prompt(prompt, ref=ref)
        prepared = [[prepare_image(load_image(img), mode_obj, max_tiles=max_tiles, path=preprocessing) for img in group] for group in groups]
        flat = [p for group in prepared for p in group]
        sequences = iter(self._encode(flat))
        prompts, image_tokens, grids = [], [], []
        for group in prepared:
            tokens = [next(sequences) for _ in group]
            prompts.append(build_prompt_ids(self.tokenizer, text, [t.shape[0] for t in tokens], strip=preprocessing == "hf"))
            image_tokens.append(torch.cat(tokens) if tokens else None)
            grids.append([p.grid for p in group])

        decoders = [StreamDecoder(self.tokenizer) for _ in prompts]
        on_token = None
        if stream is not None:
            def on_token(sample: int, token: int) -> None:
                piece = decoders[sample].feed(token)
                if piece:
                    stream(sample, piece)

        outputs = generate(self.model, prompts, image_tokens, settings, on_token=on_token, pad_id=self.tokenizer.pad_id)
        if stream is not None:
            for sample, decoder in enumerate(decoders):
                tail = decoder.flush()
                if tail:
                    stream(sample, tail)
        results = []
        for out, tokens, grid in zip(outputs, image_tokens, grids):
            results.append(OCRResult(
                text=self.tokenizer.decode(out.ids), token_ids=out.ids, finished=out.finished,
                prompt_tokens=out.prompt_tokens, image_tokens=0 if tokens is None else tokens.shape[0], grids=grid,
            ))
        return results


    @torch.inference_mode()
    def _encode(self, prepared: list) -> list[torch.Tensor]:
        """All images of the batch through DeepEncoder in one forward per view size."""
        out: list[torch.Tensor | None] = [None] * len(prepared)
        by_size: dict[int, list[int]] = {}
        for i, p in enumerate(prepared):
            by_size.setdefault(p.global_view.shape[-1], []).append(i)
        for indices in by_size.values():
            views = torch.stack([prepared[i].global_view for i in indices])
            sequences = self.model.model(views, [prepared[i].tiles for i in indices], [prepared[i].grid for i in indices])
            for i, seq in zip(indices, sequences):
                out[i] = seq
        return out


def _group_images(images) -> list[list]:
    if images is None:
        return [[]]
    if isinstance(images, (str, Path)) or hasattr(images, "size"):
        return [[images]]
    groups = []
    for item in images:
        groups.append(list(item) if isinstance(item, (list, tuple)) else [item])
    if not groups:
        raise DsocrError("no images given")
    return groups
