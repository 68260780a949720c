"""DeepSeek-OCR's grounded output: parse it into blocks, turn it into clean Markdown, draw it.

In the grounded prompts (`markdown`, `ocr`) the model writes every layout block as
`<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` followed by the block's content
up to the next tag (spec §6). Coordinates are integers in 0..999 ("1000 bins") and map to
pixels as `int(v / 999 * W)`. Tables come as HTML and formulas as LaTeX `\\[...\\]`; both are
kept verbatim.

Nothing here ever evaluates model output: the box list is read by a strict regular grammar.
A tag that does not follow it (truncated at the length limit, garbage or out-of-range numbers
inside `<|det|>`, an inverted box) is left in the text as it is and reported in `warnings`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

MAX_COORD = 999
"""Largest normalised coordinate; `int(v / 999 * W)` maps it to the image width."""

PAGE_SPLIT = "\n<--- Page Split --->\n"
"""The official PDF script's separator between pages in a document's Markdown."""

GROUNDING_MARKERS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")

# One complete tag. Neither the label nor the box list may contain another `<|` marker, so a
# truncated tag never swallows the next one.
_NO_MARKER = r"(?:(?!<\|).)*?"
_TAG = re.compile(
    rf"<\|ref\|>(?P<label>{_NO_MARKER})<\|/ref\|>\s*<\|det\|>(?P<det>{_NO_MARKER})<\|/det\|>", re.DOTALL
)
_INT = r"\s*(-?\d{1,9})\s*"
_BOX = rf"\[{_INT},{_INT},{_INT},{_INT}\]"
_BOX_LIST = re.compile(rf"\s*\[\s*{_BOX}(?:\s*,\s*{_BOX})*\s*\]\s*")
_ONE_BOX = re.compile(_BOX)
_MARKER = re.compile("|".join(re.escape(m) for m in GROUNDING_MARKERS))

Box = tuple[int, int, int, int]


@dataclass
class Block:
    """One layout block: its label (None for text before the first tag or without grounding),
    its boxes in pixels of the page and in the model's 0..999 bins, and its content."""

    label: str | None
    boxes: list[Box] = field(default_factory=list)
    text: str = ""
    coords: list[Box] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # files cropped from `image` blocks (relative links)

    def to_dict(self) -> dict:
        out = {"label": self.label, "boxes": [list(b) for b in self.boxes], "coords": [list(c) for c in self.coords],
               "text": self.text}
        if self.images:
            out["images"] = list(self.images)
        return out


@dataclass
class _Piece:
    """A stretch of the raw output: a valid tag (with its block), a malformed tag, or plain text."""

    text: str
    block: Block | None = None
    malformed: bool = False  # a complete but invalid tag, already warned about; text like the rest


@dataclass
class Grounding:
    """The parsed output of one page."""

    blocks: list[Block]
    warnings: list[str]
    pieces: list[_Piece]  # the raw output in order, for rebuilding Markdown

    @property
    def boxes(self) -> list[tuple[str, Box]]:
        """Every (label, pixel box) in reading order."""
        return [(b.label or "", box) for b in self.blocks for box in b.boxes]


def parse_box_list(det: str) -> list[Box] | None:
    """`[[x1, y1, x2, y2], ...]` as a list of int tuples, or None when `det` is not exactly that."""
    if not _BOX_LIST.fullmatch(det):
        return None
    return [tuple(int(v) for v in m.groups()) for m in _ONE_BOX.finditer(det)]


def _box_problem(box: Box) -> str | None:
    x1, y1, x2, y2 = box
    if any(v < 0 or v > MAX_COORD for v in box):
        return f"coordinates outside 0..{MAX_COORD}: {list(box)}"
    if x2 < x1 or y2 < y1:
        return f"inverted box: {list(box)}"
    return None


def to_pixels(box: Box, width: int, height: int) -> Box:
    """Map a 0..999 box to pixels with the official `int(v / 999 * size)`."""
    x1, y1, x2, y2 = box
    return (int(x1 / MAX_COORD * width), int(y1 / MAX_COORD * height),
            int(x2 / MAX_COORD * width), int(y2 / MAX_COORD * height))


def _check_tag(label: str, det: str) -> tuple[list[Box] | None, str | None]:
    """The tag's boxes, or None and the reason it is malformed."""
    if not label.strip():
        return None, "empty label"
    boxes = parse_box_list(det)
    if boxes is None:
        return None, f"box list is not [[x1, y1, x2, y2], ...]: {_short(det)!r}"
    for box in boxes:
        problem = _box_problem(box)
        if problem:
            return None, problem
    return boxes, None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_grounding(text: str, width: int, height: int) -> Grounding:
    """Split a raw output into blocks; never raises on any `text`.

    `width`, `height`: the page in pixels, for the boxes. Each valid tag opens a block whose
    content runs to the next valid tag (its surrounding whitespace stripped in `Block.text`).
    Text before the first tag becomes a block with label None. Malformed tags and stray
    markers stay in the content and are listed in `warnings`.
    """
    warnings: list[str] = []
    pieces: list[_Piece] = []
    position = 0
    for match in _TAG.finditer(text):
        label, det = match.group("label"), match.group("det")
        boxes, problem = _check_tag(label, det)
        if match.start() > position:
            pieces.append(_Piece(text[position:match.start()]))
        if problem:
            warnings.append(f"malformed grounding tag at character {match.start()} ({problem}); kept as text")
            pieces.append(_Piece(match.group(0), malformed=True))
        else:
            block = Block(label.strip(), [to_pixels(b, width, height) for b in boxes], coords=list(boxes))
            pieces.append(_Piece(match.group(0), block))
        position = match.end()
    if position < len(text):
        pieces.append(_Piece(text[position:]))
    warnings += _stray_markers(pieces)

    blocks: list[Block] = []
    current: Block | None = None
    content: list[str] = []
    for piece in pieces:
        if piece.block is not None:
            _close(current, content, blocks)
            current, content = piece.block, []
        else:
            content.append(piece.text)
    _close(current, content, blocks)
    return Grounding(blocks, warnings, pieces)


def _close(block: Block | None, content: list[str], blocks: list[Block]) -> None:
    text = "".join(content).strip()
    if block is None:
        if text:
            blocks.append(Block(None, text=text))
        return
    block.text = text
    blocks.append(block)


def _stray_markers(pieces: Sequence[_Piece]) -> list[str]:
    """One warning per incomplete tag left in plain text (a tag truncated at the length limit,
    a lone `<|/det|>`...). Markers that follow each other in tag order count as one tag."""
    warnings = []
    offset = 0
    for piece in pieces:
        if piece.block is None and not piece.malformed:
            start = previous = None
            for m in _MARKER.finditer(piece.text):
                order = GROUNDING_MARKERS.index(m.group(0))
                if start is None or order != previous + 1:
                    if start is not None:
                        warnings.append(_incomplete(piece.text, start, offset))
                    start = m.start()
                previous = order
            if start is not None:
                warnings.append(_incomplete(piece.text, start, offset))
        offset += len(piece.text)
    return warnings


def _incomplete(text: str, start: int, offset: int) -> str:
    return f"incomplete grounding tag at character {offset + start}: {_short(text[start:])!r}; kept as text"


def clean_latex(text: str) -> str:
    """The official replacements: `\\coloneqq` -> `:=`, `\\eqqcolon` -> `=:`."""
    return text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")


def collapse_newlines(text: str) -> str:
    """Runs of three or more newlines become one blank line (the PDF script's collapsing)."""
    return re.sub(r"\n{3,}", "\n\n", text)


def to_markdown(
    grounding: Grounding, image_link: Callable[[Block, int], str] | None = None, *, labels_are_text: bool = False
) -> str:
    """Clean Markdown: tags removed, each box of an `image` block replaced by `![](LINK)`.

    `image_link(block, k)` names the k-th box (0-based) of an image block (an empty name: no
    link); without it image blocks are simply removed like the other tags. `labels_are_text`: the labels are the
    recognised text itself (the `ocr` and `locate` prompts), so each tag is replaced by its
    label instead of being removed. Malformed tags stay as they are (they are text). The
    official LaTeX replacements and newline collapsing are applied; the result is stripped.
    """
    parts = []
    for piece in grounding.pieces:
        block = piece.block
        if block is None:
            parts.append(piece.text)
        elif block.label == "image" and image_link is not None:
            links = (image_link(block, k) for k in range(len(block.boxes)))
            parts.append("".join(f"![]({link})\n" for link in links if link))
        elif labels_are_text:
            parts.append(block.label or "")
    return collapse_newlines(clean_latex("".join(parts))).strip()


def join_pages(pages: Sequence[str]) -> str:
    """A document's Markdown: its pages joined with the official page separator."""
    return PAGE_SPLIT.join(page.strip() for page in pages)


# ---- visualisation ----------------------------------------------------------------------

LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "title": (220, 20, 60),
    "sub_title": (255, 140, 0),
    "text": (30, 144, 255),
    "table": (34, 139, 34),
    "image": (148, 0, 211),
    "image_caption": (199, 21, 133),
    "table_caption": (0, 139, 139),
    "equation": (184, 134, 11),
}
"""Fixed colours for the labels seen in practice; other labels get a stable hashed colour."""

FILL_ALPHA = 20


def label_color(label: str) -> tuple[int, int, int]:
    """One colour per label, the same in every run."""
    if label in LABEL_COLORS:
        return LABEL_COLORS[label]
    h = zlib.crc32(label.encode("utf-8"))
    return (64 + h % 160, 64 + (h >> 8) % 160, 64 + (h >> 16) % 160)


def draw_grounding(image: Image.Image, boxes: Sequence[tuple[str, Box]]) -> Image.Image:
    """The page with its labelled boxes, as the official visualisation: outline width 4 for
    `title` and 2 otherwise, a translucent fill (alpha 20), the label at (x1, max(0, y1 - 15))."""
    page = image.convert("RGBA")
    fill = Image.new("RGBA", page.size, (0, 0, 0, 0))
    fill_draw = ImageDraw.Draw(fill)
    for label, box in boxes:
        fill_draw.rectangle(box, fill=(*label_color(label), FILL_ALPHA))
    page = Image.alpha_composite(page, fill)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    for label, (x1, y1, x2, y2) in boxes:
        color = label_color(label)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=4 if label == "title" else 2)
        _draw_label(draw, (x1, max(0, y1 - 15)), label, color, font)
    return page.convert("RGB")


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], label: str, color, font) -> None:
    """Draw a label; Pillow's built-in bitmap font knows Latin-1 only, so fall back to ASCII."""
    try:
        draw.text(xy, label, fill=color, font=font)
    except UnicodeError:
        draw.text(xy, label.encode("ascii", "replace").decode("ascii"), fill=color, font=font)
