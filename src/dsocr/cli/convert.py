"""`dsocr convert --sam SRC --clip SRC -o OUT.safetensors`: DeepEncoder weights from public SAM and CLIP."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="build DeepEncoder weights from public SAM-B and CLIP-L/14 checkpoints",
        description="Build one safetensors file with DeepSeek-OCR's official DeepEncoder names from a SAM ViT-B "
        "checkpoint (segment-anything .pth or transformers SamModel) and a CLIP ViT-L/14 checkpoint "
        "(transformers CLIP, 224 or 336 px, or OpenAI's ViT-L-14.pt). Tensors without a public source "
        "(net_2, net_3, projector, image_newline, view_seperator) are initialised from --seed.",
    )
    parser.add_argument(
        "--sam", required=True, metavar="SRC",
        help="SAM: a file/directory, a URL (e.g. https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth) "
        "or a hub id (facebook/sam-vit-base)",
    )
    parser.add_argument(
        "--clip", required=True, metavar="SRC",
        help="CLIP: a file/directory, a URL or a hub id (openai/clip-vit-large-patch14, openai/clip-vit-large-patch14-336)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="output file")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="output dtype (default float32)")
    parser.add_argument("--output-dim", type=int, default=1280, help="projector output width (default 1280)")
    parser.add_argument("--report", metavar="R.md|R.json", help="write a report: every tensor, its source and transform")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tensors without a public source (default 0)")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=None,
        help="check the result against segment-anything / transformers on a random probe "
        "(default: when they are importable)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative error of --verify (default 1e-4)")
    parser.add_argument("--hub", choices=("hf", "modelscope"), default="hf", help="where hub ids are downloaded from")
    parser.add_argument("--cache-dir", metavar="DIR", help="download cache (default: the hub's own; URLs: ~/.cache/dsocr)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..weights.convert import convert

    convert(
        args.sam, args.clip, args.output, dtype=args.dtype, output_dim=args.output_dim, seed=args.seed,
        verify=args.verify, report=args.report, hub=args.hub, cache_dir=args.cache_dir, tolerance=args.tolerance,
    )
    return 0
