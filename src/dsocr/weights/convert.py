"""`dsocr convert`: DeepEncoder weights from public SAM-B and CLIP-L/14 checkpoints (spec §9).

Steps:
1. resolve each source (path, URL or hub id) and open it lazily; identify it and refuse the
   wrong model with what was found and what was expected;
2. plan every DeepEncoder tensor: from which source tensor(s) and by which transform (rename,
   concat q,k,v, resample positions), or initialised from `--seed` when no public source has it
   (`net_2`, `net_3`, the projector, `image_newline`, `view_seperator`);
3. stream the tensors one at a time into a temporary safetensors file with the official names
   and the DeepEncoderConfig in its metadata;
4. optionally verify it numerically against the source library (segment-anything or
   transformers) on a fixed random probe; only then rename it onto the output path;
5. write the report (Markdown or JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from ..errors import DsocrError
from ..files import atomic_path
from ..model import ClipConfig, ClipVisionTower, DeepEncoder, DeepEncoderConfig, SamConfig, SamEncoder
from . import keymaps
from .checkpoint import Checkpoint
from .formats import TensorSpec, describe_formats, open_checkpoint, write_safetensors
from .hub import resolve_source
from .inspect import (
    CLIP_KINDS, CLIP_OPENAI, CONFIG_METADATA_KEY, SAM_HF, SAM_KINDS, SAM_SEGMENT_ANYTHING, UNKNOWN, Identity,
    identify,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TOLERANCE = 1e-4
OFFICIAL_PREFIX = "model."

SAM_EXPECTED = (
    "expected SAM ViT-B (width 768, 12 blocks): segment-anything's sam_vit_b .pth or transformers' facebook/sam-vit-base"
)
CLIP_EXPECTED = (
    "expected CLIP ViT-L/14 (width 1024, 224 or 336 px): transformers' openai/clip-vit-large-patch14[-336] "
    "or OpenAI's ViT-L-14.pt"
)


# -- sources ----------------------------------------------------------------------------------


@dataclass
class Source:
    """One opened, identified input checkpoint."""

    role: str  # "sam" or "clip"
    spec: str  # as the user gave it
    checkpoint: Checkpoint
    identity: Identity
    vision_config: dict = field(default_factory=dict)  # from a config.json beside the weights

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def plan(self) -> keymaps.KeyPlan:
        return self.identity.plan


def open_source(spec: str, role: str, hub: str = "hf", cache_dir=None, log: Callable[[str], None] = print) -> Source:
    """Resolve, open and identify `spec`; refuse it unless it is the model `role` needs."""
    try:
        path = resolve_source(spec, hub, cache_dir, log)
        checkpoint = open_checkpoint(path)
        identity = identify({name: checkpoint.shape(name) for name in checkpoint}, checkpoint.metadata)
    except DsocrError as exc:
        raise DsocrError(f"--{role}: {exc}") from None
    source = Source(role, spec, checkpoint, identity, _vision_config(checkpoint))
    check_source(source)
    return source


_HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def _vision_config(checkpoint: Checkpoint) -> dict:
    """The (vision) config of a transformers checkpoint directory, or {} (a lone file's neighbours
    are not trusted to describe it)."""
    given = checkpoint.path
    if not (given.is_dir() or given.name in _HF_WEIGHT_NAMES or given.name.endswith(".index.json")):
        return {}
    path = checkpoint.files[0].parent / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    vision = config.get("vision_config")
    return vision if isinstance(vision, dict) else config


def found(source: Source) -> str:
    """What a source is, for messages: 'SAM (segment-anything) ViT-H (width 1280, 32 blocks)'."""
    identity = source.identity
    if identity.kind == UNKNOWN:
        names = list(source.checkpoint)[:3]
        return f"an unrecognised checkpoint ({len(source.checkpoint)} tensors: {', '.join(names)}, ...)"
    d = identity.details
    if "incomplete" in d:
        return f"{identity.name} with incomplete weights ({d['incomplete']})"
    if identity.kind in SAM_KINDS:
        return f"{identity.describe()} (width {d['width']}, {_count(d['depth'], 'block')})"
    if identity.kind in CLIP_KINDS and "width" in d:
        return f"{identity.describe()} (width {d['width']}, {_count(d['depth'], 'layer')})"
    return identity.describe()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def check_source(source: Source) -> None:
    """Refuse a source that is not the model its role needs, naming what was found."""
    identity, where = source.identity, f"--{source.role} {source.spec}"
    if "incomplete" in identity.details:
        raise DsocrError(f"{where}: found {found(source)}; {SAM_EXPECTED if source.role == 'sam' else CLIP_EXPECTED}")
    if source.role == "sam":
        if identity.kind not in SAM_KINDS or (identity.standard and identity.variant != "ViT-B"):
            raise DsocrError(f"{where}: found {found(source)}; {SAM_EXPECTED}")
    else:
        if identity.kind not in CLIP_KINDS or identity.details.get("architecture") == "ResNet":
            raise DsocrError(f"{where}: found {found(source)}; {CLIP_EXPECTED}")
        d = identity.details
        if identity.standard and not (d["width"] == 1024 and d["patch_size"] == 14 and d["grid"] in (16, 24)):
            raise DsocrError(f"{where}: found {found(source)}; {CLIP_EXPECTED}")
        act = source.vision_config.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise DsocrError(f"{where}: its config says hidden_act={act}; DeepEncoder's CLIP uses quick_gelu")
    if identity.plan.unexpected:
        sample = ", ".join(identity.plan.unexpected[:3])
        raise DsocrError(
            f"{where}: found {found(source)} with {_count(len(identity.plan.unexpected), 'tensor')} it should not have "
            f"({sample}); is it the right file?"
        )


# -- the target -------------------------------------------------------------------------------


def build_config(sam: Source, clip: Source, output_dim: int = 1280) -> DeepEncoderConfig:
    """DeepEncoder's sizes from the two sources: SAM and CLIP as they are, the compressor ending at
    CLIP's width (net_2: width // 2, net_3: width), the projector to `output_dim`."""
    if output_dim <= 0:
        raise DsocrError(f"--output-dim must be positive, got {output_dim}")
    s, c = sam.identity.details, clip.identity.details
    sam_config = SamConfig(
        image_size=s["image_size"], patch_size=s["patch_size"], width=s["width"], depth=s["depth"],
        heads=s["heads"], mlp_dim=s["mlp_dim"], window_size=s["window_size"],
        global_attn_indexes=tuple(s["global_attn_indexes"]), neck_channels=s["neck_channels"],
        compressor_channels=(c["width"] // 2, c["width"]),
        layer_norm_eps=float(sam.vision_config.get("layer_norm_eps", 1e-6)),
    )
    clip_config = ClipConfig(
        width=c["width"], depth=c["depth"], heads=int(clip.vision_config.get("num_attention_heads", c["heads"])),
        mlp_dim=c["mlp_dim"], image_size=keymaps.TARGET_POSITION_GRID * c["patch_size"], patch_size=c["patch_size"],
        layer_norm_eps=float(clip.vision_config.get("layer_norm_eps", 1e-5)),
    )
    return DeepEncoderConfig(sam=sam_config, clip=clip_config, output_dim=output_dim)


def _kaiming_uniform(shape, generator, config) -> torch.Tensor:
    """torch's default Conv2d / Linear weight init: kaiming_uniform(a=sqrt(5))."""
    weight = torch.empty(shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


def _linear_bias(shape, generator, config) -> torch.Tensor:
    """torch's default Linear bias init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(config.projector_input_dim)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def _tag(shape, generator, config) -> torch.Tensor:
    """The official in-code init of image_newline / view_seperator: randn(dim) / sqrt(dim)."""
    return torch.randn(shape, generator=generator) / math.sqrt(shape[0])


# Tensors with no public source, in the order they are drawn from the seeded generator.
INITIALISERS: dict[str, tuple[str, Callable]] = {
    "sam_model.net_2.weight": ("Conv2d default init kaiming_uniform(a=sqrt(5))", _kaiming_uniform),
    "sam_model.net_3.weight": ("Conv2d default init kaiming_uniform(a=sqrt(5))", _kaiming_uniform),
    "projector.layers.weight": ("Linear default init kaiming_uniform(a=sqrt(5))", _kaiming_uniform),
    "projector.layers.bias": ("Linear default init uniform(+-1/sqrt(fan_in))", _linear_bias),
    "image_newline": ("randn/sqrt(dim)", _tag),
    "view_seperator": ("randn/sqrt(dim)", _tag),
}


@dataclass(frozen=True)
class Entry:
    """One tensor of the output: made from a source (`role` sam/clip, `mapped`) or initialised."""

    name: str  # DeepEncoder name (the output file's name is "model." + name)
    shape: tuple[int, ...]
    role: str  # "sam", "clip" or "init"
    mapped: keymaps.Mapped | None = None
    init: str | None = None

    @property
    def output_name(self) -> str:
        return OFFICIAL_PREFIX + self.name


def plan_output(config: DeepEncoderConfig, sam: Source, clip: Source) -> list[Entry]:
    """Every tensor DeepEncoder(config) has, in its state_dict order, with where it comes from."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in DeepEncoder(config).state_dict().items()}
    provided = {m.target: (src, m) for src in (sam, clip) for m in src.plan.mapped}
    entries = []
    for name, shape in expected.items():
        if name in provided:
            src, mapped = provided[name]
            if mapped.shape != shape:
                raise DsocrError(
                    f"--{src.role} {src.spec}: {', '.join(mapped.sources)} gives {mapped.shape}, "
                    f"DeepEncoder needs {shape} for {name}"
                )
            entries.append(Entry(name, shape, src.role, mapped=mapped))
        elif name in INITIALISERS:
            entries.append(Entry(name, shape, "init", init=INITIALISERS[name][0]))
        else:
            src = sam if name.startswith("sam_model.") else clip
            raise DsocrError(f"--{src.role} {src.spec}: found {found(src)} without the tensor for {name}")
    extra = sorted(set(provided) - set(expected))
    if extra:
        src, _ = provided[extra[0]]
        raise DsocrError(f"--{src.role} {src.spec}: has tensors DeepEncoder lacks ({', '.join(extra[:3])})")
    return entries


def initial_tensors(entries: list[Entry], config: DeepEncoderConfig, seed: int) -> dict[str, torch.Tensor]:
    """The initialised tensors, drawn from one generator seeded with `seed` in INITIALISERS order."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {e.name: e.shape for e in entries if e.role == "init"}
    return {name: INITIALISERS[name][1](shapes[name], generator, config) for name in INITIALISERS if name in shapes}


def write_output(
    path: Path, entries: list[Entry], sources: dict[str, Source], inits: dict[str, torch.Tensor],
    dtype: torch.dtype, config: DeepEncoderConfig,
) -> None:
    """Stream the output tensors into a safetensors file, one at a time, cast to `dtype`."""
    by_name = {e.output_name: e for e in entries}

    def produce(spec: TensorSpec) -> torch.Tensor:
        entry = by_name[spec.name]
        if entry.role == "init":
            tensor = inits[entry.name]
        else:
            tensor = keymaps.materialize(entry.mapped, sources[entry.role].checkpoint.__getitem__)
        return tensor.to(dtype).contiguous()

    specs = [TensorSpec(e.output_name, e.shape, dtype) for e in entries]
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    write_safetensors(path, specs, produce, metadata)


# -- verification -----------------------------------------------------------------------------


@dataclass
class Verification:
    part: str  # "SAM" or "CLIP"
    oracle: str
    probe: tuple[int, ...]
    max_relative_error: float
    tolerance: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.max_relative_error <= self.tolerance


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _segment_anything_encoder_class():
    """segment-anything's ImageEncoderViT, or None when the package cannot be imported."""
    before = set(sys.modules)
    try:
        from segment_anything.modeling import ImageEncoderViT
    except Exception:  # noqa: BLE001 - missing, or its package __init__'s torchvision import fails
        # A failed package import leaves its already-imported submodules behind, which would make
        # a second attempt "succeed"; drop them so the answer is the same every time.
        for name in set(sys.modules) - before:
            if name.startswith("segment_anything"):
                del sys.modules[name]
        return None
    return ImageEncoderViT


def _transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def sam_oracle_name(source: Source) -> str | None:
    """The library the SAM source is checked against, or None if none is importable."""
    if source.identity.kind == SAM_SEGMENT_ANYTHING and _segment_anything_encoder_class() is not None:
        return "segment-anything ImageEncoderViT"
    if _transformers_available():
        return "transformers SamVisionModel"
    return None


def clip_oracle_name(source: Source) -> str | None:
    return "transformers CLIPVisionModel" if _transformers_available() else None


def _no_init():
    """transformers' no_init_weights (skips random init of models we fill anyway), if present."""
    try:
        from transformers.initialization import no_init_weights
    except Exception:  # noqa: BLE001
        return contextlib.nullcontext()
    return no_init_weights()


def _source_reader(source: Source, dtype: torch.dtype) -> Callable[[str], torch.Tensor]:
    """Source tensors as the output stores them (rounded to `dtype`), computed in float32."""
    return lambda name: source.checkpoint[name].to(dtype).float()


def _segment_anything_prefix(source: Source) -> str:
    return "image_encoder." if any(n.startswith("image_encoder.") for n in source.checkpoint) else ""


def build_sam_oracle(source: Source, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """SAM's image encoder as its own library builds it, with the source weights."""
    d = source.identity.details
    read = _source_reader(source, dtype)
    encoder_class = _segment_anything_encoder_class() if source.identity.kind == SAM_SEGMENT_ANYTHING else None
    if encoder_class is not None:
        with torch.device("meta"):  # no buffers: every tensor comes from the source
            model = encoder_class(
                img_size=d["image_size"], patch_size=d["patch_size"], in_chans=3, embed_dim=d["width"], depth=d["depth"],
                num_heads=d["heads"], mlp_ratio=d["mlp_dim"] / d["width"], out_chans=d["neck_channels"], qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, use_abs_pos=True, use_rel_pos=True,
                rel_pos_zero_init=True, window_size=d["window_size"], global_attn_indexes=tuple(d["global_attn_indexes"]),
            )
        prefix = _segment_anything_prefix(source)
        model.load_state_dict({k: read(prefix + k) for k in model.state_dict()}, strict=True, assign=True)
        return model.eval(), "segment-anything ImageEncoderViT"
    from transformers import SamVisionConfig, SamVisionModel

    config = SamVisionConfig(
        hidden_size=d["width"], output_channels=d["neck_channels"], num_hidden_layers=d["depth"],
        num_attention_heads=d["heads"], image_size=d["image_size"], patch_size=d["patch_size"],
        mlp_dim=d["mlp_dim"], window_size=d["window_size"], global_attn_indexes=list(d["global_attn_indexes"]),
        layer_norm_eps=float(source.vision_config.get("layer_norm_eps", 1e-6)), qkv_bias=True,
        use_abs_pos=True, use_rel_pos=True,
    )
    with _no_init():
        model = SamVisionModel(config)
    if source.identity.kind == SAM_HF:
        state = {k: read(k) for k in model.state_dict()}
    else:  # segment-anything weights, placed by the HF names' DeepEncoder equivalents
        prefix = _segment_anything_prefix(source)
        state = {}
        for k in model.state_dict():
            target = keymaps.sam_target_from_hf(k)
            state[k] = read(prefix + target[len("sam_model."):])
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), "transformers SamVisionModel"


def _output_part(output: Path, build: Callable[[], nn.Module], prefix: str, replace_with: dict | None = None) -> nn.Module:
    """`build()` (made on the meta device) loaded strictly from the output file's tensors under
    `prefix`, in float32."""
    with safe_open(str(output), framework="pt") as f:  # the file is still a temporary *.partial
        state = {name[len(prefix):]: f.get_tensor(name).float() for name in f.keys() if name.startswith(prefix)}
    state.update(replace_with or {})
    with torch.device("meta"):
        module = build()
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


@torch.inference_mode()
def verify_sam(source: Source, output: Path, config: DeepEncoderConfig, dtype: torch.dtype, tolerance: float) -> Verification:
    """SAM trunk + neck of the output vs the source library on a random image at the table's size."""
    oracle, name = build_sam_oracle(source, dtype)
    ours = _output_part(output, partial(SamEncoder, config.sam), OFFICIAL_PREFIX + "sam_model.")
    size = config.sam.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = oracle(pixels)
    expected = getattr(expected, "last_hidden_state", expected)
    error = relative_error(ours.image_features(pixels), expected)
    return Verification("SAM", name, tuple(pixels.shape), error, tolerance)


_OPENAI_FOR_HF_CLIP = keymaps.compile_table([
    (r"embeddings\.patch_embedding\.weight", r"visual.conv1.weight"),
    (r"embeddings\.class_embedding", r"visual.class_embedding"),
    (r"embeddings\.position_embedding\.weight", r"visual.positional_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"visual.ln_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"visual.ln_post.\1"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"visual.transformer.resblocks.\1.ln_\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"visual.transformer.resblocks.\1.attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"visual.transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"visual.transformer.resblocks.\1.mlp.c_proj.\2"),
])


def _openai_tensor_for_hf_clip(name: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The tensor transformers' CLIPVisionModel calls `name`, taken from OpenAI's `visual.*`
    (q/k/v are row blocks 0/1/2 of in_proj)."""
    match = re.fullmatch(keymaps.HF_CLIP_QKV, name)  # transformers' q/k/v names
    if match:
        layer, which, param = match.groups()
        stacked = read(f"visual.transformer.resblocks.{layer}.attn.in_proj_{param}")
        return stacked.chunk(3, dim=0)["qkv".index(which)]
    source = keymaps.rename(name, _OPENAI_FOR_HF_CLIP)
    if source is None:
        raise DsocrError(f"internal error: no OpenAI CLIP tensor for {name}")
    return read(source)


def build_clip_oracle(source: Source, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """transformers' CLIPVisionModel at the source's own image size, with the source weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    d, vc = source.identity.details, source.vision_config
    config = CLIPVisionConfig(
        hidden_size=d["width"], intermediate_size=d["mlp_dim"], num_hidden_layers=d["depth"],
        num_attention_heads=int(vc.get("num_attention_heads", d["heads"])), image_size=d["image_size"],
        patch_size=d["patch_size"], num_channels=3, hidden_act="quick_gelu",
        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-5)),
    )
    with _no_init():
        model = CLIPVisionModel(config)
    read = _source_reader(source, dtype)
    prefix = keymaps.hf_clip_prefix(source.checkpoint)
    state = {}
    for key in model.state_dict():
        local = key[len("vision_model."):] if key.startswith("vision_model.") else key  # transformers 4 / 5
        if source.identity.kind == CLIP_OPENAI:
            state[key] = _openai_tensor_for_hf_clip(local, read)
        else:
            state[key] = read(prefix + local)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), "transformers CLIPVisionModel"


@torch.inference_mode()
def verify_clip(source: Source, output: Path, config: DeepEncoderConfig, dtype: torch.dtype, tolerance: float) -> Verification:
    """The output's CLIP on pixels (through its unused patch embedding) vs CLIPVisionModel's
    last_hidden_state, at the source's image size. A resampled position table cannot match the
    source at its own size, so the check then uses the source table and every other output weight."""
    oracle, name = build_clip_oracle(source, dtype)
    d = source.identity.details
    position = next(m for m in source.plan.mapped if m.target.endswith("position_embedding.weight"))
    replacement, note = {}, ""
    if position.transform == keymaps.RESAMPLE_POSITIONS:
        table = _source_reader(source, dtype)(position.sources[0])
        replacement = {"embeddings.position_embedding.weight": table}
        note = f"position table from the source ({d['grid']}x{d['grid']}); the output's is resampled to 16x16"
    tower = partial(ClipVisionTower, replace(config.clip, image_size=d["image_size"]))
    ours = _output_part(output, tower, OFFICIAL_PREFIX + "vision_model.", replacement)
    pixels = torch.randn(1, 3, d["image_size"], d["image_size"], generator=torch.Generator().manual_seed(0))
    expected = oracle(pixel_values=pixels).last_hidden_state
    error = relative_error(ours.forward_pixels(pixels), expected)
    return Verification("CLIP", name, tuple(pixels.shape), error, tolerance, note)


# -- the whole conversion ---------------------------------------------------------------------


@dataclass
class ConversionResult:
    output: Path
    config: DeepEncoderConfig
    entries: list[Entry]
    sources: dict[str, Source]
    dtype: torch.dtype
    seed: int
    verifications: list[Verification] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(math.prod(e.shape) for e in self.entries)


def convert(
    sam: str,
    clip: str,
    output: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    output_dim: int = 1280,
    seed: int = 0,
    verify: bool | None = None,
    report: str | Path | None = None,
    hub: str = "hf",
    cache_dir: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> ConversionResult:
    """Convert SAM + CLIP sources into one DeepEncoder safetensors file at `output`.

    `verify`: True = required (error if no source library), False = skipped, None = when the
    libraries are importable. Nothing is written unless everything, verification included, succeeds.
    """
    output = Path(output)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    _check_paths(output, report)
    sources = {"sam": open_source(sam, "sam", hub, cache_dir, log), "clip": open_source(clip, "clip", hub, cache_dir, log)}
    for role, src in sources.items():
        log(f"{role}: {src.path}: {found(src)}, {describe_formats(src.checkpoint)}")
    config = build_config(sources["sam"], sources["clip"], output_dim)
    entries = plan_output(config, sources["sam"], sources["clip"])
    inits = initial_tensors(entries, config, seed)
    result = ConversionResult(output, config, entries, sources, dtype, seed)
    checks = _verification_plan(sources, verify)
    with atomic_path(output) as tmp:
        write_output(tmp, entries, sources, inits, dtype, config)
        for role, check in checks.items():
            if isinstance(check, str):
                result.skipped.append(check)
                log(f"verify {role}: skipped ({check})")
                continue
            outcome = check(sources[role], tmp, config, dtype, tolerance)
            result.verifications.append(outcome)
            log(
                f"verify {outcome.part}: max relative error {outcome.max_relative_error:.2e} vs {outcome.oracle} "
                f"on a {'x'.join(map(str, outcome.probe))} probe (tolerance {tolerance:.0e})"
            )
            if not outcome.passed:
                raise DsocrError(
                    f"verification failed: {outcome.part} differs from {outcome.oracle} by "
                    f"{outcome.max_relative_error:.2e} (tolerance {tolerance:.0e}); {output} not written"
                )
    log(f"wrote {output}: {len(entries)} tensors, {result.parameters:,} parameters, {str(dtype).replace('torch.', '')}")
    initialised = [e.name for e in entries if e.role == "init"]
    log(f"initialised from seed {seed}: {', '.join(initialised)}")
    if report is not None:
        write_report(report, result)
        log(f"report: {report}")
    return result


def _check_paths(output: Path, report) -> None:
    if output.suffix != ".safetensors":
        raise DsocrError(f"{output}: the output must be a .safetensors file")
    if output.is_dir():
        raise DsocrError(f"{output}: is a directory")
    if report is not None and Path(report).suffix not in (".md", ".json"):
        raise DsocrError(f"{report}: the report must end in .md or .json")


def _verification_plan(sources: dict[str, Source], verify: bool | None) -> dict[str, Callable | str]:
    """Per role, the check to run, or why it is skipped. Raises if verify=True cannot be honoured."""
    if verify is False:
        return {role: "--no-verify" for role in sources}
    plan: dict[str, Callable | str] = {}
    for role, oracle, check in (("sam", sam_oracle_name, verify_sam), ("clip", clip_oracle_name, verify_clip)):
        if oracle(sources[role]) is not None:
            plan[role] = check
        elif verify:
            raise DsocrError(f"--verify: no library to check the {role.upper()} source against (install transformers)")
        else:
            plan[role] = "neither segment-anything nor transformers is importable"
    return plan


# -- report -----------------------------------------------------------------------------------


def report_dict(result: ConversionResult) -> dict:
    """Everything the report says, as plain data."""
    sources = {}
    for role, src in result.sources.items():
        sources[role] = {
            "spec": src.spec, "path": str(src.path), "format": describe_formats(src.checkpoint),
            "model": found(src), "kind": src.identity.kind, "dropped": list(src.plan.dropped),
        }
    tensors = []
    for e in result.entries:
        row = {"name": e.output_name, "shape": list(e.shape), "dtype": str(result.dtype).replace("torch.", "")}
        if e.role == "init":
            row.update(source=None, sources=[], transform=f"initialised (seed {result.seed})", init=e.init)
        else:
            transform = _transform_text(e.mapped, result.sources[e.role])
            row.update(source=e.role, sources=list(e.mapped.sources), transform=transform)
        tensors.append(row)
    return {
        "output": str(result.output),
        "dtype": str(result.dtype).replace("torch.", ""),
        "seed": result.seed,
        "parameters": result.parameters,
        "config": result.config.to_dict(),
        "sources": sources,
        "verification": [
            {"part": v.part, "oracle": v.oracle, "probe": list(v.probe), "max_relative_error": v.max_relative_error,
             "tolerance": v.tolerance, "passed": v.passed, "note": v.note}
            for v in result.verifications
        ],
        "verification_skipped": result.skipped,
        "tensors": tensors,
    }


def _transform_text(mapped: keymaps.Mapped, source: Source) -> str:
    if mapped.transform == keymaps.RESAMPLE_POSITIONS:
        src, dst = source.identity.details["grid"], keymaps.TARGET_POSITION_GRID
        return f"resample positions {src}x{src}->{dst}x{dst} (bicubic, antialias, fp32; class row kept)"
    return mapped.transform


def _group(names: list[str]) -> dict[str, int]:
    """Dropped names counted by their leading component(s), for the Markdown report."""
    groups: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        depth = 2 if parts[0] in ("vision_model", "image_encoder", "visual", "vision_encoder") and len(parts) > 2 else 1
        key = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[key] = groups.get(key, 0) + 1
    return groups


def report_markdown(data: dict) -> str:
    lines = [
        "# dsocr convert report", "",
        f"- output: `{data['output']}` ({len(data['tensors'])} tensors, {data['parameters']:,} parameters, {data['dtype']})",
        f"- seed: {data['seed']}",
    ]
    for role, src in data["sources"].items():
        lines.append(f"- {role}: `{src['spec']}` -> `{src['path']}`: {src['model']}, {src['format']}")
    for v in data["verification"]:
        lines.append(
            f"- verification {v['part']}: max relative error {v['max_relative_error']:.2e} vs {v['oracle']} "
            f"(probe {'x'.join(map(str, v['probe']))}, tolerance {v['tolerance']:.0e})" + (f"; {v['note']}" if v["note"] else "")
        )
    for reason in data["verification_skipped"]:
        lines.append(f"- verification skipped: {reason}")
    lines += ["", "## Config", "", "```json", json.dumps(data["config"], indent=2), "```", "", "## Tensors", "",
              "| tensor | shape | source | from | transform |", "|---|---|---|---|---|"]
    for t in data["tensors"]:
        origin = ", ".join(f"`{s}`" for s in t["sources"]) or (t.get("init") or "")
        transform = t["transform"]
        lines.append(f"| `{t['name']}` | {'x'.join(map(str, t['shape'])) or 'scalar'} | {t['source'] or 'seed'} | {origin} | {transform} |")
    lines += ["", "## Dropped source tensors", ""]
    for role, src in data["sources"].items():
        groups = _group(src["dropped"])
        summary = ", ".join(f"`{k}` ({n})" for k, n in groups.items()) or "none"
        lines.append(f"- {role}: {len(src['dropped'])}: {summary}")
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, result: ConversionResult) -> None:
    data = report_dict(result)
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else report_markdown(data)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
