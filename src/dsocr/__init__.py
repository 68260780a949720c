"""dsocr: DeepSeek-OCR (Contexts Optical Compression) rebuilt from public parts."""

from .errors import DsocrError

__version__ = "0.1.0"

__all__ = ["DeepEncoder", "DsocrError", "__version__"]


def __getattr__(name: str):
    # Keep `import dsocr` light: torch is imported only when the model is asked for.
    if name == "DeepEncoder":
        from .model import DeepEncoder

        return DeepEncoder
    raise AttributeError(f"module 'dsocr' has no attribute {name!r}")
