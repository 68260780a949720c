"""Run DeepSeek-OCR over a labelled set and score it: the engine behind `dsocr eval`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import DsocrError
from ..files import atomic_path
from .metrics import EvalRecord, Normalization, evaluate_pair, nominal_vision_tokens

FORMATS = ("manifest", "fox", "omnidocbench")


def load_samples(path: str | Path, fmt: str = "auto", image_dir: str | Path | None = None) -> list:
    """Samples from a JSONL manifest (`.jsonl`), a Fox or an OmniDocBench annotation file."""
    from ..data.manifest import read_manifest
    from .benchmarks import load_fox, load_omnidocbench

    path = Path(path)
    if fmt == "auto":
        fmt = "manifest" if path.suffix == ".jsonl" else _sniff_json(path)
    if fmt == "manifest":
        return read_manifest(path)
    if fmt == "fox":
        return load_fox(path, image_dir)
    if fmt == "omnidocbench":
        return load_omnidocbench(path, image_dir)
    raise DsocrError(f"unknown data format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")


def _sniff_json(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DsocrError(f"{path}: cannot be read as JSON ({exc.__class__.__name__})") from None
    first = data[0] if isinstance(data, list) and data else {}
    if isinstance(first, dict) and "layout_dets" in first:
        return "omnidocbench"
    if isinstance(first, dict) and "conversations" in first:
        return "fox"
    raise DsocrError(f"{path}: neither a Fox nor an OmniDocBench annotation file (use a .jsonl manifest)")


def run_eval(ocr, samples: Sequence, mode: str, *, settings=None, prompt: str | None = None,
             normalization: Normalization | None = None, max_tiles: int | None = None,
             predictions_path: str | Path | None = None, progress: bool = True) -> list[EvalRecord]:
    """OCR every sample (its own prompt unless `prompt` is given), score it against its target.
    Vision tokens are the paper's nominal counts for the mode and tiling (64, 100, 256, n*100+256)."""
    from tqdm import tqdm

    records, rows = [], []
    started = time.perf_counter()
    for i, sample in enumerate(tqdm(samples, desc="eval", unit="sample", disable=not progress)):
        result = ocr.generate([list(sample.images)], prompt=prompt or sample.prompt, mode=mode,
                              max_tiles=max_tiles, settings=settings)[0]
        vision = sum(nominal_vision_tokens(mode, g) for g in result.grids) or nominal_vision_tokens(mode)
        sample_id = sample.id or str(i)
        records.append(evaluate_pair(result.text, sample.target, vision, id=sample_id, normalization=normalization,
                                     tokenizer=ocr.tokenizer))
        rows.append({"id": sample_id, "prediction": result.text, "finished": result.finished,
                     "generated_tokens": len(result.token_ids), "vision_tokens": vision})
    if predictions_path is not None:
        with atomic_path(predictions_path) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    if progress:
        print(f"{len(records)} samples in {time.perf_counter() - started:.1f} s")
    return records
