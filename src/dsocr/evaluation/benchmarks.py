"""Benchmark annotations -> manifest `Sample`s: the Fox benchmark and OmniDocBench.

Fox (github.com/ucaslcl/Fox, data `focus_benchmark_test.zip`)
--------------------------------------------------------------
Each task is a JSON file holding a list of conversations, one per question, with the images in a
sibling folder (`en_page_ocr.json` goes with `en_pdf_png/`, `cn_page_ocr.json` with
`cn_pdf_png/`, `*_onbox_ocr.json` with `*_pdf_png_onbox/`)::

    [{"image": "en_1.png",
      "conversations": [{"from": "human", "value": "<image>\\n<prompt>"},
                        {"from": "gpt", "value": "<ground-truth text>"}]},
     ...]

Some files carry extra keys (e.g. a token count `len`); they are kept in `Sample.meta`. Fox's
evaluation scripts read `image`, `conversations[0]["value"]` (the prompt) and
`conversations[1]["value"]` (the ground truth). The DeepSeek-OCR paper evaluates the English
page-OCR pages with the prompt `<image>\\nFree OCR.`, which `load_fox` substitutes by default
(`prompt=None` keeps the annotation's own prompt; the box- and line-level tasks need that,
because their box is written in the prompt).

OmniDocBench (github.com/opendatalab/OmniDocBench, `OmniDocBench.json` + `images/`)
----------------------------------------------------------------------------------
One JSON list, one object per page::

    {"layout_dets": [{"category_type": "text_block",
                      "poly": [x1, y1, x2, y1, x2, y2, x1, y2],   # 4 corners, pixels
                      "ignore": false, "order": 0, "anno_id": 0,
                      "text": "...", "latex": "...", "html": "...",   # as the category needs
                      "attribute": {...}, "line_with_spans": [...], "merge_list": [...]}, ...],
     "page_info": {"page_no": 0, "height": 1684, "width": 1200, "image_path": "xxx.jpg",
                   "page_attribute": {"data_source": "...", "language": "...", "layout": "..."}},
     "extra": {"relation": [...]}}

`load_omnidocbench` keeps the blocks that are not `ignore`d and not in `skip_categories`
(default: page furniture and discarded content, `DEFAULT_OMNIDOC_SKIP`), sorts them by `order`,
and writes them as DeepSeek-OCR Markdown: `title` -> `# text`, text-like blocks -> their text,
`table` -> its `html` (else `latex`), `equation_isolated` -> `\\[latex\\]`, `figure` -> no content.
With `grounded=True` (default) each block is preceded by
`<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`, the poly's bounds in 0..999 bins of
`page_info`'s size, labels mapped to DeepSeek-OCR's (`OMNIDOC_LABELS`; `figure` -> `image`,
`text_block` -> `text`, ...). This is a reasonable Markdown rendering of the annotations, not
OmniDocBench's own matching-based scorer, which compares text, formulas, tables and reading
order separately.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from dsocr.data.manifest import IMAGE_TOKEN, Box, Sample
from dsocr.data.synthetic import FREE_OCR_PROMPT, MARKDOWN_PROMPT, to_bins
from dsocr.errors import DsocrError

FOX_IMAGE_DIRS = {
    "en_page_ocr.json": "en_pdf_png",
    "cn_page_ocr.json": "cn_pdf_png",
    "en_box_ocr.json": "en_pdf_png",
    "cn_box_ocr.json": "cn_pdf_png",
    "en_onbox_ocr.json": "en_pdf_png_onbox",
    "cn_onbox_ocr.json": "cn_pdf_png_onbox",
}
"""The image folder of each Fox OCR task, as listed in Fox's README."""

OMNIDOC_LABELS = {
    "title": "title",
    "text_block": "text",
    "figure": "image",
    "figure_caption": "image_caption",
    "figure_footnote": "image_footnote",
    "table": "table",
    "table_caption": "table_caption",
    "table_footnote": "table_footnote",
    "equation_isolated": "equation",
    "equation_caption": "equation_caption",
    "code_txt": "code",
    "code_txt_caption": "code_caption",
    "reference": "text",
    "header": "header",
    "footer": "footer",
    "page_number": "page_number",
    "page_footnote": "page_footnote",
    "abandon": "abandon",
}
"""OmniDocBench block categories -> DeepSeek-OCR grounding labels (unknown ones are kept as they are)."""

DEFAULT_OMNIDOC_SKIP = frozenset({"abandon", "header", "footer", "page_number", "page_footnote"})


def _read_json_list(path: Path, what: str) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DsocrError(f"{path}: no such {what} annotation file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsocrError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DsocrError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, list):
        raise DsocrError(f"{path}: expected a JSON list of {what} entries, got {type(data).__name__}")
    return data


def _unique_ids(stems: list[str]) -> list[str]:
    """Stems as ids; a stem used several times gets `-0`, `-1`, ... in order."""
    counts = Counter(stems)
    seen: Counter[str] = Counter()
    ids = []
    for stem in stems:
        if counts[stem] == 1:
            ids.append(stem)
        else:
            ids.append(f"{stem}-{seen[stem]}")
            seen[stem] += 1
    return ids


def _image_path(image_dir: Path, name: str, where: str, check_files: bool) -> Path:
    path = image_dir / name
    if check_files and not path.is_file():
        raise DsocrError(f"{where}: image file not found: {path}")
    return path


# ---------------------------------------------------------------------------------------------
# Fox
# ---------------------------------------------------------------------------------------------


def load_fox(annotation: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None, *,
             prompt: str | None = FREE_OCR_PROMPT, check_files: bool = True) -> list[Sample]:
    """The samples of a Fox task file (see the module doc).

    `image_dir` defaults to the task's folder from `FOX_IMAGE_DIRS` beside the annotation file
    (or that file's own folder). `prompt` replaces every annotation prompt; None keeps them
    (a prompt without `<image>` then gets `<image>\\n` in front).
    """
    path = Path(annotation)
    entries = _read_json_list(path, "Fox")
    if image_dir is None:
        folder = FOX_IMAGE_DIRS.get(path.name)
        image_dir = path.parent / folder if folder and (path.parent / folder).is_dir() else path.parent
    image_dir = Path(image_dir)

    parsed = []
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise DsocrError(f"{where}: expected an object with 'image' and 'conversations'")
        image = entry.get("image")
        conversations = entry.get("conversations")
        if not isinstance(image, str) or not image:
            raise DsocrError(f"{where}: 'image' must be a file name")
        turns_ok = isinstance(conversations, list) and len(conversations) >= 2 and all(
            isinstance(turn, dict) and isinstance(turn.get("value"), str) for turn in conversations[:2])
        if not turns_ok:
            raise DsocrError(f"{where}: 'conversations' must hold a question and an answer, "
                             "each {'from': ..., 'value': str}")
        parsed.append((index, where, image, conversations, entry))

    ids = _unique_ids([Path(image).stem for _, _, image, _, _ in parsed])
    samples = []
    for (index, where, image, conversations, entry), sample_id in zip(parsed, ids):
        question = conversations[0]["value"] if prompt is None else prompt
        if IMAGE_TOKEN not in question:
            question = f"{IMAGE_TOKEN}\n{question}"
        if question.count(IMAGE_TOKEN) != 1:
            raise DsocrError(f"{where}: the prompt must contain {IMAGE_TOKEN} exactly once")
        meta = {"source": "fox", "file": path.name, "index": index}
        meta.update({k: v for k, v in entry.items() if k not in ("image", "conversations")})
        samples.append(Sample(images=[_image_path(image_dir, image, where, check_files)], prompt=question,
                              target=conversations[1]["value"], id=sample_id, meta=meta))
    return samples


# ---------------------------------------------------------------------------------------------
# OmniDocBench
# ---------------------------------------------------------------------------------------------


def _poly_box(poly: Any, where: str) -> tuple[float, float, float, float]:
    if (not isinstance(poly, list) or len(poly) < 4 or len(poly) % 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
        raise DsocrError(f"{where}: 'poly' must be a list of x, y pairs")
    xs, ys = poly[0::2], poly[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def _strip_math(latex: str) -> str:
    text = latex.strip()
    for opening, closing in (("$$", "$$"), ("\\[", "\\]"), ("$", "$")):
        if text.startswith(opening) and text.endswith(closing) and len(text) >= len(opening) + len(closing):
            return text[len(opening): len(text) - len(closing)].strip()
    return text


def _spans_text(det: dict[str, Any]) -> str:
    spans = det.get("line_with_spans") or []
    return " ".join(str(span.get("text", "")).strip() for span in spans
                    if isinstance(span, dict) and str(span.get("text", "")).strip())


def _block_content(det: dict[str, Any]) -> str:
    """The Markdown content of one OmniDocBench block."""
    category = det.get("category_type")
    if category == "figure":
        return ""
    if category == "table":
        return str(det.get("html") or det.get("latex") or det.get("text") or "").strip()
    if category == "equation_isolated":
        latex = det.get("latex") or det.get("text") or ""
        return f"\\[{_strip_math(str(latex))}\\]" if latex else ""
    text = str(det.get("text") or "").strip()
    if not text:
        text = _spans_text(det)
    if not text and det.get("merge_list"):
        text = "\n".join(_block_content(part) for part in det["merge_list"] if isinstance(part, dict)).strip()
    if category == "title" and text:
        return f"# {text}"
    return text


def omnidoc_page_blocks(page: dict[str, Any], where: str,
                        skip_categories: frozenset[str] | set[str] = DEFAULT_OMNIDOC_SKIP,
                        ) -> list[tuple[str, tuple, str]]:
    """(DeepSeek label, pixel box, Markdown content) of the page's kept blocks in reading order."""
    dets = page.get("layout_dets")
    if not isinstance(dets, list):
        raise DsocrError(f"{where}: 'layout_dets' must be a list")
    kept = []
    for k, det in enumerate(dets):
        at = f"{where}: layout_dets[{k}]"
        if not isinstance(det, dict) or not isinstance(det.get("category_type"), str):
            raise DsocrError(f"{at}: expected an object with 'category_type'")
        if det.get("ignore") or det["category_type"] in skip_categories:
            continue
        order = det.get("order")
        rank = order if isinstance(order, (int, float)) and not isinstance(order, bool) else float("inf")
        kept.append((rank, k, det, at))
    kept.sort(key=lambda item: (item[0], item[1]))
    blocks = []
    for _, _, det, at in kept:
        label = OMNIDOC_LABELS.get(det["category_type"], det["category_type"])
        blocks.append((label, _poly_box(det.get("poly"), at), _block_content(det)))
    return blocks


def load_omnidocbench(annotation: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None, *,
                      grounded: bool = True, prompt: str = MARKDOWN_PROMPT,
                      languages: set[str] | None = None,
                      skip_categories: frozenset[str] | set[str] = DEFAULT_OMNIDOC_SKIP,
                      check_files: bool = True) -> list[Sample]:
    """The pages of `OmniDocBench.json` as samples (see the module doc).

    `image_dir` defaults to `images/` beside the annotation file. `languages` keeps only the
    pages whose `page_attribute.language` is in the set. The target is the grounded Markdown
    (or, with `grounded=False`, the same without tags); `boxes` hold the blocks in pixels.
    """
    path = Path(annotation)
    pages = _read_json_list(path, "OmniDocBench")
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    samples = []
    stems = []
    for index, page in enumerate(pages):
        where = f"{path}: page {index}"
        if not isinstance(page, dict) or not isinstance(page.get("page_info"), dict):
            raise DsocrError(f"{where}: expected an object with 'layout_dets' and 'page_info'")
        info = page["page_info"]
        image, width, height = info.get("image_path"), info.get("width"), info.get("height")
        if not isinstance(image, str) or not image:
            raise DsocrError(f"{where}: page_info.image_path must be a file name")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise DsocrError(f"{where}: page_info.width and .height must be positive numbers")
        attributes = info.get("page_attribute") or {}
        if languages is not None and attributes.get("language") not in languages:
            continue
        where = f"{path}: page {index} ({image})"
        blocks = omnidoc_page_blocks(page, where, skip_categories)
        parts, boxes = [], []
        for label, box, content in blocks:
            if not grounded and not content:
                continue
            if grounded:
                x1, y1, x2, y2 = to_bins([round(v) for v in box], round(width), round(height))
                tag = f"<|ref|>{label}<|/ref|><|det|>[[{x1}, {y1}, {x2}, {y2}]]<|/det|>"
                parts.append(f"{tag}\n{content}" if content else tag)
            else:
                parts.append(content)
            boxes.append(Box(label=label, box=tuple(max(0.0, float(v)) for v in box), text=content))
        meta = {"source": "omnidocbench", "index": index, "width": width, "height": height,
                "page_attribute": attributes}
        stems.append(Path(image).stem)
        samples.append(Sample(images=[_image_path(image_dir, image, where, check_files)], prompt=prompt,
                              target="\n\n".join(parts), boxes=boxes, meta=meta))
    for sample, sample_id in zip(samples, _unique_ids(stems)):
        sample.id = sample_id
    return samples
