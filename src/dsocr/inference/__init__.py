"""Text generation for DeepSeek-OCR: logits processors and sampling (spec §6 "Generation")."""
