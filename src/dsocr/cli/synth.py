"""`dsocr synth`: render synthetic document pages with exact ground truth and write a manifest."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..data.synthetic import add_arguments

    p = subparsers.add_parser(
        "synth",
        help="render synthetic document pages and a training manifest",
        description="Render pages (title, paragraphs, lists, tables) with Pillow into OUT_DIR/images and write "
        "OUT_DIR/manifest.jsonl with the plain-text (`Free OCR.`) and/or grounded-Markdown targets. "
        "The same seed gives the same pages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import run as run_synth

    return run_synth(args)
