"""The whole DeepSeek-OCR: DeepEncoder + DeepSeek-3B-MoE, with the official checkpoint's names
(`model.sam_model.*`, ..., `model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import DsocrError
from .config import DecoderConfig, DeepEncoderConfig
from .decoder import DecoderMixin, KVCache
from .deep_encoder import DeepEncoder

IMAGE_TOKEN_ID = 128815


@dataclass
class DeepSeekOCRConfig:
    vision: DeepEncoderConfig = field(default_factory=DeepEncoderConfig)
    language: DecoderConfig = field(default_factory=DecoderConfig)
    image_token_id: int = IMAGE_TOKEN_ID

    def __post_init__(self) -> None:
        if self.vision.output_dim != self.language.hidden_size:
            raise ValueError(
                f"the projector outputs {self.vision.output_dim} wide tokens but the language model is "
                f"{self.language.hidden_size} wide"
            )

    @classmethod
    def from_official(cls, values: dict, vision: DeepEncoderConfig | None = None) -> "DeepSeekOCRConfig":
        """From an official `config.json` dict: the language model from `language_config` (or the
        top level); DeepEncoder's sizes from `vision` (read off the weights) or the defaults."""
        language = DecoderConfig.from_dict(values.get("language_config") or values)
        vision = vision or DeepEncoderConfig(output_dim=language.hidden_size)
        return cls(vision=vision, language=language)

    def to_official(self) -> dict:
        """An official-style config.json (the official fields, plus dsocr's own under `dsocr`)."""
        language = {k: v for k, v in self.language.to_dict().items()}
        language.update(architectures=["DeepseekV2ForCausalLM"], use_mla=False, lm_head=True, torch_dtype="bfloat16")
        return {
            "architectures": ["DeepseekOCRForCausalLM"],
            "model_type": "deepseek_vl_v2",
            "language_config": language,
            "projector_config": {
                "input_dim": self.vision.projector_input_dim, "model_type": "mlp_projector",
                "n_embed": self.vision.output_dim, "projector_type": "linear",
            },
            "tile_tag": "2D",
            "global_view_pos": "head",
            "candidate_resolutions": [[1024, 1024]],
            **{k: v for k, v in language.items() if k not in ("architectures",)},
            "dsocr": {"vision": self.vision.to_dict()},
        }


class DeepSeekOCRModel(DecoderMixin, DeepEncoder):
    """The official `DeepseekOCRModel`: vision modules and language-model modules side by side."""

    def __init__(self, config: DeepSeekOCRConfig):
        DeepEncoder.__init__(self, config.vision)
        self._build_decoder(config.language)


class DeepSeekOCRForCausalLM(nn.Module):
    def __init__(self, config: DeepSeekOCRConfig | None = None):
        super().__init__()
        config = config or DeepSeekOCRConfig()
        self.config = config
        self.model = DeepSeekOCRModel(config)
        self.lm_head = nn.Linear(config.language.hidden_size, config.language.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def pack_for_inference(self) -> int:
        """Pack the language model's linear layers (decoder and LM head) for oneDNN where the
        device and dtype allow (`model.packed`): CPU decoding about twice as fast, same results,
        same state dict; `unpack()` before training. Returns how many layers were packed."""
        from .packed import pack_linear, pack_linears

        count = pack_linears(self.model.layers)
        head = pack_linear(self.lm_head)
        if head is not None:
            self.lm_head = head
            count += 1
        return count

    @property
    def packed(self) -> bool:
        from .packed import PackedLinear

        return isinstance(self.lm_head, PackedLinear)

    def unpack(self) -> int:
        from .packed import unpack_linears

        return unpack_linears(self)

    def embed(self, input_ids: torch.Tensor, image_tokens: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Token embeddings with every `<image>` placeholder replaced, in order, by the image tokens
        of that sample (all its images' sequences concatenated). Without `image_tokens` (decoding
        steps) the ids are embedded as they are."""
        if image_tokens is None:
            return self.model.embed_tokens(input_ids)
        is_image = input_ids == self.config.image_token_id
        embeds = self.model.embed_tokens(input_ids.masked_fill(is_image, 0))
        for b in range(input_ids.shape[0]):
            tokens = image_tokens[b]
            expected = int(is_image[b].sum())
            given = 0 if tokens is None else tokens.shape[0]
            if expected != given:
                raise DsocrError(
                    f"prompt {b} has {expected} image placeholders but its images give {given} tokens "
                    "(the mode or tiling used for the prompt differs from the images')"
                )
            if given:
                embeds[b, is_image[b]] = tokens.to(embeds.dtype)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        image_tokens: Sequence[torch.Tensor | None] | None = None,
        positions: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] in float32 (only the last position's with `last_only`)."""
        hidden = self.model.decode(self.embed(input_ids, image_tokens), positions=positions, padding=padding, cache=cache)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden).float()

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache(self.config.language, batch, capacity, self.dtype, self.device)

    # -- weights -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        """Load an official DeepSeek-OCR checkpoint directory (config.json + safetensors or sharded
        index): memory-mapped, cast once to `dtype`, strict (every key, every shape)."""
        from ..weights.checkpoint import Checkpoint
        from ..weights.official import check_state_dict, config_from_shapes, vision_keys

        path = Path(path)
        directory = path if path.is_dir() else path.parent
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise DsocrError(f"{directory}: no config.json (not a DeepSeek-OCR model directory)")
        try:
            values = json.loads(config_file.read_text())
        except ValueError as exc:
            raise DsocrError(f"{config_file}: not valid JSON ({exc})") from None
        checkpoint = Checkpoint(path)
        vision_names = vision_keys(checkpoint.keys())
        if not vision_names:
            raise DsocrError(f"{path}: no DeepSeek-OCR vision weights (model.sam_model.*, ...) in the checkpoint")
        vision = config_from_shapes({k: checkpoint.shape(s) for k, s in vision_names.items()})
        try:
            config = DeepSeekOCRConfig.from_official(values, vision)
        except (TypeError, ValueError) as exc:
            raise DsocrError(f"{config_file}: {exc}") from None
        with torch.device("meta"):
            model = cls(config)
        shapes = {name: checkpoint.shape(name) for name in checkpoint.keys()}
        check_state_dict(model, shapes, str(path))
        dtype = dtype or checkpoint.dtype("lm_head.weight") or torch.float32
        state = {name: checkpoint[name].to(device=device, dtype=dtype) for name in checkpoint.keys()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write config.json + model.safetensors in the official layout (atomically per file)."""
        from safetensors.torch import save_file

        from ..files import atomic_path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(dtype) if dtype else v).detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        with atomic_path(directory / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config.to_official(), indent=2))
