"""Training checkpoints, written atomically (a temporary folder renamed into place):

    OUT/checkpoints/step-00000100/
        model/config.json, model/model.safetensors   the model in the official layout (LoRA merged)
        trainable.safetensors                        LoRA runs only: the trainable tensors, unmerged
        trainer.pt                                   optimizer, RNG states, data position, step

`model/` loads with `DeepSeekOCRForCausalLM.from_pretrained` like a released checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DsocrError
from ..files import atomic_path

PREFIX = "step-"


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_official(official_config: dict, state: dict[str, torch.Tensor], directory: Path) -> None:
    """config.json + model.safetensors with the official names (what `save_pretrained` writes)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(directory / "config.json") as tmp:
        tmp.write_text(json.dumps(official_config, indent=2))


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(out_dir: str | Path, step: int, official_config: dict, official_state: dict,
                    trainer_state: dict, trainable: dict | None = None, keep: int = 3) -> Path:
    """Write checkpoint `step` (main process only) and delete all but the `keep` newest."""
    from safetensors.torch import save_file

    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
    try:
        save_official(official_config, official_state, tmp / "model")
        if trainable is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        if final.exists():  # the same step written again (a resumed run that re-reached it)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: str | Path, which: str = "latest") -> Path:
    """`latest` (the newest under OUT/checkpoints) or a checkpoint folder's path."""
    if which != "latest":
        path = Path(which)
        if not (path / "trainer.pt").is_file():
            raise DsocrError(f"{path}: not a training checkpoint (no trainer.pt)")
        return path
    found = checkpoint_dirs(out_dir)
    if not found:
        raise DsocrError(f"{Path(out_dir) / 'checkpoints'}: no checkpoint to resume from")
    return found[-1]


def load_trainer_state(path: Path) -> dict:
    # Our own file, with Python/numpy RNG states in it: not weights-only.
    return torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)


def load_model_tensors(path: Path, lora: bool) -> dict[str, torch.Tensor]:
    """The tensors to put back into the model: all of them (official layout), or for a LoRA run
    the trainable ones only (the frozen base is rebuilt from its source)."""
    from safetensors.torch import load_file

    return load_file(str(path / ("trainable.safetensors" if lora else "model/model.safetensors")))
