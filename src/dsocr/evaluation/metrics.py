"""OCR metrics: edit distances, Fox-style precision, compression ratio, per-bucket aggregation.

Edit distances (rapidfuzz's Levenshtein: insertions, deletions, substitutions, each cost 1)
----------------------------------------------------------------------------------------------
- `normalized_edit_distance(pred, ref)` = distance / max(len(pred), len(ref)), 0 when both are
  empty. This is the "edit distance" of Fox/GOT (`nltk.edit_distance(a, b) / max(len(a), len(b))`
  on the raw strings) and of OmniDocBench's text metric.
- `cer(pred, ref)` = character distance / len(ref); `wer` the same over whitespace-separated
  words. Both can exceed 1 (many insertions). With an empty reference they are 0 for an empty
  prediction and 1 otherwise (a convention: the ratio is undefined there).

Fox precision (what the DeepSeek-OCR paper's Table 2 reports)
---------------------------------------------------------------
Source: `eval_tools/eval_ocr_test.py` of the Fox benchmark (github.com/ucaslcl/Fox), the same
code as GOT-OCR2.0's `GOT/eval/pyevaltools/eval_ocr.py` (`nougat_per_metrics`) and Vary's tools:

    def cal_per_metrics(predict_root_, pred, gt):          # called as (root, ann["label"], ann["answer"])
        reference, hypothesis = gt.split(), pred.split()     # jieba.lcut for both if either has CJK
        reference, hypothesis = set(reference), set(hypothesis)
        metrics["precision"] = nltk.metrics.precision(reference, hypothesis)  # |ref & hyp| / |hyp|
        metrics["recall"] = nltk.metrics.recall(reference, hypothesis)        # |ref & hyp| / |ref|
        metrics["edit_dist"] = nltk.edit_distance(pred, gt) / max(len(pred), len(gt))

Two things are easy to miss there, and `fox_scores` reproduces both:

1. The scores are over **sets of distinct words**, not over characters or word counts: a
   repeated word counts once, word order is ignored.
2. The call passes the ground truth (`label`) as `pred` and the model output (`answer`) as
   `gt`. So Fox's "precision" is |words(output) & words(truth)| / |words(truth)|: the fraction
   of the distinct ground-truth words that the output contains (recall, in the usual sense),
   and Fox's "recall" is the fraction of distinct output words found in the truth. The edit
   distance is symmetric and unaffected.

The F-measure is nltk's with alpha 0.5 (harmonic mean; 0 when either is 0). Where nltk would
return None (an empty word set) we return 1.0 if both sets are empty and 0.0 otherwise; where Fox
would divide by zero (both strings empty) the edit distance is 0. For text with CJK characters Fox
segments with `jieba.lcut`; `fox_words` uses jieba when it is installed and otherwise splits CJK
characters one by one (an approximation; pass `segmenter=` to control it). Fox's BLEU and METEOR
are not reproduced.

Compression
-----------
The paper's compression ratio is text tokens / vision tokens, where text tokens are the ground
truth's DeepSeek-OCR tokens (`count_text_tokens`) and vision tokens the mode's nominal count
(`nominal_vision_tokens`: Tiny 64, Small 100, Base 256, Large 400; newlines and the view
separator are not counted). Table 2 groups the Fox pages by text tokens into 100-token buckets
(600-700, ...): `aggregate_by_bucket`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from rapidfuzz.distance import Levenshtein

from dsocr.errors import DsocrError

# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

_GROUNDING_TAG = re.compile(r"<\|ref\|>.*?<\|/ref\|>\s*<\|det\|>.*?<\|/det\|>[ \t]*\n?", re.DOTALL)
_MARKERS = re.compile(r"<\|/?(?:ref|det)\|>|<\|grounding\|>|<｜end▁of▁sentence｜>")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1", re.DOTALL)
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_CELL_END = re.compile(r"</t[dh]>\s*", re.IGNORECASE)
_ROW_END = re.compile(r"</tr>\s*", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?(?:table|thead|tbody|tr|td|th|center|br)\b[^>]*>", re.IGNORECASE)
_MATH_DELIMITERS = re.compile(r"\\\[|\\\]|\\\(|\\\)")
_SPACES = re.compile(r"[ \t]+")
_WHITESPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Normalization:
    """How texts are cleaned before scoring; call it on a text.

    - `strip_grounding`: delete `<|ref|>..<|/ref|><|det|>..<|/det|>` tags (label and boxes) and
      stray grounding markers, `<|grounding|>` and the EOS text, as the official post-processing does.
    - `strip_markdown`: drop heading marks (`# `), list markers (`- `, `• `, `1. ` at a line
      start), `**`/`__` emphasis, image links, LaTeX delimiters `\\[ \\] \\( \\)`, and turn HTML
      tables into text (cells separated by a space, rows by a newline); runs of spaces become
      one, lines are stripped and more than one blank line becomes one.
    - `collapse_whitespace`: every run of whitespace becomes one space; the ends are stripped.
    - `lowercase`.
    """

    strip_grounding: bool = True
    strip_markdown: bool = False
    collapse_whitespace: bool = False
    lowercase: bool = False

    def __call__(self, text: str) -> str:
        return normalize_text(text, strip_grounding=self.strip_grounding, strip_markdown=self.strip_markdown,
                              collapse_whitespace=self.collapse_whitespace, lowercase=self.lowercase)


RAW = Normalization(strip_grounding=False)
"""No change at all: score the strings as they are (Fox's own tool does this)."""


def normalize_text(text: str, *, strip_grounding: bool = True, strip_markdown: bool = False,
                   collapse_whitespace: bool = False, lowercase: bool = False) -> str:
    """`text` cleaned as described in `Normalization`."""
    if strip_grounding:
        text = _GROUNDING_TAG.sub("", text)
        text = _MARKERS.sub("", text)
    if strip_markdown:
        text = _IMAGE_LINK.sub("", text)
        text = _CELL_END.sub(" ", text)
        text = _ROW_END.sub("\n", text)
        text = _HTML_TAG.sub("", text)
        text = _HEADING.sub("", text)
        text = _LIST_MARKER.sub("", text)
        text = _EMPHASIS.sub(r"\2", text)
        text = _MATH_DELIMITERS.sub("", text)
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = _BLANK_LINES.sub("\n\n", text).strip()
    if collapse_whitespace:
        text = _WHITESPACE.sub(" ", text).strip()
    if lowercase:
        text = text.lower()
    return text


# ---------------------------------------------------------------------------------------------
# Edit distances
# ---------------------------------------------------------------------------------------------


def edit_distance(a: str | Sequence[str], b: str | Sequence[str]) -> int:
    """Levenshtein distance between two strings (or two sequences of words)."""
    return Levenshtein.distance(a, b)


def normalized_edit_distance(prediction: str, reference: str) -> float:
    """distance / max(len(prediction), len(reference)); 0.0 when both are empty."""
    longest = max(len(prediction), len(reference))
    return edit_distance(prediction, reference) / longest if longest else 0.0


def _error_rate(prediction: Sequence[Any], reference: Sequence[Any]) -> float:
    if not reference:
        return 0.0 if not prediction else 1.0
    return edit_distance(prediction, reference) / len(reference)


def cer(prediction: str, reference: str) -> float:
    """Character error rate: character edit distance / len(reference)."""
    return _error_rate(prediction, reference)


def wer(prediction: str, reference: str) -> float:
    """Word error rate: edit distance over whitespace-separated words / number of reference words."""
    return _error_rate(prediction.split(), reference.split())


# ---------------------------------------------------------------------------------------------
# Fox precision
# ---------------------------------------------------------------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fa5]")
_CJK_OR_RUN = re.compile(r"[\u4e00-\u9fa5]|[^\s\u4e00-\u9fa5]+")


def contains_cjk(text: str) -> bool:
    """Fox's `contain_chinese_string`: any character in U+4E00..U+9FA5."""
    return bool(_CJK.search(text))


@lru_cache(maxsize=1)
def _default_segmenter() -> Callable[[str], list[str]]:
    try:
        import jieba  # type: ignore[import-not-found]
    except ImportError:
        return lambda text: _CJK_OR_RUN.findall(text)
    return jieba.lcut


def fox_words(prediction: str, reference: str,
              segmenter: Callable[[str], list[str]] | None = None) -> tuple[list[str], list[str]]:
    """The words Fox compares: `str.split()` of each text, or a Chinese segmentation of both
    when either contains CJK characters (`segmenter`; default jieba if installed, else one
    token per CJK character and whitespace-separated runs for the rest)."""
    if contains_cjk(prediction) or contains_cjk(reference):
        segment = segmenter or _default_segmenter()
        return list(segment(prediction)), list(segment(reference))
    return prediction.split(), reference.split()


@dataclass(frozen=True)
class FoxScores:
    """Fox's text metrics for one page (see the module doc for the exact definitions)."""

    precision: float
    """Fraction of the distinct ground-truth words found in the output (Fox's "precision")."""
    recall: float
    """Fraction of the distinct output words found in the ground truth (Fox's "recall")."""
    f_measure: float
    edit_distance: float
    """Normalised character edit distance of the raw strings."""


def _ratio(hits: int, total: int, other_total: int) -> float:
    if total == 0:
        return 1.0 if other_total == 0 else 0.0
    return hits / total


def fox_scores(prediction: str, reference: str,
               segmenter: Callable[[str], list[str]] | None = None) -> FoxScores:
    """Fox's precision, recall, F-measure and edit distance of `prediction` against `reference`."""
    predicted_words, truth_words = fox_words(prediction, reference, segmenter)
    predicted, truth = set(predicted_words), set(truth_words)
    common = len(predicted & truth)
    precision = _ratio(common, len(truth), len(predicted))
    recall = _ratio(common, len(predicted), len(truth))
    f_measure = 0.0 if precision == 0 or recall == 0 else 1.0 / (0.5 / precision + 0.5 / recall)
    return FoxScores(precision, recall, f_measure, normalized_edit_distance(prediction, reference))


def fox_precision(prediction: str, reference: str, segmenter: Callable[[str], list[str]] | None = None) -> float:
    """Fox's "precision" (distinct ground-truth words present in the output / distinct ground-truth words)."""
    return fox_scores(prediction, reference, segmenter).precision


# ---------------------------------------------------------------------------------------------
# Tokens and compression
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _builtin_tokenizer():
    from dsocr.processing.tokenizer import load_tokenizer

    return load_tokenizer()


def count_text_tokens(text: str, tokenizer: Any = None) -> int:
    """Number of DeepSeek-OCR tokens of `text` (no BOS/EOS); `tokenizer` defaults to dsocr's built-in one."""
    return len((tokenizer or _builtin_tokenizer()).encode(text))


def nominal_vision_tokens(mode: Any, grid: tuple[int, int] | None = None) -> int:
    """The paper's vision-token count of a mode (a `Mode` or its name): global grid squared, plus
    tile grid squared per tile when `grid` = (width tiles, height tiles) has more than one tile.
    Tiny 64, Small 100, Base 256, Large 400, Gundam n*100 + 256."""
    from dsocr.processing.modes import get_mode

    mode = get_mode(mode) if isinstance(mode, str) else mode
    tokens = mode.global_grid ** 2
    if grid is not None and (grid[0] > 1 or grid[1] > 1):
        tokens += grid[0] * grid[1] * mode.tile_grid ** 2
    return tokens


def valid_vision_tokens(actual: int, width: int, height: int) -> int:
    """The paper's eq. 1, padding-discounted tokens: ceil(actual * (1 - (max - min) / max))."""
    longest, shortest = max(width, height), min(width, height)
    if longest <= 0:
        raise DsocrError(f"image size {width}x{height} has no pixels")
    return math.ceil(actual * (1 - (longest - shortest) / longest))


def compression_ratio(text_tokens: int, vision_tokens: int) -> float:
    """Text tokens per vision token."""
    if vision_tokens <= 0:
        raise DsocrError(f"vision_tokens must be positive, got {vision_tokens}")
    return text_tokens / vision_tokens


# ---------------------------------------------------------------------------------------------
# Per-sample records and aggregation
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalRecord:
    """Every metric of one sample. `text_tokens` counts the (normalised) ground truth."""

    id: str
    text_tokens: int
    vision_tokens: int
    compression: float
    precision: float
    recall: float
    f_measure: float
    edit_distance: float
    cer: float
    wer: float
    prediction_chars: int
    reference_chars: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METRICS = ("precision", "recall", "f_measure", "edit_distance", "cer", "wer", "compression")
"""The record fields that aggregation averages."""


def evaluate_pair(prediction: str, reference: str, vision_tokens: int, *, id: str = "",
                  normalization: Normalization | None = None, tokenizer: Any = None,
                  text_tokens: int | None = None,
                  segmenter: Callable[[str], list[str]] | None = None) -> EvalRecord:
    """Score one prediction. Both texts go through `normalization` (default: grounding tags
    stripped, nothing else); `text_tokens` (default: counted on the normalised reference) over
    `vision_tokens` gives the compression ratio."""
    normalization = normalization or Normalization()
    prediction, reference = normalization(prediction), normalization(reference)
    if text_tokens is None:
        text_tokens = count_text_tokens(reference, tokenizer)
    fox = fox_scores(prediction, reference, segmenter)
    return EvalRecord(
        id=id,
        text_tokens=text_tokens,
        vision_tokens=vision_tokens,
        compression=compression_ratio(text_tokens, vision_tokens),
        precision=fox.precision,
        recall=fox.recall,
        f_measure=fox.f_measure,
        edit_distance=fox.edit_distance,
        cer=cer(prediction, reference),
        wer=wer(prediction, reference),
        prediction_chars=len(prediction),
        reference_chars=len(reference),
    )


def evaluate(predictions: Sequence[str], references: Sequence[str], vision_tokens: int | Sequence[int], *,
             ids: Sequence[str] | None = None, normalization: Normalization | None = None,
             tokenizer: Any = None, segmenter: Callable[[str], list[str]] | None = None) -> list[EvalRecord]:
    """`evaluate_pair` over aligned lists; `vision_tokens` is one count for all or one per sample."""
    if len(predictions) != len(references):
        raise DsocrError(f"{len(predictions)} predictions for {len(references)} references")
    counts = [vision_tokens] * len(references) if isinstance(vision_tokens, int) else list(vision_tokens)
    if len(counts) != len(references):
        raise DsocrError(f"{len(counts)} vision-token counts for {len(references)} references")
    names = list(ids) if ids is not None else [str(i) for i in range(len(references))]
    if len(names) != len(references):
        raise DsocrError(f"{len(names)} ids for {len(references)} references")
    return [evaluate_pair(p, r, v, id=i, normalization=normalization, tokenizer=tokenizer, segmenter=segmenter)
            for p, r, v, i in zip(predictions, references, counts, names)]


@dataclass
class BucketStats:
    """Mean metrics of the records whose text-token count lies in [low, high)."""

    low: int
    high: int
    count: int
    means: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.label, "low": self.low, "high": self.high, "count": self.count, **self.means}


def _means(records: Sequence[EvalRecord]) -> dict[str, float]:
    return {name: statistics.fmean(getattr(r, name) for r in records) for name in METRICS}


def bucket_bounds(text_tokens: int, width: int = 100) -> tuple[int, int]:
    """The [low, high) bucket of a token count: 650 -> (600, 700), 700 -> (700, 800)."""
    low = text_tokens // width * width
    return low, low + width


def aggregate_by_bucket(records: Iterable[EvalRecord], width: int = 100) -> list[BucketStats]:
    """Records grouped by text-token bucket (as the paper's Table 2), non-empty buckets in order."""
    if width <= 0:
        raise DsocrError(f"bucket width must be positive, got {width}")
    groups: dict[tuple[int, int], list[EvalRecord]] = {}
    for record in records:
        groups.setdefault(bucket_bounds(record.text_tokens, width), []).append(record)
    return [BucketStats(low, high, len(group), _means(group)) for (low, high), group in sorted(groups.items())]


def summarize(records: Sequence[EvalRecord]) -> BucketStats | None:
    """Mean metrics over all records (bounds: smallest and largest token count); None if empty."""
    if not records:
        return None
    tokens = [r.text_tokens for r in records]
    return BucketStats(min(tokens), max(tokens), len(records), _means(records))
