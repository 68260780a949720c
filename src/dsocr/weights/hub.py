"""Where `dsocr convert --sam/--clip SRC` finds its weights: a local path, a URL (downloaded once
into the cache, atomically, with a progress bar), or a model id on the Hugging Face Hub or on
ModelScope (weights and config only, safetensors preferred)."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from ..errors import DsocrError
from ..files import atomic_path

# The public checkpoints DeepEncoder is built from (spec §9).
SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
KNOWN_REPOS = ("facebook/sam-vit-base", "openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14-336")

SAFETENSORS_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
PICKLE_PATTERNS = ["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
HUBS = ("hf", "modelscope")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_cache_dir() -> Path:
    """`$DSOCR_CACHE`, else `$XDG_CACHE_HOME/dsocr`, else `~/.cache/dsocr`."""
    if os.environ.get("DSOCR_CACHE"):
        return Path(os.environ["DSOCR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "dsocr"


def is_url(spec: str) -> bool:
    return urlparse(spec).scheme in ("http", "https")


def is_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not spec.endswith((".pth", ".pt", ".bin", ".safetensors", ".json"))


def resolve_source(
    spec: str, hub: str = "hf", cache_dir: str | Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """A local path for `spec`: an existing file or directory as it is, a URL downloaded into the
    cache, a hub id (`owner/name`) downloaded with `snapshot_download`."""
    if hub not in HUBS:
        raise DsocrError(f"unknown hub {hub!r}; expected one of {', '.join(HUBS)}")
    if is_url(spec):
        return download_url(spec, Path(cache_dir) if cache_dir else default_cache_dir(), log)
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if is_repo_id(spec):
        if hub == "modelscope":
            return modelscope_snapshot(spec, cache_dir, log)
        return hf_snapshot(spec, cache_dir, log)
    raise DsocrError(f"{spec}: no such file or directory (nor a URL or an owner/name hub id)")


# -- URLs -------------------------------------------------------------------------------------


def _open_url(url: str):
    """urlopen, kept separate so tests can replace it."""
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - http(s) only, checked by is_url


def download_url(url: str, cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Download `url` to `cache_dir/<file name>` once; reuse it afterwards. The file appears only
    when complete (and as long as the server announced)."""
    from tqdm import tqdm

    name = Path(urlparse(url).path).name or "download"
    target = cache_dir / name
    if target.is_file():
        return target
    log(f"downloading {url} -> {target}")
    try:
        with _open_url(url) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise DsocrError(f"{url}: download incomplete ({received} of {total} bytes)")
    except DsocrError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and disk errors reach the user in one line
        raise DsocrError(f"{url}: download failed ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    return target


# -- hubs -------------------------------------------------------------------------------------


def _has_weights(directory: Path) -> bool:
    return any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))


def _hf_snapshot_download(repo_id: str, allow_patterns: list[str], cache_dir: str | None) -> str:
    """huggingface_hub.snapshot_download, kept separate so tests can replace it."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir)


def hf_snapshot(repo_id: str, cache_dir: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Download weights + config of a Hugging Face Hub repo: safetensors if it has them, else
    pytorch_model.bin. Returns the snapshot directory."""
    cache = str(cache_dir) if cache_dir else None
    for patterns in (SAFETENSORS_PATTERNS, PICKLE_PATTERNS):
        log(f"fetching {repo_id} ({', '.join(p for p in patterns if p != 'config.json')}) from the Hugging Face Hub")
        try:
            directory = Path(_hf_snapshot_download(repo_id, patterns, cache))
        except Exception as exc:  # noqa: BLE001 - repository, auth and network errors
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise DsocrError(f"{repo_id}: cannot download from the Hugging Face Hub ({exc.__class__.__name__}: {first})") from None
        if _has_weights(directory):
            return directory
    raise DsocrError(f"{repo_id}: the Hugging Face Hub repo has no model.safetensors or pytorch_model.bin")


def _modelscope_snapshot_download(repo_id: str, allow_patterns: list[str], cache_dir: str | None) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise DsocrError("--hub modelscope needs the modelscope package (pip install modelscope)") from None
    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns)
    except TypeError:  # older modelscope releases name the filter allow_file_pattern
        return snapshot_download(repo_id, cache_dir=cache_dir, allow_file_pattern=allow_patterns)


def modelscope_snapshot(repo_id: str, cache_dir: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Like `hf_snapshot`, from ModelScope."""
    cache = str(cache_dir) if cache_dir else None
    for patterns in (SAFETENSORS_PATTERNS, PICKLE_PATTERNS):
        log(f"fetching {repo_id} from ModelScope")
        try:
            directory = Path(_modelscope_snapshot_download(repo_id, patterns, cache))
        except DsocrError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise DsocrError(f"{repo_id}: cannot download from ModelScope ({exc.__class__.__name__}: {first})") from None
        if _has_weights(directory):
            return directory
    raise DsocrError(f"{repo_id}: the ModelScope repo has no model.safetensors or pytorch_model.bin")



# -- whole DeepSeek-OCR model directories -------------------------------------------------------

# What `DeepSeekOCR.from_pretrained` needs of a hub repo: config, weights, tokenizer.
MODEL_PATTERNS = [
    "config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "processor_config.json",
]


def resolve_model_dir(
    spec: str, hub: str = "hf", cache_dir: str | Path | None = None, log: Callable[[str], None] = print
) -> Path:
    """A DeepSeek-OCR model directory: a local directory as it is, or a hub id downloaded once
    (config, safetensors, tokenizer files) into the hub's cache."""
    if hub not in HUBS:
        raise DsocrError(f"unknown hub {hub!r}; expected one of {', '.join(HUBS)}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DsocrError(f"{spec}: a model is a directory (config.json, safetensors, tokenizer), not a file")
    if not is_repo_id(spec):
        raise DsocrError(f"{spec}: no such directory (nor an owner/name hub id)")
    cache = str(cache_dir) if cache_dir else None
    where = "ModelScope" if hub == "modelscope" else "the Hugging Face Hub"
    log(f"fetching {spec} from {where} (once; cached)")
    download = _modelscope_snapshot_download if hub == "modelscope" else _hf_snapshot_download
    try:
        directory = Path(download(spec, MODEL_PATTERNS, cache))
    except DsocrError:
        raise
    except Exception as exc:  # noqa: BLE001 - repository, auth and network errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DsocrError(f"{spec}: cannot download from {where} ({exc.__class__.__name__}: {first})") from None
    if not (directory / "config.json").is_file() or not any(directory.glob("*.safetensors")):
        raise DsocrError(f"{spec}: the repo has no config.json and safetensors weights")
    return directory
