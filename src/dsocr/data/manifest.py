"""Training and evaluation samples on disk: a JSONL manifest, or webdataset-style tar shards.

Manifest (JSONL)
================

One sample per line, UTF-8, each line a JSON object::

    {"images": ["images/page-000001.png"],
     "prompt": "<image>\\nFree OCR.",
     "target": "The text the model should write ...",
     "boxes": [{"label": "title", "box": [40, 32, 610, 71], "text": "A Title"}],
     "id": "page-000001",
     "meta": {"source": "synthetic"}}

- `images` (required): list of image paths. A relative path is relative to the folder that holds
  the manifest; absolute paths are kept as they are. The list may be empty (a text-only sample).
- `prompt` (required): the user prompt. It must contain exactly one `<image>` per image, in
  order (`dsocr.processing.prompts` expands each into that image's placeholders).
- `target` (required): the text the model should produce (the training label / the ground truth).
- `boxes` (optional): layout blocks, each `{"label": str, "box": [x1, y1, x2, y2], "text": str}`
  with the box in **pixels** of the image (x2/y2 exclusive, so `x2 - x1` is the width) and an
  optional `"image": k` naming the image it belongs to (default 0). The 0..999 coordinates the
  model writes live in `target`; these pixel boxes are for checks, crops and visualisation.
- `id` (optional): a unique string; `read_manifest` refuses duplicates.
- `meta` (optional): any JSON object, carried along untouched (source, language, token count...).

Any other key is an error (it is most likely a typo). Blank lines are skipped. Every problem is
reported as a `DsocrError` naming the manifest file and the 1-based line.

Shards (webdataset layout)
==========================

`write_shards` packs samples into `shard-000000.tar`, `shard-000001.tar`, ... Each sample is a
run of adjacent tar members sharing a key (the part of the name before the first dot), which is
what the `webdataset` library expects:

- `{key}.json`: the sample without its images: `prompt`, `target`, optional `boxes`, `id`, `meta`,
  and `num_images`;
- `{key}.png` (or `.jpg`, ...) for a sample with one image, `{key}.0.png`, `{key}.1.png`, ... for
  several. Image files are stored byte for byte; images held in memory are encoded as PNG.

Keys are `{shard:06d}{position:06d}` and so never contain a dot. Members carry mtime 0 and no
owner, so the same samples always give byte-identical shards. `iter_shards` reads them back with
the standard `tarfile` module (no `webdataset` dependency).

Datasets
========

`ManifestDataset` (map-style) and `ShardDataset` (iterable, split across DataLoader workers and
optionally across distributed ranks) yield `Sample` objects whose `images` are RGB PIL images
loaded with `dsocr.processing.load_image`. Batching is left to the trainer's `collate_fn`.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dsocr.errors import DsocrError
from dsocr.files import atomic_path
from dsocr.processing.images import load_image

IMAGE_TOKEN = "<image>"
MANIFEST_KEYS = ("images", "prompt", "target", "boxes", "id", "meta")
REQUIRED_KEYS = ("images", "prompt", "target")
SHARD_NAME = "shard-{:06d}.tar"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")


@dataclass
class Box:
    """One layout block of an image: label, pixel box (x1, y1, x2, y2; x2/y2 exclusive), text."""

    label: str
    box: tuple[float, float, float, float]
    text: str = ""
    image: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "box": [_plain_number(v) for v in self.box], "text": self.text}
        if self.image:
            out["image"] = self.image
        return out


@dataclass
class Sample:
    """One sample: images, prompt, target text, optional boxes, id and metadata.

    `images` holds `Path`s as read from a manifest, or PIL images once loaded (`load_images`,
    the datasets and `iter_shards` give loaded samples).
    """

    images: list[Any]
    prompt: str
    target: str
    boxes: list[Box] | None = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load_images(self) -> Sample:
        """A copy whose images are RGB PIL images (paths opened with `load_image`)."""
        return replace(self, images=[image if isinstance(image, Image.Image) else load_image(image)
                                     for image in self.images])

    def to_json(self, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The manifest object of this sample; image paths under `base_dir` are written relative to it."""
        paths = []
        for image in self.images:
            if isinstance(image, Image.Image):
                raise DsocrError(f"sample {self.id or '?'}: an in-memory image cannot be written to a manifest; "
                                 "save it to a file first (or use write_shards)")
            paths.append(_relative_path(Path(image), base_dir))
        return self._json_fields({"images": paths})

    def _json_fields(self, out: dict[str, Any]) -> dict[str, Any]:
        out["prompt"] = self.prompt
        out["target"] = self.target
        if self.boxes is not None:
            out["boxes"] = [box.to_json() for box in self.boxes]
        if self.id is not None:
            out["id"] = self.id
        if self.meta:
            out["meta"] = self.meta
        return out


def _plain_number(value: float) -> float | int:
    """Whole numbers as ints in JSON (`12`, not `12.0`)."""
    return int(value) if float(value).is_integer() else float(value)


def _relative_path(path: Path, base_dir: str | os.PathLike[str] | None) -> str:
    """`path` relative to `base_dir` when it lies inside it, else absolute (a relative `path` is
    taken relative to the current directory)."""
    absolute = Path(os.path.abspath(path))
    if base_dir is None:
        return absolute.as_posix()
    try:
        return absolute.relative_to(Path(os.path.abspath(base_dir))).as_posix()
    except ValueError:
        return absolute.as_posix()


# ---------------------------------------------------------------------------------------------
# Parsing and validating one sample
# ---------------------------------------------------------------------------------------------


def sample_from_json(obj: Any, where: str, base_dir: Path | None = None, check_files: bool = True,
                     images_in_record: bool = True) -> Sample:
    """Validate a manifest object and turn it into a `Sample`; errors start with `where`.

    `base_dir` resolves relative image paths. `images_in_record=False` is for shard records,
    whose images are separate tar members (the record has `num_images` instead).
    """
    if not isinstance(obj, dict):
        raise DsocrError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    allowed = set(MANIFEST_KEYS) if images_in_record else (set(MANIFEST_KEYS) - {"images"}) | {"num_images"}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise DsocrError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    required = REQUIRED_KEYS if images_in_record else ("prompt", "target", "num_images")
    missing = [key for key in required if key not in obj]
    if missing:
        raise DsocrError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")

    prompt, target = obj["prompt"], obj["target"]
    if not isinstance(prompt, str):
        raise DsocrError(f"{where}: 'prompt' must be a string")
    if not isinstance(target, str):
        raise DsocrError(f"{where}: 'target' must be a string")

    images: list[Any] = []
    if images_in_record:
        raw = obj["images"]
        if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
            raise DsocrError(f"{where}: 'images' must be a list of non-empty path strings")
        for entry in raw:
            path = Path(entry)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            if check_files and not path.is_file():
                raise DsocrError(f"{where}: image file not found: {entry} (looked for {path})")
            images.append(path)
        count = len(images)
    else:
        count = obj["num_images"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DsocrError(f"{where}: 'num_images' must be a non-negative integer")

    placeholders = prompt.count(IMAGE_TOKEN)
    if placeholders != count:
        raise DsocrError(f"{where}: the prompt has {placeholders} {IMAGE_TOKEN} placeholder(s) "
                         f"but the sample has {count} image(s)")

    boxes = None
    if "boxes" in obj:
        boxes = _parse_boxes(obj["boxes"], where, count)

    sample_id = obj.get("id")
    if sample_id is not None and (not isinstance(sample_id, str) or not sample_id):
        raise DsocrError(f"{where}: 'id' must be a non-empty string")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise DsocrError(f"{where}: 'meta' must be a JSON object")
    return Sample(images=images, prompt=prompt, target=target, boxes=boxes, id=sample_id, meta=meta)


def _parse_boxes(raw: Any, where: str, num_images: int) -> list[Box]:
    if not isinstance(raw, list):
        raise DsocrError(f"{where}: 'boxes' must be a list")
    boxes = []
    for k, entry in enumerate(raw):
        at = f"{where}: boxes[{k}]"
        if not isinstance(entry, dict):
            raise DsocrError(f"{at}: expected an object with 'label' and 'box'")
        unknown = sorted(set(entry) - {"label", "box", "text", "image"})
        if unknown:
            raise DsocrError(f"{at}: unknown key(s) {', '.join(map(repr, unknown))}")
        label, box, text = entry.get("label"), entry.get("box"), entry.get("text", "")
        image = entry.get("image", 0)
        if not isinstance(label, str) or not label:
            raise DsocrError(f"{at}: 'label' must be a non-empty string")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise DsocrError(f"{at}: 'box' must be [x1, y1, x2, y2] (four numbers, pixels)")
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1 or min(box) < 0:
            raise DsocrError(f"{at}: box {box} is inverted or negative")
        if not isinstance(text, str):
            raise DsocrError(f"{at}: 'text' must be a string")
        if not isinstance(image, int) or isinstance(image, bool) or not 0 <= image < max(num_images, 1):
            raise DsocrError(f"{at}: 'image' must be an image index below {num_images}")
        boxes.append(Box(label=label, box=(x1, y1, x2, y2), text=text, image=image))
    return boxes


# ---------------------------------------------------------------------------------------------
# Manifest files
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str], check_files: bool = True) -> list[Sample]:
    """Every sample of a JSONL manifest, image paths resolved against the manifest's folder.

    `check_files=False` skips the check that each image file exists.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DsocrError(f"{path}: no such manifest file") from None
    except IsADirectoryError:
        raise DsocrError(f"{path}: is a directory, not a manifest file") from None
    except UnicodeDecodeError as exc:
        raise DsocrError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DsocrError(f"{path}: cannot read ({exc.strerror or exc})") from None

    base_dir = Path(os.path.abspath(path)).parent
    samples: list[Sample] = []
    seen_ids: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DsocrError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        sample = sample_from_json(obj, where, base_dir=base_dir, check_files=check_files)
        if sample.id is not None:
            if sample.id in seen_ids:
                raise DsocrError(f"{where}: duplicate id {sample.id!r} (first on line {seen_ids[sample.id]})")
            seen_ids[sample.id] = number
        samples.append(sample)
    return samples


def write_manifest(path: str | os.PathLike[str], samples: Iterable[Sample]) -> Path:
    """Write `samples` as a JSONL manifest, atomically; image paths inside the manifest's folder
    are written relative to it. Returns the path."""
    path = Path(path)
    base_dir = Path(os.path.abspath(path)).parent
    lines = [json.dumps(sample.to_json(base_dir), ensure_ascii=False) + "\n" for sample in samples]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(lines)
    return path


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def _image_member(image: Any) -> tuple[bytes, str]:
    """(bytes, extension) of one image: a file's own bytes, or a PIL image encoded as PNG."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    path = Path(image)
    extension = path.suffix.lower().lstrip(".")
    if extension not in IMAGE_EXTENSIONS:
        raise DsocrError(f"{path}: unsupported image extension for a shard ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        return path.read_bytes(), "jpg" if extension == "jpeg" else extension
    except OSError as exc:
        raise DsocrError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterable[Sample], out_dir: str | os.PathLike[str],
                 samples_per_shard: int = 1000) -> list[Path]:
    """Pack `samples` into `out_dir/shard-000000.tar`, ... (webdataset layout, see the module doc).

    Each shard is written atomically. Returns the shard paths in order.
    """
    if samples_per_shard < 1:
        raise DsocrError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            paths.append(_write_shard(out_dir, len(paths), batch))
            batch = []
    if batch:
        paths.append(_write_shard(out_dir, len(paths), batch))
    return paths


def _write_shard(out_dir: Path, index: int, samples: Sequence[Sample]) -> Path:
    path = out_dir / SHARD_NAME.format(index)
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position, sample in enumerate(samples):
                key = f"{index:06d}{position:06d}"
                record = sample._json_fields({"num_images": len(sample.images)})
                _add_member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
                for k, image in enumerate(sample.images):
                    data, extension = _image_member(image)
                    suffix = f".{extension}" if len(sample.images) == 1 else f".{k}.{extension}"
                    _add_member(tar, key + suffix, data)
    return path


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def shard_paths(pattern_or_dir: str | os.PathLike[str]) -> list[Path]:
    """The shard files meant by a directory (its `*.tar`, sorted), a single `.tar` file, a glob
    pattern, or a webdataset brace range such as `data/shard-{000000..000009}.tar`."""
    text = os.fspath(pattern_or_dir)
    path = Path(text)
    if path.is_dir():
        found = sorted(path.glob("*.tar"))
        if not found:
            raise DsocrError(f"{path}: no .tar shards in this directory")
        return found
    if path.is_file():
        return [path]
    match = _BRACES.search(text)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first)
        names = [text[: match.start()] + str(i).zfill(width) + text[match.end():]
                 for i in range(int(first), int(last) + 1)]
        paths = []
        for name in names:
            paths.extend(shard_paths(name))
        return paths
    found = sorted(Path(p) for p in glob.glob(text))
    if not found:
        raise DsocrError(f"{text}: no shard file matches")
    return found


def _split_member_name(name: str) -> tuple[str, str]:
    """(key, field) of a webdataset member: key before the first dot of the base name."""
    directory, _, base = name.rpartition("/")
    key, dot, rest = base.partition(".")
    return (f"{directory}/{key}" if directory else key), rest


def iter_shards(pattern_or_dir: str | os.PathLike[str], load: bool = True) -> Iterator[Sample]:
    """Every sample of the shards (see `shard_paths`) in order, images as RGB PIL images.

    `load=False` leaves the images as raw bytes (for counting or re-packing without decoding).
    """
    for path in shard_paths(pattern_or_dir):
        yield from _iter_shard(path, load)


def _iter_shard(path: Path, load: bool) -> Iterator[Sample]:
    try:
        tar = tarfile.open(path, "r")
    except (tarfile.TarError, OSError) as exc:
        raise DsocrError(f"{path}: not a readable tar file ({exc})") from None
    with tar:
        key: str | None = None
        fields: dict[str, bytes] = {}
        try:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, field_name = _split_member_name(member.name)
                if key is not None and member_key != key:
                    yield _sample_from_fields(path, key, fields, load)
                    fields = {}
                key = member_key
                if field_name in fields:
                    raise DsocrError(f"{path}: member {member.name} appears twice")
                handle = tar.extractfile(member)
                fields[field_name] = handle.read() if handle is not None else b""
        except tarfile.TarError as exc:
            raise DsocrError(f"{path}: corrupt tar file ({exc})") from None
        if key is not None:
            yield _sample_from_fields(path, key, fields, load)


def _sample_from_fields(path: Path, key: str, fields: dict[str, bytes], load: bool) -> Sample:
    where = f"{path}: sample {key}"
    if "json" not in fields:
        raise DsocrError(f"{where}: no {key}.json member")
    try:
        record = json.loads(fields["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsocrError(f"{where}: {key}.json is not valid JSON ({exc})") from None
    sample = sample_from_json(record, where, images_in_record=False)
    count = record["num_images"]
    images: list[Any] = []
    for k in range(count):
        data = _find_image_field(fields, k, count)
        if data is None:
            raise DsocrError(f"{where}: image {k} of {count} is missing")
        if load:
            try:
                opened = Image.open(io.BytesIO(data))
            except Exception as exc:  # Pillow raises assorted types on corrupt data
                raise DsocrError(f"{where}: image {k} is not a readable image ({exc})") from None
            opened.filename = f"{path}:{key}"  # names the sample in load_image's errors
            images.append(load_image(opened))
        else:
            images.append(data)
    sample.images = images
    return sample


def _find_image_field(fields: dict[str, bytes], k: int, count: int) -> bytes | None:
    prefix = "" if count == 1 else f"{k}."
    for extension in IMAGE_EXTENSIONS:
        data = fields.get(prefix + extension)
        if data is not None:
            return data
    return None


# ---------------------------------------------------------------------------------------------
# torch datasets
# ---------------------------------------------------------------------------------------------


class ManifestDataset(Dataset):
    """Map-style dataset over a manifest (or a list of samples); items are loaded `Sample`s."""

    def __init__(self, manifest: str | os.PathLike[str] | Sequence[Sample], check_files: bool = True) -> None:
        if isinstance(manifest, (str, os.PathLike)):
            self.samples = read_manifest(manifest, check_files=check_files)
        else:
            self.samples = list(manifest)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index].load_images()


class ShardDataset(IterableDataset):
    """Iterable dataset over tar shards.

    Shards are dealt round-robin to distributed ranks (`rank`, `world_size`) and then to the
    DataLoader's workers, so each shard is read by exactly one worker of one rank. With
    `shuffle_seed`, the shard order is shuffled with that seed plus `set_epoch`'s epoch.
    """

    def __init__(self, pattern_or_dir: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
                 shuffle_seed: int | None = None) -> None:
        if not 0 <= rank < world_size:
            raise DsocrError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.paths = shard_paths(pattern_or_dir)
        self.rank = rank
        self.world_size = world_size
        self.shuffle_seed = shuffle_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for_worker(self, worker_id: int = 0, num_workers: int = 1) -> list[Path]:
        paths = list(self.paths)
        if self.shuffle_seed is not None:
            import random

            random.Random(self.shuffle_seed * 1_000_003 + self.epoch).shuffle(paths)
        paths = paths[self.rank::self.world_size]
        return paths[worker_id::num_workers]

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for path in self.shards_for_worker(worker_id, num_workers):
            yield from _iter_shard(path, load=True)
