"""DeepSeek-OCR's networks, as small modules: SAM, CLIP, DeepEncoder."""

from .clip import ClipVisionTower
from .config import ClipConfig, DeepEncoderConfig, SamConfig
from .deep_encoder import DeepEncoder
from .sam import SamEncoder

__all__ = ["ClipConfig", "ClipVisionTower", "DeepEncoder", "DeepEncoderConfig", "SamConfig", "SamEncoder"]
