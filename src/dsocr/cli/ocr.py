"""`dsocr ocr`: read images, PDFs and folders into Markdown, layout JSON and annotated pages."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from ..processing.modes import MODES

    p = subparsers.add_parser(
        "ocr",
        help="read documents (images, PDFs, folders) into Markdown with layout boxes",
        description="Run DeepSeek-OCR on every page of the inputs with one loaded model. For each page, "
        "OUTDIR/<document>/ gets page-NNNN.md (clean Markdown, figures cropped to images/), page-NNNN.json "
        "(blocks with pixel boxes, token counts, finished flag), page-NNNN.png (labelled boxes) and "
        "page-NNNN.raw.txt (raw output); <document>.md joins the pages. A page whose JSON exists is done: "
        "a rerun skips it (use --force to redo). Inputs that cannot be read are reported and skipped; "
        "the exit code is then 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image (png, jpg, webp, tiff, bmp), PDF, directory (searched recursively) or @LIST "
                        "(a file with one input per line)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--model", default="deepseek-ai/DeepSeek-OCR", help="model directory or hub id")
    p.add_argument("--mode", "-m", default="gundam", help=f"resolution mode: {', '.join(MODES)}")
    p.add_argument("--prompt", "-p", default="markdown",
                   help="preset (markdown, ocr, free, figure, describe, locate) or literal text containing <image>")
    p.add_argument("--ref", help="what to find, with --prompt locate")
    p.add_argument("--pages", help="pages of PDFs and TIFFs, 1-based: e.g. 1-5,8,10- (default: all)")
    p.add_argument("--dpi", type=float, default=144, help="PDF rendering resolution (official: 144)")
    p.add_argument("--max-tiles", type=int, default=None, help="most tiles in gundam modes (2..9; default 6)")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="most tokens to generate per page")
    p.add_argument("--ngram", type=int, default=None,
                   help="no-repeat n-gram size, 0 = off (default: official 20 for PDF pages, 30 for images)")
    p.add_argument("--ngram-window", type=int, default=None,
                   help="no-repeat window (default: official 50 for PDF pages, 90 for images)")
    p.add_argument("--batch-size", type=int, default=1, help="pages generated together (GPU throughput)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--hub", choices=("hf", "modelscope"), default="hf", help="where a hub id is downloaded from")
    p.add_argument("--stream", action="store_true", help="print each page's text to stdout as it is generated")
    p.add_argument("--force", action="store_true", help="redo pages already done")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DsocrError
    from ..inference.ocr import OCREngine, OCROptions

    if args.stream and args.batch_size > 1:
        raise DsocrError("--stream shows one page at a time; use it with --batch-size 1")
    options = OCROptions(
        mode=args.mode, prompt=args.prompt, ref=args.ref, max_tiles=args.max_tiles, dpi=args.dpi, pages=args.pages,
        max_new_tokens=args.max_new_tokens, ngram_size=args.ngram, ngram_window=args.ngram_window,
        batch_size=args.batch_size, force=args.force, dtype=args.dtype, device=args.device, hub=args.hub,
    )
    engine = OCREngine(args.model, options, args.output, progress=not args.quiet,
                       stream=_Printer() if args.stream else None,
                       report=lambda message: _report(message, args.quiet))
    result = engine.run(args.inputs)
    if args.stream:
        print(flush=True)
    _report(f"dsocr ocr: {result.summary()}", quiet=True)
    return 1 if result.failures else 0


def _report(message: str, quiet: bool) -> None:
    """A line on stderr, above the progress bar when one is shown."""
    if message.startswith("error: "):
        message = f"dsocr ocr: {message}"
    if quiet:
        print(message, file=sys.stderr, flush=True)
    else:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


class _Printer:
    """`--stream`: a header line per page, then its text as it arrives."""

    def __init__(self) -> None:
        self.current: tuple[str, int] | None = None

    def __call__(self, document: str, page: int, text: str) -> None:
        if self.current != (document, page):
            start = "\n" if self.current is not None else ""
            print(f"{start}==> {document} page {page} <==", flush=True)
            self.current = (document, page)
        print(text, end="", flush=True)
