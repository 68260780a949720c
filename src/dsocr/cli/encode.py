"""`dsocr encode`: an image -> the vision token sequence DeepSeek-OCR's language model reads."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import DsocrError

DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers) -> None:
    from ..processing.modes import MODES

    p = subparsers.add_parser(
        "encode",
        help="encode an image with DeepEncoder into vision tokens",
        description="Run DeepEncoder on one image in a resolution mode and write the token sequence fed "
        "to the language model (newlines and view separator included) as tensor `tokens` [N, D] in a "
        "safetensors file, with the mode, tile grid and N in its metadata.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("image", help="image file (png, jpg, webp, tiff, ...)")
    p.add_argument(
        "--weights", "-w", required=True,
        help="DeepSeek-OCR checkpoint (file, *.index.json or directory), a `dsocr convert` output, "
        "a hub id such as deepseek-ai/DeepSeek-OCR, or `random` (random weights: for timing only)",
    )
    p.add_argument("--mode", "-m", default="base", help=f"resolution mode: {', '.join(MODES)}")
    p.add_argument("--max-tiles", type=int, default=None, help="most tiles in gundam modes (2..9; default 6)")
    p.add_argument("--out", "-o", default=None, help="output .safetensors file (default: print only)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model import DeepEncoder
    from ..processing import get_mode, load_image, prepare_image

    mode = get_mode(args.mode)
    if args.out is not None and not args.out.endswith(".safetensors"):
        raise DsocrError(f"--out {args.out}: the output must be a .safetensors file")
    image = load_image(args.image)
    prepared = prepare_image(image, mode, max_tiles=args.max_tiles)
    dtype = getattr(torch, args.dtype)

    started = time.perf_counter()
    if args.weights == "random":
        print("warning: random weights: the tokens mean nothing (use for timing only)", file=sys.stderr)
        torch.manual_seed(0)
        encoder = DeepEncoder().to(device=args.device, dtype=dtype).eval()
    else:
        encoder = DeepEncoder.from_pretrained(resolve_weights(args.weights), dtype=dtype, device=args.device)
    loaded = time.perf_counter()
    tokens = encoder.encode(prepared)
    encoded = time.perf_counter()

    grid = prepared.grid
    grid_text = f"{grid[0]}x{grid[1]} tiles" if grid else "no tiles"
    print(
        f"{args.image}: {mode.name} mode, {grid_text}, {tokens.shape[0]} tokens x {tokens.shape[1]} "
        f"({args.dtype}); load {loaded - started:.2f} s, encode {encoded - loaded:.2f} s"
    )
    if args.out:
        write_tokens(args.out, tokens, mode.name, grid)
        print(f"wrote {args.out}")
    return 0


def write_tokens(path: str | Path, tokens, mode: str, grid) -> None:
    from safetensors.torch import save_file

    from ..files import atomic_path

    metadata = {
        "mode": mode,
        "grid": json.dumps(list(grid) if grid else None),
        "num_tokens": str(tokens.shape[0]),
    }
    with atomic_path(path) as tmp:
        save_file({"tokens": tokens.detach().cpu().contiguous()}, str(tmp), metadata=metadata)


def resolve_weights(spec: str) -> Path:
    """A local path as is; a hub id (or URL) downloaded, weights only, into the cache."""
    from ..weights.hub import resolve_source

    return resolve_source(spec, log=lambda message: print(message, file=sys.stderr))
