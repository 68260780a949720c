"""The `dsocr` command line. Each sub-command lives in its own module of this package, with
`register(subparsers)` adding its parser and a `run(args) -> int` function."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import DsocrError

# Sub-command modules of this package, in the order `dsocr --help` lists them.
COMMANDS = ("encode", "generate", "ocr", "inspect", "convert", "train", "eval", "synth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsocr",
        description="DeepSeek-OCR rebuilt from public parts: OCR images and PDFs, run the model, encode with "
        "DeepEncoder, inspect and convert weights, make synthetic data, train and evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DsocrError as exc:
        print(f"dsocr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dsocr {args.command}: interrupted", file=sys.stderr)
        return 130
