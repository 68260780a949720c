"""`dsocr generate`: run the whole model on an image and print its raw output as it is produced."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ..processing.modes import MODES

    p = subparsers.add_parser(
        "generate",
        help="run DeepSeek-OCR on an image and print the raw output (streamed)",
        description="Run DeepSeek-OCR (DeepEncoder + DeepSeek-3B-MoE) on one or more images with a prompt and "
        "print the raw model output, grounding tags included, as it is generated. Defaults follow the "
        "official vLLM scripts: greedy decoding, no-repeat n-gram 30 over the last 90 tokens, 8192 positions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s); several go into one prompt with --multi")
    p.add_argument("--model", default="deepseek-ai/DeepSeek-OCR", help="model directory or hub id")
    p.add_argument("--mode", "-m", default="gundam", help=f"resolution mode: {', '.join(MODES)}")
    p.add_argument(
        "--prompt", "-p", default="markdown",
        help="preset (markdown, ocr, free, figure, describe, locate) or literal text containing <image>",
    )
    p.add_argument("--ref", help="what to find, with --prompt locate")
    p.add_argument("--multi", action="store_true", help="all images in one prompt (the prompt needs one <image> each)")
    p.add_argument("--max-tiles", type=int, default=None, help="most tiles in gundam modes (2..9; default 6)")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (official)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--ngram", type=int, default=30, help="no-repeat n-gram size (0 = off)")
    p.add_argument("--ngram-window", type=int, default=90, help="no-repeat window over generated tokens")
    p.add_argument("--hf", action="store_true", help="HF infer behaviour: its preprocessing (max 9 tiles), prompt strip, "
                   "whole-sequence no-repeat n-gram (size --ngram)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--hub", choices=("hf", "modelscope"), default="hf", help="where a hub id is downloaded from")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DsocrError
    from ..inference.generate import GenerationSettings
    from ..inference.pipeline import DeepSeekOCR
    from ..processing import get_mode, load_image

    get_mode(args.mode)  # fail fast on a bad mode, before loading anything
    images = [load_image(path) for path in args.images]
    if args.max_new_tokens < 1:
        raise DsocrError("--max-new-tokens must be at least 1")
    ocr = DeepSeekOCR.from_pretrained(args.model, dtype=args.dtype, device=args.device, hub=args.hub)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        ngram_size=args.ngram, ngram_window=args.ngram_window, hf_no_repeat=args.hf,
        max_length=None if args.hf else 8192,
    )
    batch = [images] if args.multi else images
    several = len(batch) > 1
    results = []
    for i, item in enumerate(batch):
        if several:
            print(f"==> {args.images[i]} <==", flush=True)
        results += ocr.generate(
            [item] if args.multi else item, prompt=args.prompt, mode=args.mode, max_tiles=args.max_tiles,
            preprocessing="hf" if args.hf else "vllm", settings=settings, ref=args.ref,
            stream=lambda _sample, text: print(text, end="", flush=True),
        )
        print(flush=True)
    for result in results:
        status = "EOS" if result.finished else "length limit reached without EOS"
        print(f"[{result.image_tokens} image tokens, {result.prompt_tokens} prompt tokens, "
              f"{len(result.token_ids)} generated; {status}]", file=sys.stderr)
    return 0
