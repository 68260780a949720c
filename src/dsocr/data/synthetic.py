"""Synthetic document pages with exact ground truth, for training and for testing the pipeline.

`render_page(seed, config)` draws one page with Pillow: a title, then paragraphs, sub-titles,
bullet or numbered lists and ruled tables, in one or two columns, in one of the available font
families (`dsocr.data.fonts`) at a random size. The text is pseudo-English drawn from a built-in
word list, with optional numbers and punctuation. Everything is decided by one
`random.Random(seed)`, so the same seed and config give the same pixels and the same texts (on
the same Pillow/FreeType build and font files).

Ground truth, for the two standard prompts:

- **plain text** (`<image>\\nFree OCR.`): the blocks in reading order (title, then each column
  top to bottom), separated by a blank line. A paragraph is one line (its wrapping is undone),
  a list item is one line with its visible marker (`• ` or `3. `), a table is one line per row
  with its cells separated by single spaces.
- **grounded Markdown** (`<image>\\n<|grounding|>Convert the document to markdown.`), in
  DeepSeek-OCR's output format: every block is
  `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` followed by a newline and its
  content, blocks separated by a blank line. Labels: `title` (`# Title`), `sub_title`
  (`## Heading`), `text`, `list` (`- item` or `1. item` lines) and `table`
  (`<table><tr><td>..</td></tr></table>`, header row included as a plain row).

Boxes are exact: each block is drawn on its own mask, and its pixel box is the bounding box of
that mask's ink (x2/y2 exclusive). Outside the boxes the clean page is pure background.
In the Markdown the box is written in DeepSeek-OCR's 1000 bins (`to_bins`):
`x1 = floor(x1 * 999 / W)` and `x2 = ceil(x2 * 999 / W)` (likewise y with H), clamped to
0..999. Rounding outwards means the official decoding `int(v / 999 * W)` gives back a box that
contains the pixel box (to within the one pixel that `int` may lose).

Degradations, applied after drawing in this order: rotation by a small random angle about the
page centre (the boxes become the axis-aligned bounds of the rotated boxes grown by two pixels
for the bicubic resampling, so they still cover the text but are looser than a tight box; the
corners uncovered by the turn are filled with the background), Gaussian blur (boxes
unchanged: blur spreads ink by about its radius) and additive Gaussian noise.
`SyntheticPage.clean_image` keeps the page before them, with `Block.clean_box`.

`generate_dataset` writes PNG pages and a manifest (`dsocr.data.manifest`); `main(argv)` is
its command line (`dsocr synth` wraps it).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dsocr.data.fonts import DEFAULT_FAMILY, available_families, get_font
from dsocr.data.manifest import Box, Sample, write_manifest
from dsocr.errors import DsocrError
from dsocr.processing.prompts import PRESETS

FREE_OCR_PROMPT = PRESETS["free"]
MARKDOWN_PROMPT = PRESETS["markdown"]
TASKS = ("both", "free", "markdown")
BINS = 999
"""Largest normalised coordinate (DeepSeek-OCR's "1000 bins")."""

LABELS = ("title", "sub_title", "text", "list", "table")

WORDS = tuple(dict.fromkeys("""
the of and to in is for that with as on by this be are from at an or which it can not was has have
all one more these their also other two may new used between each such into than only both most
system data model method results time number first based using however large work used example
field value set process form high level type order three well part paper state general small case
point different given function study each shown group analysis section table figure design total
water energy light paper world market report local power early area line rate change method common
human public social today during under after before while where because through without within
against among around about above below across along toward upon since until again never always often
simple strong short long early late clear close direct final major minor normal open real recent
single special standard various whole ancient modern central natural physical political economic
history science nature policy theory practice growth trade region country city village river forest
mountain ocean island valley season winter summer spring autumn morning evening night garden house
school office library museum station bridge road street market harbor factory machine engine signal
network memory image sound voice music story letter record account method measure effect result
reason question answer problem solution element feature surface structure pattern texture colour
center edge corner border margin column row cell page chapter volume issue note summary review
people family friend teacher student worker leader member writer reader doctor farmer builder
travel build create show give keep hold bring carry follow allow begin continue remain become
describe explain consider provide require include improve increase reduce support present produce
""".split()))
"""The built-in vocabulary (about 400 common English words)."""

TITLE_WORDS_MIN, TITLE_WORDS_MAX = 2, 7


@dataclass(frozen=True)
class SynthConfig:
    """How pages look. Sizes are in pixels; ranges are inclusive (low, high)."""

    width: int = 768
    height: int = 1024
    margin: float = 0.07
    """Page margin as a fraction of the width."""
    columns: int = 1
    """1 or 2 text columns (the title always spans the page)."""
    font_size: tuple[int, int] = (14, 22)
    """Body text size range; titles are 1.6-2.2x, sub-titles 1.25x the body size."""
    families: tuple[str, ...] | None = None
    """Font families to choose from (`dsocr.data.fonts.FAMILIES`); None = all available."""
    lists: bool = True
    tables: bool = True
    digits: float = 0.08
    """Probability that a word is a number instead."""
    punctuation: float = 0.08
    """Probability of a comma, semicolon or colon after a word."""
    rotation: float = 0.0
    """Largest rotation angle in degrees; the page turns by a uniform angle in [-rotation, rotation]."""
    blur: float = 0.0
    """Gaussian blur radius in pixels (0 = none)."""
    noise: float = 0.0
    """Standard deviation of additive Gaussian noise, in 0..255 grey levels (0 = none)."""
    max_blocks: int = 40
    vocabulary: int = 0
    """Draw words from only the first N words of the built-in list (0 = all of them)."""

    @property
    def words(self) -> tuple[str, ...]:
        return WORDS[: self.vocabulary] if self.vocabulary else WORDS

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise DsocrError(f"page size {self.width}x{self.height} is too small (at least 64x64)")
        if self.columns not in (1, 2):
            raise DsocrError(f"columns must be 1 or 2, got {self.columns}")
        low, high = self.font_size
        if not 4 <= low <= high:
            raise DsocrError(f"font_size must be a range (low, high) with 4 <= low <= high, got {self.font_size}")
        if not 0 <= self.margin < 0.4:
            raise DsocrError(f"margin must be a fraction in [0, 0.4), got {self.margin}")
        for name in ("digits", "punctuation"):
            if not 0 <= getattr(self, name) <= 1:
                raise DsocrError(f"{name} must be a probability in [0, 1]")
        for name in ("rotation", "blur", "noise"):
            if getattr(self, name) < 0:
                raise DsocrError(f"{name} must not be negative")
        if self.rotation > 45:
            raise DsocrError(f"rotation is meant for small angles (at most 45 degrees), got {self.rotation}")


@dataclass
class Block:
    """One block of a page: label, pixel boxes (final and before rotation), plain text, Markdown content."""

    label: str
    box: tuple[int, int, int, int]
    clean_box: tuple[int, int, int, int]
    text: str
    markdown: str
    bins: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class SyntheticPage:
    image: Image.Image
    clean_image: Image.Image
    blocks: list[Block]
    seed: int
    family: str
    angle: float
    background: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def plain_text(self) -> str:
        """The page's text in reading order (the `Free OCR.` target)."""
        return "\n\n".join(block.text for block in self.blocks)

    def markdown(self, grounded: bool = True) -> str:
        """The page as DeepSeek-OCR Markdown, with grounding tags (the `Convert the document to
        markdown.` target) or without."""
        parts = []
        for block in self.blocks:
            if grounded:
                x1, y1, x2, y2 = block.bins
                parts.append(f"<|ref|>{block.label}<|/ref|><|det|>[[{x1}, {y1}, {x2}, {y2}]]<|/det|>\n{block.markdown}")
            else:
                parts.append(block.markdown)
        return "\n\n".join(parts)

    def boxes(self) -> list[Box]:
        """The blocks as manifest boxes (pixels of `image`)."""
        return [Box(label=b.label, box=b.box, text=b.text) for b in self.blocks]


def to_bins(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """A pixel box (x2/y2 exclusive) in 0..999 bins, rounded outwards (see the module doc)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return (
        max(0, min(BINS, x1 * BINS // width)),
        max(0, min(BINS, y1 * BINS // height)),
        max(0, min(BINS, -(-x2 * BINS // width))),
        max(0, min(BINS, -(-y2 * BINS // height))),
    )


def from_bins(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """The official decoding of a 0..999 box into pixels: `int(v / 999 * size)`."""
    x1, y1, x2, y2 = box
    return (int(x1 / BINS * width), int(y1 / BINS * height), int(x2 / BINS * width), int(y2 / BINS * height))


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _word(rng: random.Random, config: SynthConfig) -> str:
    if config.digits and rng.random() < config.digits:
        kind = rng.random()
        if kind < 0.5:
            return str(rng.randint(0, 999))
        if kind < 0.8:
            return f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}"
        return str(rng.randint(1900, 2030))
    return rng.choice(config.words)


def sentence(rng: random.Random, config: SynthConfig, low: int = 6, high: int = 16) -> str:
    """One pseudo-English sentence: capitalised, optional inner punctuation, final full stop."""
    words = [_word(rng, config) for _ in range(rng.randint(low, high))]
    words[0] = words[0][:1].upper() + words[0][1:]
    if config.punctuation:
        for i in range(len(words) - 1):
            if rng.random() < config.punctuation:
                words[i] += rng.choice((",", ",", ",", ";", ":"))
    return " ".join(words) + rng.choice((".", ".", ".", ".", ".", "?", "!"))


def title_words(rng: random.Random, low: int = TITLE_WORDS_MIN, high: int = TITLE_WORDS_MAX,
                words: tuple[str, ...] = WORDS) -> list[str]:
    return [rng.choice(words).capitalize() for _ in range(rng.randint(low, high))]


# ---------------------------------------------------------------------------------------------
# Layout: blocks as drawing operations
# ---------------------------------------------------------------------------------------------


@dataclass
class _Style:
    family: str
    body: ImageFont.FreeTypeFont
    bold: ImageFont.FreeTypeFont
    title: ImageFont.FreeTypeFont
    sub_title: ImageFont.FreeTypeFont
    spacing: float
    gap: int
    bullet: str


@dataclass
class _Draft:
    """A laid-out block: its height and the text/lines to draw, plus its ground truth."""

    label: str
    height: int
    texts: list[tuple[float, float, str, Any]] = field(default_factory=list)  # (x, y, text, font)
    lines: list[tuple[float, float, float, float]] = field(default_factory=list)  # (x1, y1, x2, y2)
    text: str = ""
    markdown: str = ""


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _pitch(font: ImageFont.FreeTypeFont, spacing: float) -> int:
    return max(_line_height(font), round(_line_height(font) * spacing))


def _wrap(words: Sequence[str], font: ImageFont.FreeTypeFont, width: float) -> list[list[str]]:
    """Greedy word wrap; a word wider than `width` on its own is dropped (it could not be drawn)."""
    lines: list[list[str]] = []
    current: list[str] = []
    for word in words:
        if font.getlength(word) > width:
            continue
        if current and font.getlength(" ".join([*current, word])) > width:
            lines.append(current)
            current = []
        current.append(word)
    if current:
        lines.append(current)
    return lines


def _fit_lines(count: int, font: ImageFont.FreeTypeFont, spacing: float, max_height: float) -> int:
    """How many of `count` lines fit in `max_height`."""
    line, pitch = _line_height(font), _pitch(font, spacing)
    if max_height < line:
        return 0
    return min(count, 1 + int((max_height - line) // pitch))


def _text_lines_draft(label: str, lines: list[list[str]], font, x: float, y: float, spacing: float) -> _Draft:
    pitch = _pitch(font, spacing)
    draft = _Draft(label, height=(len(lines) - 1) * pitch + _line_height(font))
    for i, words in enumerate(lines):
        draft.texts.append((x, y + i * pitch, " ".join(words), font))
    return draft


def _title(rng, style: _Style, config: SynthConfig, x, y, width, max_height) -> _Draft | None:
    lines = _wrap(title_words(rng, words=config.words), style.title, width)[:3]
    lines = lines[: _fit_lines(len(lines), style.title, 1.15, max_height)]
    if not lines:
        return None
    draft = _text_lines_draft("title", lines, style.title, x, y, 1.15)
    text = " ".join(" ".join(line) for line in lines)
    draft.text, draft.markdown = text, f"# {text}"
    return draft


def _sub_title(rng, style: _Style, config: SynthConfig, x, y, width, max_height) -> _Draft | None:
    lines = _wrap(title_words(rng, 2, 5, config.words), style.sub_title, width)[:1]
    if not lines or _fit_lines(1, style.sub_title, 1.0, max_height) < 1:
        return None
    draft = _text_lines_draft("sub_title", lines, style.sub_title, x, y, 1.0)
    text = " ".join(lines[0])
    draft.text, draft.markdown = text, f"## {text}"
    return draft


def _paragraph(rng, style: _Style, config: SynthConfig, x, y, width, max_height) -> _Draft | None:
    words = " ".join(sentence(rng, config) for _ in range(rng.randint(1, 5))).split()
    lines = _wrap(words, style.body, width)
    lines = lines[: _fit_lines(len(lines), style.body, style.spacing, max_height)]
    if not lines:
        return None
    draft = _text_lines_draft("text", lines, style.body, x, y, style.spacing)
    text = " ".join(" ".join(line) for line in lines)
    draft.text = draft.markdown = text
    return draft


def _list(rng, style: _Style, config: SynthConfig, x, y, width, max_height) -> _Draft | None:
    font = style.body
    numbered = rng.random() < 0.4
    start = 1
    indent = font.getlength("00. ")
    pitch, line = _pitch(font, style.spacing), _line_height(font)
    draft = _Draft("list", height=0)
    plain, markdown = [], []
    row = 0  # lines used so far
    for k in range(rng.randint(2, 5)):
        item_lines = _wrap(sentence(rng, config, 3, 12).split(), font, width - indent)
        if not item_lines:
            continue
        needed = (row + len(item_lines) - 1) * pitch + line
        if needed > max_height:
            break
        marker = f"{start + k}." if numbered else style.bullet
        draft.texts.append((x, y + row * pitch, marker, font))
        for i, words in enumerate(item_lines):
            draft.texts.append((x + indent, y + (row + i) * pitch, " ".join(words), font))
        item = " ".join(" ".join(words) for words in item_lines)
        plain.append(f"{marker} {item}")
        markdown.append(f"{start + k}. {item}" if numbered else f"- {item}")
        row += len(item_lines)
        draft.height = needed
    if not plain:
        return None
    draft.text, draft.markdown = "\n".join(plain), "\n".join(markdown)
    return draft


def _table_cell(rng, config: SynthConfig) -> str:
    roll = rng.random()
    if roll < 0.35:
        return str(rng.randint(0, 9999))
    if roll < 0.5:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 9)}"
    if roll < 0.85:
        return rng.choice(config.words)
    return f"{rng.choice(config.words)} {rng.choice(config.words)}"


def _table(rng, style: _Style, config: SynthConfig, x, y, width, max_height) -> _Draft | None:
    font, bold = style.body, style.bold
    rows, cols = rng.randint(2, 6), rng.randint(2, 5)
    header = [rng.choice(config.words).capitalize() for _ in range(cols)]
    body = [[_table_cell(rng, config) for _ in range(cols)] for _ in range(rows - 1)]
    grid = [header, *body]
    pad = max(3, round(font.size / 3)) if hasattr(font, "size") else 4
    rule = 1
    row_height = _line_height(font) + 2 * pad

    def column_widths(n: int) -> list[int]:
        return [max(round((bold if r == 0 else font).getlength(grid[r][c])) for r in range(len(grid))) + 2 * pad
                for c in range(n)]

    while cols >= 2 and sum(column_widths(cols)) + (cols + 1) * rule > width:
        cols -= 1
    if cols < 2:
        return None
    widths = column_widths(cols)
    while rows >= 2 and rows * row_height + (rows + 1) * rule > max_height:
        rows -= 1
    if rows < 2:
        return None
    grid = [row[:cols] for row in grid[:rows]]

    total_width = sum(widths) + (cols + 1) * rule
    total_height = rows * row_height + (rows + 1) * rule
    draft = _Draft("table", height=total_height)
    xs = [x]
    for w in widths:
        xs.append(xs[-1] + rule + w)
    ys = [y + r * (row_height + rule) for r in range(rows + 1)]
    for yy in ys:
        draft.lines.append((x, yy, x + total_width - 1, yy))
    for xx in xs:
        draft.lines.append((xx, y, xx, y + total_height - 1))
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            draft.texts.append((xs[c] + rule + pad, ys[r] + rule + pad, cell, bold if r == 0 else font))
    draft.text = "\n".join(" ".join(row) for row in grid)
    draft.markdown = "<table>" + "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in grid) + "</table>"
    return draft


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------


def _choose_style(rng: random.Random, config: SynthConfig) -> _Style:
    families = list(config.families) if config.families else available_families()
    family = rng.choice(families)
    size = rng.randint(*config.font_size)
    title_size = round(size * rng.uniform(1.6, 2.2))
    sub_size = round(size * 1.25)
    regular = get_font(family, size)
    return _Style(
        family=family,
        body=regular,
        bold=get_font(family, size, "bold"),
        title=get_font(family, title_size, "bold"),
        sub_title=get_font(family, sub_size, "bold"),
        spacing=rng.uniform(1.15, 1.45),
        gap=round(size * rng.uniform(0.7, 1.3)),
        bullet="-" if family == DEFAULT_FAMILY else "•",
    )


def _layout(rng: random.Random, config: SynthConfig, style: _Style) -> list[_Draft]:
    W, H = config.width, config.height
    margin = round(W * config.margin)
    left, right, top, bottom = margin, W - margin, margin, H - margin
    drafts: list[_Draft] = []

    title = _title(rng, style, config, left, top, right - left, bottom - top)
    if title is None:
        return drafts
    drafts.append(title)
    y_start = top + title.height + round(style.gap * 1.5)

    gutter = round(margin * 0.6) if config.columns == 2 else 0
    column_width = (right - left - gutter) / config.columns
    kinds = ["text", "text", "text", "text", "sub_title"]
    if config.lists:
        kinds += ["list"]
    if config.tables:
        kinds += ["table"]

    for column in range(config.columns):
        x = left + column * (column_width + gutter)
        y = y_start
        failures = 0
        while len(drafts) < config.max_blocks and failures < 3:
            kind = rng.choice(kinds)
            if kind == "sub_title" and drafts[-1].label in ("title", "sub_title"):
                kind = "text"
            space = bottom - y
            if kind == "text":
                draft = _paragraph(rng, style, config, x, y, column_width, space)
            elif kind == "sub_title":
                draft = _sub_title(rng, style, config, x, y, column_width, space)
            elif kind == "list":
                draft = _list(rng, style, config, x, y, column_width, space)
            else:
                draft = _table(rng, style, config, x, y, column_width, space)
            if draft is None:
                failures += 1
                continue
            drafts.append(draft)
            y += draft.height + style.gap
    return drafts


def _draw(draft: _Draft, size: tuple[int, int]) -> Image.Image:
    """The block's ink as an L mask of the whole page."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for x, y, text, font in draft.texts:
        draw.text((x, y), text, fill=255, font=font)
    for x1, y1, x2, y2 in draft.lines:
        draw.line((x1, y1, x2, y2), fill=255, width=1)
    return mask


ROTATION_PAD = 2
"""Pixels added around a rotated box: bicubic resampling spreads ink by up to two pixels."""


def _rotate_box(box, angle: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Axis-aligned bounds of `box` after Pillow's `rotate(angle)` about the page centre, grown
    by `ROTATION_PAD` and clipped to the page."""
    x1, y1, x2, y2 = box
    cx, cy = width / 2, height / 2
    theta = np.deg2rad(angle)
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    xs, ys = [], []
    for px, py in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
        dx, dy = px - cx, py - cy
        # Pillow turns the picture counter-clockwise; with y pointing down a point moves to:
        xs.append(cx + dx * cos + dy * sin)
        ys.append(cy - dx * sin + dy * cos)
    return (
        max(0, int(np.floor(min(xs))) - ROTATION_PAD),
        max(0, int(np.floor(min(ys))) - ROTATION_PAD),
        min(width, int(np.ceil(max(xs))) + ROTATION_PAD),
        min(height, int(np.ceil(max(ys))) + ROTATION_PAD),
    )


def render_page(seed: int, config: SynthConfig | None = None) -> SyntheticPage:
    """One synthetic page; the same `seed` and `config` always give the same page."""
    config = config or SynthConfig()
    rng = random.Random(seed)
    style = _choose_style(rng, config)
    paper = rng.randint(236, 255)
    background = (paper, paper, max(200, paper - rng.randint(0, 8)))
    ink = rng.randint(0, 60)
    ink_color = (ink, ink, min(255, ink + rng.randint(0, 30)))
    title_color = ink_color if rng.random() < 0.6 else (rng.randint(0, 40), rng.randint(0, 60), rng.randint(60, 120))

    drafts = _layout(rng, config, style)
    size = (config.width, config.height)
    page = Image.new("RGB", size, background)
    blocks: list[Block] = []
    for draft in drafts:
        mask = _draw(draft, size)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        page.paste(title_color if draft.label in ("title", "sub_title") else ink_color, mask=mask)
        blocks.append(Block(draft.label, box=bbox, clean_box=bbox, text=draft.text, markdown=draft.markdown))
    clean = page.copy()

    angle = rng.uniform(-config.rotation, config.rotation) if config.rotation > 0 else 0.0
    noise_seed = rng.getrandbits(63)
    if angle:
        page = page.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=background)
        for block in blocks:
            block.box = _rotate_box(block.clean_box, angle, *size)
    if config.blur > 0:
        page = page.filter(ImageFilter.GaussianBlur(config.blur))
    if config.noise > 0:
        pixels = np.asarray(page, dtype=np.float32)
        pixels = pixels + np.random.default_rng(noise_seed).normal(0.0, config.noise, pixels.shape)
        page = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    for block in blocks:
        block.bins = to_bins(block.box, *size)
    return SyntheticPage(page, clean, blocks, seed=seed, family=style.family, angle=angle, background=background)


def page_seed(seed: int, index: int) -> int:
    """The seed of page `index` of a dataset made with `seed` (stable across Python versions)."""
    digest = hashlib.sha256(f"dsocr-synth:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def iter_pages(n: int, seed: int = 0, config: SynthConfig | None = None) -> Iterator[SyntheticPage]:
    for index in range(n):
        yield render_page(page_seed(seed, index), config)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def page_samples(page: SyntheticPage, image: str | Path, page_id: str, task: str = "both",
                 meta: dict[str, Any] | None = None) -> list[Sample]:
    """Manifest samples of one page saved as `image`: `Free OCR.` and/or grounded Markdown."""
    if task not in TASKS:
        raise DsocrError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    meta = dict(meta or {})
    out = []
    if task in ("both", "free"):
        out.append(Sample(images=[Path(image)], prompt=FREE_OCR_PROMPT, target=page.plain_text(),
                          boxes=page.boxes(), id=f"{page_id}-free" if task == "both" else page_id, meta=meta))
    if task in ("both", "markdown"):
        out.append(Sample(images=[Path(image)], prompt=MARKDOWN_PROMPT, target=page.markdown(grounded=True),
                          boxes=page.boxes(), id=f"{page_id}-markdown" if task == "both" else page_id, meta=meta))
    return out


def generate_dataset(out_dir: str | Path, n: int, seed: int = 0, *, config: SynthConfig | None = None,
                     task: str = "both", manifest_name: str = "manifest.jsonl") -> Path:
    """Render `n` pages into `out_dir/images/page-NNNNNN.png` and write `out_dir/manifest_name`.

    `task`: `both` (two samples per page, ids `page-NNNNNN-free` / `-markdown`), `free` or
    `markdown` (one sample per page, id `page-NNNNNN`). Returns the manifest path.
    """
    if n < 0:
        raise DsocrError(f"the number of pages must not be negative, got {n}")
    if task not in TASKS:
        raise DsocrError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for index, page in enumerate(iter_pages(n, seed, config)):
        page_id = f"page-{index:06d}"
        image_path = images_dir / f"{page_id}.png"
        page.image.save(image_path, format="PNG")
        meta = {"source": "synthetic", "seed": seed, "index": index, "font": page.family,
                "angle": round(page.angle, 4), "width": config.width, "height": config.height}
        samples.extend(page_samples(page, image_path, page_id, task, meta))
    return write_manifest(out_dir / manifest_name, samples)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dsocr synth` (shared by `main` and `dsocr.cli.synth`)."""
    defaults = SynthConfig()
    parser.add_argument("out_dir", help="output folder (images/ and the manifest are written there)")
    parser.add_argument("-n", "--pages", type=int, default=100, help="number of pages")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same pages")
    parser.add_argument("--task", choices=TASKS, default="both",
                        help="samples per page: Free OCR, grounded Markdown, or both")
    parser.add_argument("--width", type=int, default=defaults.width, help="page width in pixels")
    parser.add_argument("--height", type=int, default=defaults.height, help="page height in pixels")
    parser.add_argument("--columns", type=int, choices=(1, 2), default=defaults.columns, help="text columns")
    parser.add_argument("--font-size", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(defaults.font_size),
                        help="body font size range in pixels")
    parser.add_argument("--fonts", default=None,
                        help="comma-separated font families (sans, serif, mono, default); default: all available")
    parser.add_argument("--no-lists", action="store_true", help="no bullet or numbered lists")
    parser.add_argument("--no-tables", action="store_true", help="no tables")
    parser.add_argument("--digits", type=float, default=defaults.digits, help="probability of a number word")
    parser.add_argument("--punctuation", type=float, default=defaults.punctuation,
                        help="probability of punctuation after a word")
    parser.add_argument("--rotation", type=float, default=defaults.rotation, help="largest rotation in degrees")
    parser.add_argument("--blur", type=float, default=defaults.blur, help="Gaussian blur radius in pixels")
    parser.add_argument("--noise", type=float, default=defaults.noise, help="Gaussian noise std in grey levels")
    parser.add_argument("--vocabulary", type=int, default=0, metavar="N",
                        help="use only the first N words of the built-in word list (0 = all)")
    parser.add_argument("--manifest", default="manifest.jsonl", help="manifest file name inside OUT_DIR")
    parser.add_argument("--shards", type=int, default=0, metavar="N",
                        help="also pack the samples into tar shards of N samples in OUT_DIR/shards")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    families = tuple(f.strip() for f in args.fonts.split(",") if f.strip()) if args.fonts else None
    return SynthConfig(
        width=args.width, height=args.height, columns=args.columns, font_size=tuple(args.font_size),
        families=families, lists=not args.no_lists, tables=not args.no_tables, digits=args.digits,
        punctuation=args.punctuation, rotation=args.rotation, blur=args.blur, noise=args.noise,
        vocabulary=args.vocabulary,
    )


def run(args: argparse.Namespace) -> int:
    """Carry out parsed `dsocr synth` arguments; errors are raised as `DsocrError`."""
    from dsocr.data.fonts import FAMILIES

    if args.fonts:
        for family in args.fonts.split(","):
            if family.strip() and family.strip() not in (*FAMILIES, DEFAULT_FAMILY):
                raise DsocrError(f"unknown font family {family.strip()!r}; "
                                 f"use {', '.join((*FAMILIES, DEFAULT_FAMILY))}")
    config = config_from_args(args)
    manifest = generate_dataset(args.out_dir, args.pages, args.seed, config=config, task=args.task,
                                manifest_name=args.manifest)
    print(f"wrote {args.pages} page(s) and {manifest}")
    if args.shards:
        from dsocr.data.manifest import read_manifest, write_shards

        shards = write_shards(read_manifest(manifest), Path(args.out_dir) / "shards", args.shards)
        print(f"wrote {len(shards)} shard(s) in {Path(args.out_dir) / 'shards'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone command line: `python -m dsocr.data.synthetic OUT_DIR -n 100 --seed 0`."""
    parser = argparse.ArgumentParser(prog="dsocr synth", description="Render synthetic document pages with "
                                     "exact plain-text and grounded-Markdown ground truth, and a manifest.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DsocrError as exc:
        print(f"dsocr synth: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
