"""Batch OCR: documents in, Markdown, layout JSON, crops and annotated pages out.

`OCREngine` reads every page of every input with one loaded model, writes each page's files
under `OUTDIR/<document>/` (atomically, the JSON last, so a page whose JSON exists is done and
a rerun skips it) and reports progress, failures and a summary. `ocr()` is the Python API.

Per page `page-NNNN`: `.raw.txt` (the model output), `.md` (clean Markdown, `image` regions
cropped to `images/page-NNNN-K.jpg`), `.png` (the page with its labelled boxes) and `.json`
(blocks with pixel boxes, token counts, finished flag, mode, grid, timing, warnings). Per
document: `<document>.md`, its done pages joined with the official page separator.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DsocrError
from ..files import atomic_path
from ..processing.documents import (
    DEFAULT_DPI, MAX_DPI, Document, Source, discover, open_document, parse_pages, select_pages,
)
from ..processing.grounding import Block, draw_grounding, join_pages, parse_grounding, to_markdown
from .generate import GenerationSettings
from .pipeline import DEFAULT_MODEL, DeepSeekOCR, OCRResult

PDF_NGRAM = (20, 50)
"""No-repeat n-gram size and window of the official PDF script."""

IMAGE_NGRAM = (30, 90)
"""No-repeat n-gram size and window of the official image script (and dsocr's default)."""

LABELS_ARE_TEXT_PROMPTS = ("ocr", "locate")
"""Presets whose grounding labels are the recognised text itself, kept in the Markdown."""


@dataclass
class OCROptions:
    """How pages are read. `ngram_size`/`ngram_window` None: the official per-kind values
    (20/50 for PDF pages, 30/90 for images); `pages` ("1-5,8" or page numbers) applies to PDFs
    and TIFFs."""

    mode: str = "gundam"
    prompt: str = "markdown"
    ref: str | None = None
    max_tiles: int | None = None
    preprocessing: str = "vllm"
    dpi: float = DEFAULT_DPI
    pages: str | Sequence[int] | None = None
    max_new_tokens: int = 8192
    ngram_size: int | None = None
    ngram_window: int | None = None
    batch_size: int = 1
    force: bool = False
    dtype: str | None = None
    device: str = "cpu"
    hub: str = "hf"


@dataclass
class PageResult:
    """One page read (or, with `skipped`, read back from an earlier run's files)."""

    document: str  # output folder name of the document
    source: str  # the input as named by the user
    page: int  # 1-based
    raw: str  # model output, grounding tags kept
    blocks: list[Block]
    markdown: str
    finished: bool  # False: the length limit stopped it without EOS (often a repetition loop)
    prompt_tokens: int = 0
    image_tokens: int = 0
    generated_tokens: int = 0
    size: tuple[int, int] = (0, 0)
    grid: tuple[int, int] | None = None
    mode: str = ""
    seconds: float = 0.0  # generation time (a batch's time shared equally by its pages)
    render_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    images: dict[str, Image.Image] = field(default_factory=dict)  # link -> cropped region (no output_dir only)
    skipped: bool = False
    files: dict[str, str] = field(default_factory=dict)  # kind -> written path

    def to_json(self) -> dict:
        """The page's JSON record."""
        return {
            "document": self.document, "source": self.source, "page": self.page,
            "size": list(self.size), "mode": self.mode, "grid": list(self.grid) if self.grid else None,
            "finished": self.finished,
            "tokens": {"prompt": self.prompt_tokens, "image": self.image_tokens, "generated": self.generated_tokens},
            "timing": {"render_s": round(self.render_seconds, 3), "generate_s": round(self.seconds, 3),
                       "tokens_per_s": round(self.generated_tokens / self.seconds, 2) if self.seconds else None},
            "warnings": list(self.warnings),
            "blocks": [b.to_dict() for b in self.blocks],
        }


@dataclass
class Failure:
    """An input or a page that could not be read; `page` None: the whole input."""

    source: str
    page: int | None
    message: str


@dataclass
class OCRRun:
    """What a run did. Iterating it gives the page results."""

    pages: list[PageResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    documents: int = 0
    seconds: float = 0.0

    def __iter__(self):
        return iter(self.pages)

    def __len__(self) -> int:
        return len(self.pages)

    def __getitem__(self, index):
        return self.pages[index]

    @property
    def done(self) -> int:
        return sum(not p.skipped for p in self.pages)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.pages)

    @property
    def unfinished(self) -> int:
        return sum(not p.finished for p in self.pages)

    @property
    def tokens(self) -> int:
        """Tokens generated in this run (skipped pages not counted)."""
        return sum(p.generated_tokens for p in self.pages if not p.skipped)

    @property
    def failed_pages(self) -> int:
        return sum(f.page is not None for f in self.failures)

    @property
    def failed_inputs(self) -> int:
        return len({f.source for f in self.failures})

    def summary(self) -> str:
        """One line: documents, pages done/skipped/failed/unfinished, tokens, time."""
        generate_s = sum(p.seconds for p in self.pages if not p.skipped)
        speed = f" ({self.tokens / generate_s:.1f} tokens/s)" if generate_s else ""
        text = (f"{self.documents} document{_s(self.documents)}: {self.done} page{_s(self.done)} done, "
                f"{self.skipped} skipped (already done), {self.failed_pages} failed, "
                f"{self.unfinished} unfinished (no EOS); {self.tokens} tokens{speed}; {self.seconds:.1f} s")
        if self.failures:
            text += f"; {self.failed_inputs} input{_s(self.failed_inputs)} with errors"
        return text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


@dataclass
class _Plan:
    source: Source
    page_count: int
    pages: list[int]


class OCREngine:
    """Reads documents page by page with one model, loaded on first use.

    `model`: a loaded `DeepSeekOCR`, or a directory / hub id. `output_dir` None keeps results
    in memory only. Callbacks: `stream(document, page, text)` receives text as it is
    generated; `report(message)` receives failures and notices (default: stderr);
    `on_failure(failure)` may raise to stop the run (the API's `errors="raise"`).
    """

    def __init__(
        self,
        model: DeepSeekOCR | str | os.PathLike = DEFAULT_MODEL,
        options: OCROptions | None = None,
        output_dir: str | os.PathLike | None = None,
        *,
        progress: bool = False,
        stream: Callable[[str, int, str], None] | None = None,
        report: Callable[[str], None] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        from ..processing import get_mode
        from ..processing.prompts import resolve_prompt

        self.options = options or OCROptions()
        opts = self.options
        get_mode(opts.mode)  # fail fast, before anything is read or loaded
        self.prompt_text = resolve_prompt(opts.prompt, ref=opts.ref)
        self.page_ranges = parse_pages(opts.pages)
        if opts.max_new_tokens < 1:
            raise DsocrError("max_new_tokens must be at least 1")
        if opts.batch_size < 1:
            raise DsocrError("batch_size must be at least 1")
        if opts.max_tiles is not None and not 2 <= opts.max_tiles <= 9:
            raise DsocrError(f"max_tiles must be between 2 and 9, got {opts.max_tiles}")
        if not 0 < opts.dpi <= MAX_DPI:
            raise DsocrError(f"dpi must be between 1 and {MAX_DPI}, got {opts.dpi}")
        if opts.preprocessing not in ("vllm", "hf"):
            raise DsocrError(f"unknown preprocessing {opts.preprocessing!r}; valid: vllm, hf")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if self.output_dir is not None and self.output_dir.exists() and not self.output_dir.is_dir():
            raise DsocrError(f"{self.output_dir}: the output folder is a file")
        self._model = model
        self.progress = progress
        self.stream = stream
        self.report = report or _to_stderr
        self.on_failure = on_failure
        self._bar = None

    # ---- the run ----------------------------------------------------------------------

    def run(self, inputs: Iterable[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image) -> OCRRun:
        """Read every selected page of `inputs`; problems are recorded, never raised (unless
        `on_failure` raises)."""
        from tqdm import tqdm

        start = time.perf_counter()
        run = OCRRun()
        sources, problems = discover(_as_list(inputs), exclude=self.output_dir)
        for name, problem in problems:
            self._fail(run, Failure(name, None, problem))
        plans = [plan for plan in (self._plan(source, run) for source in sources) if plan is not None]
        run.documents = len(plans)
        total = sum(len(plan.pages) for plan in plans)
        with tqdm(total=total, unit="page", file=sys.stderr, disable=not self.progress, dynamic_ncols=True) as bar:
            self._bar = bar
            try:
                for plan in plans:
                    self._run_document(plan, run)
            finally:
                self._bar = None
        run.seconds = time.perf_counter() - start
        return run

    def _plan(self, source: Source, run: OCRRun) -> _Plan | None:
        """Open a document to count its pages and check the page selection."""
        try:
            with open_document(source, self.options.dpi) as document:
                count = document.page_count
            pages = select_pages(self.page_ranges, count) if source.paged else [1]
        except DsocrError as exc:
            message = str(exc) if str(exc).startswith(source.name) else f"{source.name}: {exc}"
            self._fail(run, Failure(source.name, None, message))
            return None
        return _Plan(source, count, pages)

    def _run_document(self, plan: _Plan, run: OCRRun) -> None:
        folder = self.output_dir / plan.source.stem if self.output_dir is not None else None
        todo = []
        for number in plan.pages:
            previous = None if self.options.force or folder is None else load_page(folder, number)
            if previous is not None:
                run.pages.append(previous)
                self._advance(run)
            else:
                todo.append(number)
        if todo:
            self._read_pages(plan, todo, folder, run)
        if folder is not None:
            write_document_markdown(folder, plan.source.stem, plan.page_count)

    def _read_pages(self, plan: _Plan, numbers: list[int], folder: Path | None, run: OCRRun) -> None:
        source = plan.source
        try:
            document = open_document(source, self.options.dpi)
        except DsocrError as exc:
            self._fail(run, Failure(source.name, None, str(exc)))
            self._advance(run, len(numbers))
            return
        with document:
            size = self.options.batch_size
            for first in range(0, len(numbers), size):
                self._read_batch(document, numbers[first:first + size], folder, run)

    def _read_batch(self, document: Document, numbers: list[int], folder: Path | None, run: OCRRun) -> None:
        source = document.source
        pages: list[tuple[int, Image.Image, float]] = []
        for number in numbers:
            began = time.perf_counter()
            try:
                pages.append((number, document.page(number), time.perf_counter() - began))
            except DsocrError as exc:
                self._fail(run, Failure(source.name, number, _named(str(exc), source.name, number)))
                self._advance(run)
        if not pages:
            return
        model = self.model  # a model that cannot be loaded stops the run (DsocrError)
        try:
            outputs, seconds = self._generate(model, source, [(n, image) for n, image, _ in pages])
        except DsocrError as exc:
            for number, _, _ in pages:
                self._fail(run, Failure(source.name, number, _named(str(exc), source.name, number)))
            self._advance(run, len(pages))
            return
        for (number, image, render_s), output in zip(pages, outputs):
            result = self._page_result(source, number, image, output, seconds / len(pages), render_s)
            if folder is not None:
                try:
                    write_page(folder, result, image)
                    result.images = {}  # on disk now; a long run must not hold every crop in memory
                except OSError as exc:
                    self._fail(run, Failure(source.name, number, f"{source.name}: page {number}: cannot write its "
                                                                 f"files ({exc.strerror or exc})"))
                    self._advance(run)
                    continue
            run.pages.append(result)
            if not result.finished:
                self._notice(f"{source.name}: page {number}: stopped at the length limit without EOS "
                             "(a repetition loop, or too few max new tokens); marked unfinished")
            self._advance(run)

    def _generate(self, model: DeepSeekOCR, source: Source,
                  pages: list[tuple[int, Image.Image]]) -> tuple[list[OCRResult], float]:
        """Run the model on a batch of pages; the outputs and the seconds it took."""
        import torch

        opts = self.options
        ngram, window = PDF_NGRAM if source.kind == "pdf" else IMAGE_NGRAM
        settings = GenerationSettings(
            max_new_tokens=opts.max_new_tokens,
            ngram_size=ngram if opts.ngram_size is None else opts.ngram_size,
            ngram_window=window if opts.ngram_window is None else opts.ngram_window,
        )

        def forward(sample: int, text: str) -> None:
            self.stream(source.stem, pages[sample][0], text)

        began = time.perf_counter()
        try:
            outputs = model.generate(
                [image for _, image in pages], prompt=self.prompt_text, mode=opts.mode, max_tiles=opts.max_tiles,
                preprocessing=opts.preprocessing, settings=settings, stream=forward if self.stream else None,
            )
        except (torch.OutOfMemoryError, MemoryError):
            raise DsocrError("out of memory while reading the page (try a smaller --mode or --batch-size)") from None
        return outputs, time.perf_counter() - began

    def _page_result(self, source: Source, number: int, image: Image.Image, output: OCRResult,
                     seconds: float, render_s: float) -> PageResult:
        """Parse one output into blocks, crops and Markdown."""
        grounding = parse_grounding(output.text, image.width, image.height)
        warnings = list(grounding.warnings)
        crops = crop_images(grounding.blocks, image, number, warnings)
        links = {id(block): block.images for block in grounding.blocks}
        markdown = to_markdown(grounding, lambda block, k: _link(links[id(block)], k),
                               labels_are_text=self.options.prompt in LABELS_ARE_TEXT_PROMPTS)
        return PageResult(
            document=source.stem, source=source.name, page=number, raw=output.text, blocks=grounding.blocks,
            markdown=markdown, finished=output.finished, prompt_tokens=output.prompt_tokens,
            image_tokens=output.image_tokens, generated_tokens=len(output.token_ids), size=image.size,
            grid=output.grids[0] if output.grids else None, mode=self.options.mode, seconds=seconds,
            render_seconds=render_s, warnings=warnings, images=crops,
        )

    # ---- model, progress, failures -----------------------------------------------------

    @property
    def model(self) -> DeepSeekOCR:
        """The model, loaded the first time a page needs it (a finished run loads nothing)."""
        if not isinstance(self._model, DeepSeekOCR):
            opts = self.options
            self._notice(f"loading model {self._model}")
            self._model = DeepSeekOCR.from_pretrained(self._model, dtype=opts.dtype, device=opts.device, hub=opts.hub)
        return self._model

    def _advance(self, run: OCRRun, pages: int = 1) -> None:
        if self._bar is None:
            return
        generate_s = sum(p.seconds for p in run.pages if not p.skipped)
        if generate_s:
            self._bar.set_postfix_str(f"{run.tokens / generate_s:.1f} tok/s", refresh=False)
        self._bar.update(pages)

    def _notice(self, message: str) -> None:
        self.report(message)

    def _fail(self, run: OCRRun, failure: Failure) -> None:
        run.failures.append(failure)
        self._notice(f"error: {failure.message}")
        if self.on_failure is not None:
            self.on_failure(failure)


def _to_stderr(message: str) -> None:
    """Print above the progress bar, if there is one."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _as_list(inputs) -> list:
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        return [inputs]
    return list(inputs)


def _named(message: str, name: str, page: int) -> str:
    """`message` prefixed with the document and page unless it already names them."""
    return message if message.startswith(name) else f"{name}: page {page}: {message}"


def _link(images: list[str], k: int) -> str:
    return images[k] if k < len(images) else ""


# ---- files ------------------------------------------------------------------------------


def page_stem(number: int) -> str:
    return f"page-{number:04d}"


def crop_images(blocks: Sequence[Block], page: Image.Image, number: int, warnings: list[str]) -> dict[str, Image.Image]:
    """Cut every box of the `image` blocks out of the page; `block.images` gets their links.

    Crops are numbered from 1 over the page: `images/page-NNNN-K.jpg`. An empty box (no pixel
    after mapping) is not cropped, and its link is left out with a warning.
    """
    crops: dict[str, Image.Image] = {}
    for block in blocks:
        if block.label != "image":
            continue
        for x1, y1, x2, y2 in block.boxes:
            if x2 <= x1 or y2 <= y1:
                warnings.append(f"image box {[x1, y1, x2, y2]} is empty; not cropped")
                block.images.append("")
                continue
            link = f"images/{page_stem(number)}-{len(crops) + 1}.jpg"
            crops[link] = page.crop((x1, y1, x2, y2))
            block.images.append(link)
    return crops


def write_page(folder: Path, result: PageResult, image: Image.Image) -> None:
    """Write a page's files, each atomically, the JSON last (it marks the page done)."""
    stem = page_stem(result.page)
    files = {}
    for link, crop in result.images.items():
        with atomic_path(folder / link) as tmp:
            crop.convert("RGB").save(tmp, format="JPEG", quality=95)
        files[link] = str(folder / link)
    files["raw"] = _write_text(folder / f"{stem}.raw.txt", result.raw)
    files["markdown"] = _write_text(folder / f"{stem}.md", result.markdown + "\n" if result.markdown else "")
    with atomic_path(folder / f"{stem}.png") as tmp:
        draw_grounding(image, [(b.label or "", box) for b in result.blocks for box in b.boxes]).save(tmp, format="PNG")
    files["boxes"] = str(folder / f"{stem}.png")
    files["json"] = _write_text(folder / f"{stem}.json", json.dumps(result.to_json(), ensure_ascii=False, indent=1) + "\n")
    result.files = files


def _write_text(path: Path, text: str) -> str:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def load_page(folder: Path, number: int) -> PageResult | None:
    """A page done by an earlier run (its JSON exists and reads), or None."""
    stem = page_stem(number)
    try:
        record = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
        raw = _read_optional(folder / f"{stem}.raw.txt")
        markdown = _read_optional(folder / f"{stem}.md").strip()
        blocks = [Block(b.get("label"), [tuple(x) for x in b.get("boxes", [])], b.get("text", ""),
                        [tuple(x) for x in b.get("coords", [])], list(b.get("images", [])))
                  for b in record.get("blocks", [])]
        tokens = record.get("tokens", {})
        timing = record.get("timing", {})
        return PageResult(
            document=record.get("document", folder.name), source=record.get("source", ""), page=number, raw=raw,
            blocks=blocks, markdown=markdown, finished=bool(record.get("finished", True)),
            prompt_tokens=tokens.get("prompt", 0), image_tokens=tokens.get("image", 0),
            generated_tokens=tokens.get("generated", 0), size=tuple(record.get("size", (0, 0))),
            grid=tuple(record["grid"]) if record.get("grid") else None, mode=record.get("mode", ""),
            seconds=timing.get("generate_s") or 0.0, render_seconds=timing.get("render_s") or 0.0,
            warnings=list(record.get("warnings", [])), skipped=True,
        )
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _read_optional(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def write_document_markdown(folder: Path, stem: str, page_count: int) -> Path | None:
    """`<stem>.md`: the done pages of the document, in order, joined by the page separator."""
    pages = []
    for number in range(1, page_count + 1):
        if (folder / f"{page_stem(number)}.json").is_file():
            pages.append(_read_optional(folder / f"{page_stem(number)}.md"))
    if not pages:
        return None
    path = folder / f"{stem}.md"
    _write_text(path, join_pages(pages) + "\n")
    return path


# ---- the Python API -----------------------------------------------------------------------


def ocr(
    inputs,
    output_dir: str | os.PathLike | None = None,
    *,
    model: DeepSeekOCR | str | os.PathLike = DEFAULT_MODEL,
    mode: str = "gundam",
    prompt: str = "markdown",
    ref: str | None = None,
    pages: str | Sequence[int] | None = None,
    dpi: float = DEFAULT_DPI,
    max_tiles: int | None = None,
    max_new_tokens: int = 8192,
    ngram_size: int | None = None,
    ngram_window: int | None = None,
    batch_size: int = 1,
    dtype: str | None = None,
    device: str = "cpu",
    force: bool = False,
    errors: str = "raise",
    progress: bool = False,
    stream: Callable[[str, int, str], None] | None = None,
) -> OCRRun:
    """Read documents with DeepSeek-OCR; returns the page results (an `OCRRun`, iterable).

    `inputs`: a path (image, PDF, directory, `@list.txt`), a PIL image, or a list of them.
    `output_dir`: also write the files of `dsocr ocr` there (and skip pages already done,
    unless `force`). `model`: a loaded `DeepSeekOCR` or a directory / hub id. `errors`:
    "raise" stops at the first input or page that cannot be read; "skip" records it in
    `run.failures` and goes on. `progress`: a progress bar and notices on stderr.

    >>> for page in dsocr.ocr("paper.pdf", pages="1-2", model=loaded):
    ...     print(page.page, page.finished, page.markdown[:80])
    """
    if errors not in ("raise", "skip"):
        raise DsocrError(f"errors must be 'raise' or 'skip', got {errors!r}")

    def stop(failure: Failure) -> None:
        raise DsocrError(failure.message)

    options = OCROptions(
        mode=mode, prompt=prompt, ref=ref, max_tiles=max_tiles, dpi=dpi, pages=pages, max_new_tokens=max_new_tokens,
        ngram_size=ngram_size, ngram_window=ngram_window, batch_size=batch_size, force=force, dtype=dtype,
        device=device,
    )
    engine = OCREngine(model, options, output_dir, progress=progress, stream=stream,
                       report=None if progress else (lambda _message: None),
                       on_failure=stop if errors == "raise" else None)
    return engine.run(inputs)
