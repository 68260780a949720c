"""`dsocr inspect PATH [PATH2]`: what a checkpoint is and how it fits DeepEncoder, or how two differ."""

from __future__ import annotations

import argparse
import json

SHOWN_ROWS = 20


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="identify a checkpoint (SAM, CLIP, DeepSeek-OCR, dsocr) or compare two",
        description="Show a checkpoint's format, tensor and parameter counts, dtypes, size, what model it is "
        "and how its tensors map onto DeepEncoder. With two paths, compare them tensor by tensor.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint file, *.index.json or directory (one or two)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--against", choices=("deepencoder", "none"), default="deepencoder",
        help="compatibility table against the official-size DeepEncoder (default) or none",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DsocrError
    from ..weights.inspect import compare, summarize

    if len(args.paths) > 2:
        raise DsocrError(f"inspect takes one or two paths, got {len(args.paths)}")
    if len(args.paths) == 2:
        result = compare(*args.paths)
        print(json.dumps(result, indent=2) if args.json else format_comparison(result))
        return 0
    summary = summarize(args.paths[0], against=None if args.against == "none" else args.against)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


# -- plain-text rendering ---------------------------------------------------------------------


def table(rows: list[list[str]], headers: list[str] | None = None, indent: str = "  ") -> str:
    """Left-aligned columns separated by two spaces."""
    everything = ([headers] if headers else []) + rows
    if not everything:
        return ""
    widths = [max(len(str(r[i])) for r in everything) for i in range(len(everything[0]))]
    lines = [indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in everything]
    if headers:
        lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def size_text(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} B"


def shape_text(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def _details_text(details: dict) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, dict):
            parts.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def format_summary(summary: dict) -> str:
    model = summary["model"]
    rows = [
        ["format", summary["format"]],
        ["tensors", f"{summary['tensors']:,}"],
        ["parameters", f"{summary['parameters']:,}"],
        ["dtypes", ", ".join(f"{k} x{v}" for k, v in summary["dtypes"].items())],
        ["size", f"{size_text(summary['tensor_bytes'])} of tensors, {size_text(summary['file_bytes'])} on disk"],
        ["model", f"{model['name']} {model['variant']}".strip()],
    ]
    if model["details"]:
        rows.append(["details", _details_text(model["details"])])
    text = summary["path"] + "\n" + table(rows)
    if "compatibility" in summary:
        text += "\n" + format_compatibility(summary["compatibility"])
    return text


def _sample(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def format_compatibility(compat: dict) -> str:
    if compat.get("part") is None:
        return "DeepEncoder compatibility: " + compat.get("note", "none")
    transforms: dict[str, int] = {}
    for row in compat["mapped"]:
        transforms[row["transform"]] = transforms.get(row["transform"], 0) + 1
    missing = compat["missing"]
    init = [m["target"] for m in missing if m["initialised_by_convert"]]
    absent = [m["target"] for m in missing if not m["initialised_by_convert"]]
    rows = [
        ["mapped", str(len(compat["mapped"])), ", ".join(f"{k} {v}" for k, v in transforms.items())],
        ["dropped", str(len(compat["dropped"])), _sample(compat["dropped"])],
        ["unexpected", str(len(compat["unexpected"])), _sample(compat["unexpected"])],
        ["missing", str(len(missing)), (f"initialised by dsocr convert: {_sample(init)}" if init else "")
         + ("; " if init and absent else "") + (f"absent: {_sample(absent)}" if absent else "")],
        ["shape mismatches", str(len(compat["shape_mismatches"])), ""],
    ]
    if compat["not_in_deepencoder"]:
        rows.append(["not in DeepEncoder", str(len(compat["not_in_deepencoder"])), _sample(compat["not_in_deepencoder"])])
    text = f"DeepEncoder compatibility ({compat['part']}, official sizes)\n" + table(rows)
    mismatches = compat["shape_mismatches"]
    if mismatches:
        lines = [[m["target"], shape_text(m["shape"]), shape_text(m["expected"])] for m in mismatches[:SHOWN_ROWS]]
        text += "\n" + table(lines, ["tensor", "this checkpoint", "DeepEncoder"])
        if len(mismatches) > SHOWN_ROWS:
            text += f"\n  ... {len(mismatches) - SHOWN_ROWS} more (--json lists all)"
    return text


def format_comparison(result: dict) -> str:
    head = [
        ["A", result["a"]],
        ["B", result["b"]],
        ["names", "DeepEncoder names (both mapped)" if result["names"] == "deepencoder" else "as stored"],
        ["common", str(result["common"])],
        ["only in A", f"{len(result['only_in_a'])}  {_sample(result['only_in_a'], 3)}".rstrip()],
        ["only in B", f"{len(result['only_in_b'])}  {_sample(result['only_in_b'], 3)}".rstrip()],
        ["shape differences", str(len(result["shape_differences"]))],
        ["max abs difference", "n/a" if result["max_abs_diff"] is None else f"{result['max_abs_diff']:.3e}"],
    ]
    text = table(head, indent="")
    rows = sorted(result["tensors"], key=lambda r: float("inf") if r["max_abs_diff"] is None else r["max_abs_diff"], reverse=True)
    lines = []
    for r in rows[:SHOWN_ROWS]:
        shape = shape_text(r["shape_a"]) if r["shape_a"] == r["shape_b"] else f"{shape_text(r['shape_a'])} vs {shape_text(r['shape_b'])}"
        diff = "shape differs" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3e}"
        lines.append([r["name"], shape, diff])
    if lines:
        text += "\n" + table(lines, ["tensor", "shape", "max |A-B|"])
        if len(rows) > SHOWN_ROWS:
            text += f"\n  ... {len(rows) - SHOWN_ROWS} more (--json lists all)"
    return text
