"""`dsocr eval`: OCR a labelled set and report edit distance, CER/WER, Fox precision and compression."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..processing.modes import MODES

    p = subparsers.add_parser(
        "eval",
        help="score OCR on a labelled set (edit distance, Fox precision vs compression)",
        description="Run the model on every sample of a JSONL manifest, a Fox or an OmniDocBench annotation "
        "file and report normalised edit distance, character and word error rates, precision in the Fox sense "
        "and the compression ratio (text tokens / vision tokens) per sample and per 100-token bucket of text "
        "length: a table, JSON, a PNG plot of precision vs compression and the predictions (JSONL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="deepseek-ai/DeepSeek-OCR", help="model directory or hub id")
    p.add_argument("--data", required=True, help="manifest (.jsonl), Fox or OmniDocBench annotation (.json)")
    p.add_argument("--format", default="auto", choices=("auto", "manifest", "fox", "omnidocbench"), help="data format")
    p.add_argument("--images", default=None, help="image folder for Fox / OmniDocBench annotations")
    p.add_argument("--mode", "-m", default="small", help=f"resolution mode: {', '.join(MODES)}")
    p.add_argument("--prompt", default=None, help="prompt for every sample (default: each sample's own)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="most tokens per sample")
    p.add_argument("--max-tiles", type=int, default=None, help="most tiles in gundam modes")
    p.add_argument("--out", "-o", default="eval-report", help="output folder")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import DsocrError
    from ..evaluation.report import write_report
    from ..evaluation.run import load_samples, run_eval
    from ..inference.generate import GenerationSettings
    from ..inference.pipeline import DeepSeekOCR
    from ..processing import get_mode

    get_mode(args.mode)
    samples = load_samples(args.data, args.format, args.images)
    if args.limit is not None:
        samples = samples[: args.limit]
    if not samples:
        raise DsocrError(f"{args.data}: no samples")
    ocr = DeepSeekOCR.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    out = Path(args.out)
    records = run_eval(ocr, samples, args.mode, settings=GenerationSettings(max_new_tokens=args.max_new_tokens),
                       prompt=args.prompt, max_tiles=args.max_tiles, predictions_path=out / "predictions.jsonl")
    paths = write_report(out, records, title=f"{args.data} · {args.mode} mode · {args.model}",
                         mode=args.mode, model=str(args.model), data=str(args.data))
    print(paths["table"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {out / 'predictions.jsonl'}")
    return 0
