"""What a weight file is, read without trusting it, and a streaming safetensors writer.

- `sniff` looks at a file's first bytes (and a zip's table of contents) and names its format, so
  that a text file, random bytes or a truncated download is refused with a clear message before
  any unpickling is tried.
- `read_torchscript` reads the tensors of a TorchScript archive (OpenAI's CLIP `ViT-L-14.pt`)
  without executing any of its code: `data.pkl` is unpickled by a restricted unpickler that only
  builds plain containers, module attribute dicts and tensors, and the tensors are views of the
  memory-mapped archive.
- `open_checkpoint` = `sniff` + `Checkpoint`, with one-line errors.
- `write_safetensors` writes a safetensors file one tensor at a time.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DsocrError

EXPECTED_CHECKPOINT = (
    "expected a checkpoint: a .safetensors file, a PyTorch .bin/.pth/.pt state dict, "
    "a TorchScript .pt archive, a sharded *.index.json or a model directory"
)

# -- sniffing ---------------------------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class FileFormat:
    """The format of one file on disk. `kind` is one of: safetensors, pytorch-zip,
    pytorch-legacy, torchscript, index, directory."""

    kind: str
    description: str


FORMAT_NAMES = {
    "safetensors": "safetensors",
    "pytorch-zip": "PyTorch pickle (zip)",
    "pytorch-legacy": "PyTorch pickle (legacy, not memory-mapped)",
    "torchscript": "TorchScript archive",
    "index": "sharded checkpoint index",
    "directory": "model directory",
}


def sniff(path: str | Path) -> FileFormat:
    """Name the format of `path` from its content; raise DsocrError saying what was found otherwise."""
    path = Path(path)
    if not path.exists():
        raise DsocrError(f"{path}: no such file or directory")
    if path.is_dir():
        return FileFormat("directory", FORMAT_NAMES["directory"])
    size = path.stat().st_size
    if size == 0:
        raise DsocrError(f"{path}: found an empty file; {EXPECTED_CHECKPOINT}")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        return _sniff_zip(path)
    if path.name.endswith(".json"):
        return _sniff_index(path)
    if len(head) >= 9 and head[8:9] == b"{":
        return _sniff_safetensors(path, head, size)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return FileFormat("pytorch-legacy", FORMAT_NAMES["pytorch-legacy"])
    raise DsocrError(f"{path}: found {_describe_bytes(head)}; {EXPECTED_CHECKPOINT}")


def _describe_bytes(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starting {first!r})"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a TensorFlow/Keras checkpoint?)"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def _sniff_zip(path: Path) -> FileFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DsocrError(f"{path}: found a truncated or corrupt zip archive ({exc}); {EXPECTED_CHECKPOINT}") from None
    if _torchscript_root(names) is not None:
        return FileFormat("torchscript", FORMAT_NAMES["torchscript"])
    if any(name.endswith("data.pkl") for name in names):
        return FileFormat("pytorch-zip", FORMAT_NAMES["pytorch-zip"])
    raise DsocrError(f"{path}: found a zip archive with no data.pkl (not a PyTorch file); {EXPECTED_CHECKPOINT}")


def _sniff_safetensors(path: Path, head: bytes, size: int) -> FileFormat:
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > _MAX_SAFETENSORS_HEADER:
        raise DsocrError(f"{path}: found {_describe_bytes(head)}; {EXPECTED_CHECKPOINT}")
    if 8 + header_len > size:
        raise DsocrError(
            f"{path}: found a truncated safetensors file (header of {header_len} bytes, file of {size}); "
            "download it again"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        raise DsocrError(f"{path}: found a corrupt safetensors header; {EXPECTED_CHECKPOINT}") from None
    if 8 + header_len + end > size:
        raise DsocrError(
            f"{path}: found a truncated safetensors file ({size} bytes, its header needs "
            f"{8 + header_len + end}); download it again"
        )
    return FileFormat("safetensors", FORMAT_NAMES["safetensors"])


def _sniff_index(path: Path) -> FileFormat:
    try:
        index = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DsocrError(f"{path}: found a JSON file that does not parse; {EXPECTED_CHECKPOINT}") from None
    if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
        return FileFormat("index", FORMAT_NAMES["index"])
    raise DsocrError(f"{path}: found a JSON file without a weight_map; {EXPECTED_CHECKPOINT}")


def check_files(files: Iterable[Path]) -> list[FileFormat]:
    """Sniff every shard of a checkpoint (raises on the first bad one)."""
    return [sniff(f) for f in files]


def open_checkpoint(path: str | Path):
    """A lazy `Checkpoint` over `path`, after checking that every file in it is a checkpoint."""
    from .checkpoint import Checkpoint, resolve_files

    path = Path(path)
    sniff(path)
    for file in resolve_files(path):
        sniff(file)
    return Checkpoint(path)


def describe_formats(checkpoint) -> str:
    """Human name of a Checkpoint's on-disk format, e.g. 'safetensors' or 'TorchScript archive'."""
    kinds = list(dict.fromkeys(sniff(f).kind for f in checkpoint.files))
    name = " + ".join(FORMAT_NAMES[k] for k in kinds)
    if len(checkpoint.files) > 1:
        name = f"sharded {name} ({len(checkpoint.files)} shards)"
    return name


def unpickling_error_detail(exc: BaseException, path: str | Path | None = None) -> str:
    """One line saying why a pickle was refused: the callables it names, when it needs code execution."""
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    called = [match.group(1)] if match else []
    if not called and path is not None and "weights only" in text.lower():
        called = [g for g in pickle_globals(path) if not _is_plain_torch_global(g)]
    if called:
        return (
            f"refused: it is a pickle that needs code execution ({', '.join(called[:3])}); "
            "expected a plain state dict of tensors"
        )
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    detail = next((line for line in lines if "WeightsUnpickler error" in line or "Unsupported" in line), None)
    if detail is None:
        detail = lines[0] if lines else exc.__class__.__name__
    return detail[:200]


def _is_plain_torch_global(name: str) -> bool:
    return name.startswith(("torch._utils.", "torch.serialization.", "torch._tensor.")) or name in {
        "collections.OrderedDict", "torch.device", "torch.Size", "_codecs.encode",
    } or (name.startswith("torch.") and (name.endswith("Storage") or name.count(".") == 1))


_STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(path: str | Path, max_pickles: int = 4) -> list[str]:
    """The `module.name` callables a pickle file refers to, found by parsing its opcodes (nothing
    is executed). For a zip checkpoint the pickles inside it are scanned; for a legacy torch file
    the first few concatenated pickles."""
    import pickletools

    path = Path(path)
    streams: list[io.BufferedIOBase] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                streams = [io.BytesIO(archive.read(n)) for n in archive.namelist() if n.endswith(".pkl")]
        else:
            streams = [io.BytesIO(path.read_bytes())]
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    for stream in streams:
        for _ in range(max_pickles):
            recent: list[object] = []
            memo: dict[int, object] = {}
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    name = op.name
                    if name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                    elif name == "STACK_GLOBAL" and len(recent) >= 2:
                        found.append(f"{recent[-2]}.{recent[-1]}")
                    if name in _STRING_OPCODES:
                        recent.append(arg)
                    elif name in ("BINGET", "LONG_BINGET", "GET"):
                        recent.append(memo.get(arg))
                    elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                        memo[arg] = recent[-1] if recent else None
                    elif name == "MEMOIZE":
                        memo[len(memo)] = recent[-1] if recent else None
                    else:
                        recent.append(None)
            except Exception:  # noqa: BLE001 - end of the pickles, or not a pickle at all
                break
    return list(dict.fromkeys(found))


# -- TorchScript archives ---------------------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _torchscript_root(names: list[str]) -> str | None:
    """The archive's top folder if it is a TorchScript archive (it has code/ and constants.pkl)."""
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "constants.pkl":
            root = parts[0]
            if f"{root}/data.pkl" in names and any(n.startswith(f"{root}/code/") for n in names):
                return root
    return None


def is_torchscript_archive(path: str | Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return _torchscript_root(archive.namelist()) is not None
    except (zipfile.BadZipFile, OSError):
        return False


class _ScriptObject:
    """Stands in for any `__torch__.*` class of the archive: it only keeps the attribute dict."""

    def __init__(self, *args):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


class _StorageType:
    """Stands in for `torch.FloatStorage` & co. in persistent ids: only its dtype matters."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return torch.empty(0, dtype=storage[1]).set_(storage[0], storage_offset, tuple(size), tuple(stride))


def _identity(value, *args):
    return value


# The only globals a TorchScript data.pkl may name. Everything else means code would run.
_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "build_intlist_from_id"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage: Callable[[str, torch.dtype, int], object]):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id without a storage type")
        return self._load_storage(key, storage_type.dtype, int(numel)), storage_type.dtype


def _flatten(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Collect the tensors of a module tree under dotted names (`visual.conv1.weight`)."""
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, _ScriptObject):
        for name, value in obj.state.items():
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors (parameters, buffers, tensor attributes) of a TorchScript archive.

    Nothing from the archive is executed: `data.pkl` is read by a restricted unpickler and the
    tensors are views of the memory-mapped file (copies only for compressed entries).
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DsocrError(f"{path}: found a truncated or corrupt zip archive ({exc})") from None
    with archive:
        root = _torchscript_root(archive.namelist())
        if root is None:
            raise DsocrError(f"{path}: not a TorchScript archive (no code/ and constants.pkl)")
        byteorder = archive.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in archive.namelist() else "little"
        if byteorder != "little":
            raise DsocrError(f"{path}: TorchScript archive is {byteorder}-endian; only little-endian is supported")
        file_size = path.stat().st_size
        mapped = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=file_size)
        storages: dict[str, torch.UntypedStorage] = {}

        def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
            if key not in storages:
                storages[key] = _archive_entry(archive, path, mapped, f"{root}/data/{key}", numel * dtype.itemsize)
            return storages[key]

        try:
            obj = _RestrictedUnpickler(archive.read(f"{root}/data.pkl"), load_storage).load()
        except DsocrError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything wrong in the user's file
            raise DsocrError(f"{path}: TorchScript archive cannot be read ({unpickling_error_detail(exc)})") from None
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, "", tensors)
    if not tensors:
        raise DsocrError(f"{path}: TorchScript archive holds no tensors")
    return tensors


def _archive_entry(archive: zipfile.ZipFile, path: Path, mapped: torch.UntypedStorage, name: str, nbytes: int):
    """The bytes of one stored zip entry as a storage: a slice of the mapped file when stored uncompressed."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise DsocrError(f"{path}: TorchScript archive lacks {name}") from None
    if info.file_size < nbytes:
        raise DsocrError(f"{path}: {name} holds {info.file_size} bytes, its tensor needs {nbytes}")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if local[:4] != _ZIP_MAGIC:
            raise DsocrError(f"{path}: corrupt zip entry {name}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + nbytes > mapped.nbytes():
            raise DsocrError(f"{path}: truncated (entry {name} runs past the end of the file)")
        return mapped[start : start + nbytes]
    data = bytearray(archive.read(name))
    return torch.frombuffer(data, dtype=torch.uint8).untyped_storage()


# -- writing ----------------------------------------------------------------------------------

_SAFETENSORS_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * self.dtype.itemsize


def write_safetensors(
    path: str | Path,
    specs: list[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors are made one at a time by `produce(spec)`.

    The header is written first from the specs, so at most one produced tensor is alive at a
    time. Each produced tensor must have exactly its spec's shape and dtype.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": _SAFETENSORS_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            tensor = produce(spec)
            if tuple(tensor.shape) != tuple(spec.shape) or tensor.dtype != spec.dtype:
                raise DsocrError(
                    f"internal error: {spec.name} produced {tuple(tensor.shape)} {tensor.dtype}, "
                    f"expected {spec.shape} {spec.dtype}"
                )
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            del tensor, data
        f.flush()
        os.fsync(f.fileno())
