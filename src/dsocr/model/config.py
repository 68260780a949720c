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
