"""`dsocr train`: train or fine-tune DeepSeek-OCR from a TOML config (see docs/training.md)."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune the model from a TOML config",
        description="Train DeepSeek-OCR: stage1 (DeepEncoder + a compact language model), stage2 (the full "
        "model, SAM frozen) or finetune (full or LoRA). Runs as one process, or under torchrun with "
        "distributed = \"ddp\" or \"fsdp2\". Metrics go to OUT/metrics.jsonl, checkpoints to OUT/checkpoints/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="TOML config file")
    p.add_argument("--out", "-o", default=None, help="output folder (overrides out_dir)")
    p.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
        help="continue from the newest checkpoint in the output folder, or from the given checkpoint folder",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 --set data.batch_size=16 (repeatable)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training import load_config, train

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out_dir={_toml_string(args.out)}")
    config = load_config(args.config, overrides)
    out = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out} (metrics.jsonl, checkpoints/)")
    return 0


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
