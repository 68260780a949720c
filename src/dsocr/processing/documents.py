"""What `dsocr ocr` reads: image files (multi-page TIFF included), PDFs, directories and list files.

`discover` turns the user's inputs into `Source`s (one per document, each with a unique output
name) and a list of problems; `open_document` opens one source and renders its pages as RGB
images. PDFs are rendered with pypdfium2 at 144 dpi by default, as the official PDF script
renders them with PyMuPDF (`Matrix(2, 2)`, no alpha) (spec §4). Every problem is a one-line
`DsocrError` that names the file, so a batch can report it and go on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dsocr.errors import DsocrError
from dsocr.processing.images import MAX_IMAGE_PIXELS, load_image, open_image_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
PDF_SUFFIX = ".pdf"
SUPPORTED_SUFFIXES = (*IMAGE_SUFFIXES, PDF_SUFFIX)

DEFAULT_DPI = 144
"""The official PDF script renders pages at 144 dpi (PyMuPDF `Matrix(2, 2)`)."""

MAX_DPI = 1200


@dataclass
class Source:
    """One document to read: a file or an in-memory image.

    `name` is how messages refer to it (the path as given); `stem` is its output folder name,
    unique within one run.
    """

    name: str
    stem: str
    path: Path | None = None
    image: Image.Image | None = None

    @property
    def kind(self) -> str:
        """"pdf", "tiff" (pages), or "image" (a single page)."""
        if self.path is None:
            return "image"
        suffix = self.path.suffix.lower()
        if suffix == PDF_SUFFIX or (suffix not in IMAGE_SUFFIXES and _looks_like_pdf(self.path)):
            return "pdf"
        return "tiff" if suffix in TIFF_SUFFIXES else "image"

    @property
    def paged(self) -> bool:
        """Whether `--pages` applies: PDFs and TIFFs; a plain image is always one page."""
        return self.kind in ("pdf", "tiff")


def _looks_like_pdf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(5) == b"%PDF-"
    except OSError:
        return False


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---- discovery --------------------------------------------------------------------------


def discover(
    inputs: Iterable[str | os.PathLike | Image.Image], exclude: str | os.PathLike | None = None
) -> tuple[list[Source], list[tuple[str, str]]]:
    """The documents named by `inputs`, in order, and `(name, message)` for each input that
    cannot be used (the message starts with the name).

    An input is an image or PDF file, a directory (searched recursively, in sorted order, for
    files with a supported suffix; hidden files skipped), a list file `@FILE` (one input per
    line; blank lines and `#` comments skipped; relative paths are relative to the list file's
    folder) or a PIL image. A file named more than once is read once. Files under `exclude`
    (the output folder) are never inputs.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    sources: list[Source] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    stems: set[str] = set()

    def add_path(path: Path, name: str) -> None:
        resolved = path.resolve()
        if resolved in seen:
            return
        seen.add(resolved)
        sources.append(Source(name, _unique_stem(path.stem, stems), path=path))

    for index, item in enumerate(inputs, start=1):
        if isinstance(item, Image.Image):
            sources.append(Source(f"<image {index}>", _unique_stem(f"image-{index}", stems), image=item))
            continue
        text = os.fspath(item)
        if isinstance(item, str) and text.startswith("@"):
            entries, problem = _read_list_file(Path(text[1:]))
            if problem:
                problems.append((_one_line(text), problem))
            for entry in entries:
                _expand(entry, str(entry), excluded, add_path, problems)
            continue
        _expand(Path(text), _one_line(text), excluded, add_path, problems)
    return sources, problems


def _expand(path: Path, name: str, excluded: Path | None, add_path, problems: list[tuple[str, str]]) -> None:
    """Add a file, or the supported files under a directory; record why not otherwise."""
    if path.is_dir():
        files = list(_walk(path, excluded))
        if not files:
            problems.append((name, f"{name}: no {', '.join(s[1:] for s in SUPPORTED_SUFFIXES)} files in this directory"))
        for file in files:
            add_path(file, _one_line(file))
    elif path.is_file():
        if excluded is None or not _is_under(path.resolve(), excluded):
            add_path(path, name)
    elif path.exists():
        problems.append((name, f"{name}: not a regular file"))
    else:
        problems.append((name, f"{name}: no such file or directory"))


def _walk(directory: Path, excluded: Path | None) -> Iterable[Path]:
    """Supported files under `directory`, sorted, recursively; hidden entries and `excluded` skipped."""
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if excluded is not None and _is_under(path.resolve(), excluded):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            yield path


def _is_under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_list_file(path: Path) -> tuple[list[Path], str | None]:
    """Paths listed in a list file, and a problem message when it cannot be read."""
    name = _one_line(f"@{path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], f"{name}: no such list file"
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"{name}: cannot read the list file ({_one_line(getattr(exc, 'strerror', None) or exc)})"
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    if not entries:
        return [], f"{name}: the list file names no inputs"
    return entries, None


def _unique_stem(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem-2`, `stem-3`... when an earlier document of the run has it."""
    stem = stem or "document"
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate)
    return candidate


# ---- page selection ---------------------------------------------------------------------

_RANGE = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d+)?\s*)?$")


def parse_pages(spec: str | Iterable[int] | None) -> list[tuple[int, int | None]] | None:
    """A page selection such as "1-5,8,10-" as 1-based inclusive ranges (None end: to the last page).

    An iterable of ints selects those pages. None selects every page.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        pages = list(spec)
        if not pages or any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in pages):
            raise DsocrError(f"invalid page selection {pages!r}: expected page numbers from 1")
        return [(p, p) for p in pages]
    ranges = []
    for item in spec.split(","):
        match = _RANGE.match(item)
        if not match:
            raise DsocrError(f"invalid page selection {spec!r}: expected items like 3, 1-5 or 8- separated by commas")
        start = int(match.group(1))
        end = None if match.group(2) and match.group(3) is None else int(match.group(3) or start)
        if start < 1 or (end is not None and end < start):
            raise DsocrError(f"invalid page selection {spec!r}: {item.strip()!r} is not a range of pages from 1")
        ranges.append((start, end))
    return ranges


def select_pages(ranges: Sequence[tuple[int, int | None]] | None, count: int) -> list[int]:
    """The sorted page numbers `ranges` selects in a document of `count` pages.

    A page beyond the document is an error (the message gives the document's page count).
    """
    if ranges is None:
        return list(range(1, count + 1))
    pages: set[int] = set()
    for start, end in ranges:
        last = count if end is None else end
        if start > count or last > count:
            beyond = start if start > count else last
            raise DsocrError(f"page {beyond} is beyond the document's {count} page{'s' if count != 1 else ''}")
        pages.update(range(start, last + 1))
    return sorted(pages)


# ---- opening and rendering ----------------------------------------------------------------


class Document:
    """An open document: `page_count` pages, `page(n)` renders page n (1-based) as RGB."""

    page_count: int = 1

    def __init__(self, source: Source) -> None:
        self.source = source

    def page(self, number: int) -> Image.Image:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Document":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_number(self, number: int) -> None:
        if not 1 <= number <= self.page_count:
            raise DsocrError(f"{self.source.name}: no page {number} (it has {self.page_count})")


class ImageDocument(Document):
    """A single image (a file or a PIL image), decoded only when its page is asked for."""

    def page(self, number: int) -> Image.Image:
        self._check_number(number)
        return load_image(self.source.image if self.source.image is not None else self.source.path)


class TiffDocument(Document):
    """A TIFF, one page per frame."""

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self._image = _open_pillow(source)
        try:
            self.page_count = getattr(self._image, "n_frames", 1)
        except Exception as exc:  # corrupt frame chain
            self._image.close()
            raise DsocrError(f"{source.name}: corrupt TIFF ({_one_line(exc)})") from None

    def page(self, number: int) -> Image.Image:
        self._check_number(number)
        try:
            self._image.seek(number - 1)
            frame = self._image.copy()
        except Exception as exc:
            raise DsocrError(f"{self.source.name}: page {number}: corrupt TIFF frame ({_one_line(exc)})") from None
        frame.filename = f"{self.source.name} page {number}"
        return load_image(frame)

    def close(self) -> None:
        self._image.close()


class PdfDocument(Document):
    """A PDF rendered with pypdfium2 at `dpi` (white background, RGB, no alpha)."""

    def __init__(self, source: Source, dpi: float = DEFAULT_DPI) -> None:
        super().__init__(source)
        self.scale = dpi / 72
        self._pdf = _open_pdf(source)
        self.page_count = len(self._pdf)
        if self.page_count == 0:
            self._pdf.close()
            raise DsocrError(f"{source.name}: the PDF has no pages")

    def page(self, number: int) -> Image.Image:
        import pypdfium2 as pdfium

        self._check_number(number)
        name = f"{self.source.name}: page {number}"
        try:
            page = self._pdf[number - 1]
            try:
                width, height = page.get_size()
                pixels = round(width * self.scale) * round(height * self.scale)
                if pixels > MAX_IMAGE_PIXELS:
                    raise DsocrError(f"{name}: too large to render at this dpi ({pixels} pixels, limit {MAX_IMAGE_PIXELS})")
                bitmap = page.render(scale=self.scale, fill_color=(255, 255, 255, 255))
                image = bitmap.to_pil().convert("RGB")
                bitmap.close()
            finally:
                page.close()
        except pdfium.PdfiumError as exc:
            raise DsocrError(f"{name}: cannot render ({_one_line(exc)})") from None
        return image

    def close(self) -> None:
        self._pdf.close()


def open_document(source: Source, dpi: float = DEFAULT_DPI) -> Document:
    """Open `source` for reading its pages; a one-line `DsocrError` naming it when it cannot be."""
    if not 0 < dpi <= MAX_DPI:
        raise DsocrError(f"dpi must be between 1 and {MAX_DPI}, got {dpi}")
    if source.path is not None and not source.path.exists():
        raise DsocrError(f"{source.name}: no such file")
    kind = source.kind
    if kind == "pdf":
        return PdfDocument(source, dpi)
    if kind == "tiff":
        return TiffDocument(source)
    return ImageDocument(source)


def _open_pdf(source: Source):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(source.path))
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise DsocrError(f"{source.name}: the PDF is encrypted (password-protected); decrypt it first") from None
        raise DsocrError(f"{source.name}: corrupt or unreadable PDF ({_one_line(message)})") from None
    except OSError as exc:
        raise DsocrError(f"{source.name}: cannot open ({_one_line(exc.strerror or exc)})") from None


def _open_pillow(source: Source) -> Image.Image:
    return open_image_file(source.path, source.name)
