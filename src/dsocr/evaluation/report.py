"""Evaluation reports: a plain-text table, a JSON file and a precision-vs-compression plot.

The plot is the paper's Fox figure: one point per page (compression ratio = ground-truth text
tokens / vision tokens, Fox precision), the mean of each 100-token bucket joined by a line, and,
for reference, the paper's Table 2 bucket means for Tiny (64 vision tokens) and Small (100).
It is drawn with matplotlib's Agg canvas directly (no pyplot), so it never changes the
process-wide matplotlib backend and needs no display.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsocr.evaluation.metrics import BucketStats, EvalRecord, aggregate_by_bucket, summarize
from dsocr.files import atomic_path

PAPER_FOX_TABLE2: tuple[tuple[int, int, float, float, float, float, int], ...] = (
    # text tokens low, high, Tiny precision %, Tiny compression, Small precision %, Small compression, pages
    (600, 700, 96.5, 10.5, 98.5, 6.7, 7),
    (700, 800, 93.8, 11.8, 97.3, 7.5, 28),
    (800, 900, 83.8, 13.2, 96.8, 8.5, 28),
    (900, 1000, 85.9, 15.1, 96.8, 9.7, 14),
    (1000, 1100, 79.3, 16.5, 91.5, 10.6, 11),
    (1100, 1200, 76.4, 17.7, 89.8, 11.3, 8),
    (1200, 1300, 59.1, 19.7, 87.1, 12.6, 4),
)
"""DeepSeek-OCR paper, Table 2 (Fox English pages, prompt "Free OCR.")."""

_COLUMNS = (
    ("text tokens", "{}", 12),
    ("pages", "{:d}", 6),
    ("precision", "{:.1%}", 10),
    ("recall", "{:.1%}", 8),
    ("edit dist", "{:.3f}", 9),
    ("CER", "{:.3f}", 7),
    ("WER", "{:.3f}", 7),
    ("compression", "{:.1f}x", 11),
)


def _row(label: str, stats: BucketStats) -> list[str]:
    m = stats.means
    values = (label, stats.count, m["precision"], m["recall"], m["edit_distance"], m["cer"], m["wer"],
              m["compression"])
    return [fmt.format(value) for (_, fmt, _), value in zip(_COLUMNS, values)]


def format_table(records: Sequence[EvalRecord], width: int = 100) -> str:
    """Bucket means as a fixed-width text table, with an `all` row at the end."""
    header = [name for name, _, _ in _COLUMNS]
    rows = [_row(b.label, b) for b in aggregate_by_bucket(records, width)]
    overall = summarize(records)
    if overall is not None:
        rows.append(_row("all", overall))
    widths = [max(len(h), spec[2], *(len(r[i]) for r in rows)) for i, (h, spec) in enumerate(zip(header, _COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    bucket_rows = rows[:-1] if overall is not None else rows
    out = [line(header), rule, *(line(r) for r in bucket_rows)]
    if overall is not None:
        out += [rule, line(rows[-1])]
    return "\n".join(out) + "\n"


def report_dict(records: Sequence[EvalRecord], width: int = 100, **info: Any) -> dict[str, Any]:
    """Everything in JSON-ready form: `info`, the overall means, the buckets and every record."""
    overall = summarize(records)
    return {
        **info,
        "bucket_width": width,
        "summary": ({**overall.to_dict(), "bucket": "all"} if overall is not None else None),
        "buckets": [b.to_dict() for b in aggregate_by_bucket(records, width)],
        "records": [r.to_dict() for r in records],
    }


def write_json(path: str | os.PathLike[str], records: Sequence[EvalRecord], width: int = 100, **info: Any) -> Path:
    """Write `report_dict` atomically as indented UTF-8 JSON."""
    path = Path(path)
    text = json.dumps(report_dict(records, width, **info), ensure_ascii=False, indent=2) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def plot_precision_vs_compression(path: str | os.PathLike[str], records: Sequence[EvalRecord], *,
                                  width: int = 100, title: str | None = None,
                                  paper_reference: bool = True) -> Path:
    """Write the PNG plot described in the module doc."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if records:
        axes.scatter([r.compression for r in records], [100 * r.precision for r in records], s=14,
                     alpha=0.45, color="tab:blue", label="pages")
        buckets = aggregate_by_bucket(records, width)
        xs = [b.means["compression"] for b in buckets]
        ys = [100 * b.means["precision"] for b in buckets]
        axes.plot(xs, ys, "-o", color="tab:red", markersize=6, label=f"mean per {width}-token bucket")
        for bucket, x, y in zip(buckets, xs, ys):
            axes.annotate(bucket.label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
    if paper_reference:
        for column, name, marker in ((3, "paper, Tiny (64 tokens)", "s"), (5, "paper, Small (100 tokens)", "^")):
            xs = [row[column] for row in PAPER_FOX_TABLE2]
            ys = [row[column - 1] for row in PAPER_FOX_TABLE2]
            axes.plot(xs, ys, linestyle="--", marker=marker, fillstyle="none", color="grey", alpha=0.8,
                      linewidth=1, label=name)
    axes.set_xlabel("compression ratio (text tokens / vision tokens)")
    axes.set_ylabel("precision (%)")
    axes.set_ylim(0, 102)
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    axes.set_title(title or "Fox precision vs compression")
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_report(out_dir: str | os.PathLike[str], records: Sequence[EvalRecord], *, name: str = "report",
                 width: int = 100, title: str | None = None, **info: Any) -> dict[str, Path]:
    """Write `name.txt` (table), `name.json` and `name.png` (plot) in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / f"{name}.txt"
    table = (f"{title}\n\n" if title else "") + format_table(records, width)
    with atomic_path(table_path) as tmp:
        tmp.write_text(table, encoding="utf-8")
    if title:
        info.setdefault("title", title)
    return {
        "table": table_path,
        "json": write_json(out_dir / f"{name}.json", records, width, **info),
        "plot": plot_precision_vs_compression(out_dir / f"{name}.png", records, width=width, title=title),
    }
