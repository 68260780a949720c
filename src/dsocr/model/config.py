"""Sizes of DeepEncoder's parts. The defaults are the official DeepSeek-OCR values (spec §1-3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SamConfig:
    """SAM ViT-B image encoder with window attention, its neck and the 16x compressor."""

    image_size: int = 1024  # size the absolute position table was made for (64x64 patches)
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256
    compressor_channels: tuple[int, int] = (512, 1024)  # net_2, net_3
    layer_norm_eps: float = 1e-6


@dataclass
class ClipConfig:
    """CLIP ViT-L/14 vision transformer that takes SAM's compressed features as its patch tokens."""

    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    image_size: int = 224  # the position table covers (224/14)^2 patches + the class token
    patch_size: int = 14
    layer_norm_eps: float = 1e-5


@dataclass
class DeepEncoderConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    output_dim: int = 1280  # width of the language model the tokens are fed to

    def __post_init__(self) -> None:
        if isinstance(self.sam, dict):
            self.sam = SamConfig(**self.sam)
        if isinstance(self.clip, dict):
            self.clip = ClipConfig(**self.clip)
        self.sam.global_attn_indexes = tuple(self.sam.global_attn_indexes)
        self.sam.compressor_channels = tuple(self.sam.compressor_channels)
        if self.sam.compressor_channels[-1] != self.clip.width:
            raise ValueError(
                f"SAM's compressor outputs {self.sam.compressor_channels[-1]} channels "
                f"but CLIP is {self.clip.width} wide; they must match"
            )

    @property
    def projector_input_dim(self) -> int:
        """CLIP tokens and SAM tokens are concatenated before the projector."""
        return self.clip.width + self.sam.compressor_channels[-1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecoderConfig:
    """DeepSeek-V2-family decoder with multi-head attention (the official `language_config`).

    Fields keep the names of the official config.json so it can be read as is; values not in the
    official file take DeepseekV2Config's defaults (spec §5).
    """

    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848  # dense SwiGLU of the first layers
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    topk_method: str = "greedy"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    bos_token_id: int = 0
    eos_token_id: int = 1
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        if self.topk_method != "greedy":
            raise ValueError(f"topk_method {self.topk_method!r} is not supported (DeepSeek-OCR uses 'greedy')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.n_routed_experts > 0
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    @classmethod
    def from_dict(cls, values: dict) -> "DecoderConfig":
        """Known fields of a config dict (unknown ones such as `use_mla` are checked, then ignored)."""
        if values.get("use_mla"):
            raise ValueError("use_mla=true (multi-head latent attention) is not DeepSeek-OCR's decoder")
        if values.get("rope_scaling"):
            raise ValueError("rope_scaling is not supported")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def to_dict(self) -> dict:
        return asdict(self)
