"""dsocr: DeepSeek-OCR (Contexts Optical Compression) rebuilt from public parts."""

from .errors import DsocrError

__version__ = "0.1.0"

__all__ = ["DeepEncoder", "DeepSeekOCR", "DsocrError", "__version__", "ocr"]


def __getattr__(name: str):
    # Keep `import dsocr` light: torch is imported only when the model is asked for.
    if name == "DeepEncoder":
        from .model import DeepEncoder

        return DeepEncoder
    if name == "DeepSeekOCR":
        from .inference.pipeline import DeepSeekOCR

        return DeepSeekOCR
    if name == "ocr":
        from .inference.ocr import ocr

        return ocr
    raise AttributeError(f"module 'dsocr' has no attribute {name!r}")
