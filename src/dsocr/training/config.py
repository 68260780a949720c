"""The training configuration: a TOML file read with the standard library's `tomllib`.

Sections (every key optional unless noted; see configs/*.toml and docs/training.md):

    seed, max_steps, out_dir, precision ("fp32" | "bf16"), activation_checkpointing,
    distributed ("none" | "ddp" | "fsdp2"), device ("auto" | "cpu" | "cuda"), loss_chunk
    [model]       stage ("stage1" | "stage2" | "finetune"), encoder, path, tokenizer, freeze,
                  aux_loss_layers, [model.decoder] (stage 1's compact LM), [model.vision], [model.lora]
    [data]        manifests, shards, mode, max_tiles, max_length, batch_size, num_workers
    [optim]       lr, betas, eps, weight_decay, schedule, warmup_steps, min_lr_ratio,
                  milestones, gamma, grad_accum, clip, fused
    [checkpoint]  every, keep
    [logging]     every, tensorboard, progress

Relative input paths (encoder, path, tokenizer, manifests, shards) are taken relative to the
config file; `out_dir` relative to the current directory.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import DsocrError

STAGES = ("stage1", "stage2", "finetune")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("fp32", "bf16")
DISTRIBUTED = ("none", "ddp", "fsdp2")


@dataclass
class LoraConfig:
    rank: int = 0  # 0: no LoRA
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    components: list[str] = field(default_factory=lambda: ["decoder"])


@dataclass
class ModelConfig:
    stage: str = "finetune"
    encoder: str | None = None  # stage 1: DeepEncoder weights (official checkpoint or `dsocr convert` output)
    path: str | None = None  # stage 2 / finetune: a DeepSeek-OCR model directory
    tokenizer: str | None = None  # a directory with tokenizer.json; default: dsocr's built-in tokenizer
    decoder: dict[str, Any] = field(default_factory=dict)  # stage 1: DecoderConfig fields of the compact LM
    vision: dict[str, Any] = field(default_factory=dict)  # stage 1 without encoder weights: DeepEncoderConfig sizes
    freeze: list[str] | None = None  # components or parameter-name prefixes; None: the stage's default
    aux_loss_layers: str = "sum"  # "sum" (official DeepSeek-V2: every layer's loss added) or "mean"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    manifests: list[str] = field(default_factory=list)  # JSONL manifests
    shards: list[str] = field(default_factory=list)  # shard directories / files / patterns (read into memory)
    mode: Any = "tiny"  # a mode name, or a table {base_size, image_size, crop}
    max_tiles: int | None = None
    max_length: int = 4096
    batch_size: int = 8  # sequences per micro-step over all processes together
    num_workers: int = 0
    padding: str = "right"  # "right" | "left"


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    milestones: list[int] = field(default_factory=list)  # step schedule: lr *= gamma at each milestone
    gamma: float = 0.1
    grad_accum: int = 1
    clip: float = 1.0  # max gradient norm; 0 = no clipping
    fused: bool = True  # torch's fused AdamW kernel (CPU and CUDA; several times faster than the loop)


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps; a checkpoint is always written at the last step
    keep: int = 3  # most recent checkpoints kept


@dataclass
class LoggingConfig:
    every: int = 1  # steps between metric records
    tensorboard: str = "auto"  # "auto" (if installed) | "on" | "off"
    progress: bool = True  # tqdm bar


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    max_steps: int = 1000
    out_dir: str = "runs/train"
    precision: str = "fp32"
    activation_checkpointing: bool = False
    distributed: str = "none"
    device: str = "auto"
    loss_chunk: int = 2048  # answer tokens whose logits are computed at once (memory vs. one extra lm_head pass)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        m, d, o = self.model, self.data, self.optim
        _choice("model.stage", m.stage, STAGES)
        _choice("optim.schedule", o.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("distributed", self.distributed, DISTRIBUTED)
        _choice("model.aux_loss_layers", m.aux_loss_layers, ("sum", "mean"))
        _choice("data.padding", d.padding, ("right", "left"))
        _choice("logging.tensorboard", self.logging.tensorboard, ("auto", "on", "off"))
        if m.stage in ("stage2", "finetune") and not m.path:
            raise DsocrError(f"model.path (a DeepSeek-OCR model directory) is needed for {m.stage}")
        if m.stage == "stage1" and m.path:
            raise DsocrError("model.path is for stage2/finetune; stage 1 takes model.encoder and [model.decoder]")
        if m.lora.rank < 0 or (m.lora.rank and m.lora.alpha <= 0):
            raise DsocrError("model.lora: rank must be >= 0 and alpha > 0")
        if not d.manifests and not d.shards:
            raise DsocrError("data: give manifests = [...] or shards = [...]")
        for name in ("max_steps", "data.batch_size", "data.max_length", "optim.grad_accum", "checkpoint.every",
                     "checkpoint.keep", "logging.every", "loss_chunk"):
            if self.get(name) < 1:
                raise DsocrError(f"{name} must be at least 1, got {self.get(name)}")
        if d.num_workers < 0 or o.warmup_steps < 0 or o.lr <= 0 or o.clip < 0:
            raise DsocrError("data.num_workers, optim.warmup_steps, optim.clip must be >= 0 and optim.lr > 0")
        if len(o.betas) != 2:
            raise DsocrError(f"optim.betas must be two numbers, got {o.betas}")
        return self

    def get(self, dotted: str) -> Any:
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DsocrError(f"{name} = {value!r}; expected one of {', '.join(allowed)}")


def _build(cls, values: dict[str, Any], where: str):
    """A dataclass from a TOML table; unknown keys are errors (most likely typos)."""
    if not isinstance(values, dict):
        raise DsocrError(f"{where or 'config'}: expected a table, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise DsocrError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        default = cls.__dataclass_fields__[name].default_factory
        sub = default() if callable(default) else None
        if is_dataclass(sub):
            value = _build(type(sub), value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(values: dict[str, Any], dotted: str, raw: str) -> None:
    """`optim.lr=1e-4`: the value is read as TOML (numbers, booleans, arrays), else as a string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *parents, last = dotted.split(".")
    table = values
    for part in parents:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise DsocrError(f"--set {dotted}: {part} is not a table")
    table[last] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config (or take `values`), apply `section.key=value` overrides, validate.

    Relative input paths are made absolute against the config file's folder.
    """
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DsocrError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise DsocrError(f"{path}: not valid TOML ({exc})") from None
        base = path.resolve().parent
    values = dict(values or {})
    for item in overrides or []:
        if "=" not in item:
            raise DsocrError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), raw.strip())
    try:
        config = _build(TrainConfig, values, "")
    except TypeError as exc:
        raise DsocrError(f"config: {exc}") from None

    def resolve(p: str | None) -> str | None:
        """Against the config's folder when that exists; else as given (a hub id, or an error later)."""
        if p is None:
            return None
        candidate = base / Path(p).expanduser()
        return str(candidate) if candidate.exists() or "*" in p or "{" in p else p

    m, d = config.model, config.data
    m.encoder, m.path, m.tokenizer = resolve(m.encoder), resolve(m.path), resolve(m.tokenizer)
    d.manifests = [resolve(p) for p in d.manifests]
    d.shards = [resolve(p) for p in d.shards]
    return config.validate()
