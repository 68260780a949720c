"""Lazy access to the tensors of a checkpoint on disk, whatever its file layout.

Layouts: one `.safetensors` file (memory-mapped), one pickled state dict (`.bin`/`.pth`/`.pt`,
loaded with `weights_only=True`, memory-mapped when it is a zip archive), a sharded checkpoint
(`*.index.json`), or a directory holding any of these (safetensors preferred).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import DsocrError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# Preferred file names inside a checkpoint directory, best first.
_DIRECTORY_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def resolve_files(path: str | Path) -> list[Path]:
    """The weight files behind `path` (a file, an index, or a directory), as a list of shards."""
    path = Path(path)
    if not path.exists():
        raise DsocrError(f"{path}: no such file or directory")
    if path.is_dir():
        for name in _DIRECTORY_CANDIDATES:
            if (path / name).is_file():
                return resolve_files(path / name)
        found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pth"))
        if not found:
            raise DsocrError(f"{path}: directory holds no checkpoint (*.safetensors, *.bin, *.pth, *.index.json)")
        return found
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DsocrError(f"{path}: not a valid checkpoint index ({exc.__class__.__name__})") from None
        shards = []
        for name in dict.fromkeys(weight_map.values()):
            shard = path.parent / name
            if not shard.is_file():
                raise DsocrError(f"{path}: shard {name} is missing")
            shards.append(shard)
        return shards
    return [path]


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _load_pickle(path: Path) -> dict:
    """A pickled state dict, without running code from the file."""
    from .formats import is_torchscript_archive, read_torchscript, unpickling_error_detail

    if is_torchscript_archive(path):  # e.g. OpenAI's CLIP ViT-L-14.pt: tensors only, no code run
        return read_torchscript(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is the user's file
        raise DsocrError(f"{path}: cannot be read as a PyTorch checkpoint ({unpickling_error_detail(exc, path)})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DsocrError(f"{path}: holds no state dict of tensors")
    return obj


class Checkpoint(Mapping[str, torch.Tensor]):
    """Read-only mapping name -> tensor over one or more shards; tensors are read on access.

    Names, shapes and dtypes of safetensors shards are known without reading any tensor data.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = resolve_files(path)
        self._where: dict[str, tuple[Path, object]] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.metadata: dict[str, str] = {}
        for file in self.files:
            if _is_safetensors(file):
                self._index_safetensors(file)
            else:
                for name, tensor in _load_pickle(file).items():
                    self._where[name] = (file, tensor)
                    self._meta[name] = (tuple(tensor.shape), tensor.dtype)

    def _index_safetensors(self, file: Path) -> None:
        try:
            handle = safe_open(str(file), framework="pt")
            self.metadata.update(handle.metadata() or {})
            for name in handle.keys():
                piece = handle.get_slice(name)
                self._where[name] = (file, handle)
                self._meta[name] = (tuple(piece.get_shape()), _SAFETENSORS_DTYPES.get(piece.get_dtype(), None))
        except DsocrError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt or truncated file
            raise DsocrError(f"{file}: not a valid safetensors file ({str(exc).splitlines()[0][:200]})") from None

    @property
    def format(self) -> str:
        kinds = {"safetensors" if _is_safetensors(f) else "pickle" for f in self.files}
        sharded = len(self.files) > 1 or self.path.name.endswith(".index.json")
        return ("sharded " if sharded else "") + "+".join(sorted(kinds))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype | None:
        return self._meta[name][1]

    def __getitem__(self, name: str) -> torch.Tensor:
        file, source = self._where[name]
        if isinstance(source, torch.Tensor):
            return source
        try:
            return source.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - truncated data
            raise DsocrError(f"{file}: tensor {name} cannot be read ({str(exc).splitlines()[0][:200]})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
