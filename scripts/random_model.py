"""Write a small DeepSeek-OCR with random weights in the official directory layout (config.json +
model.safetensors; the built-in tokenizer serves it). For trying the pipeline offline: its output
is meaningless text.

    python scripts/random_model.py OUTDIR [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from dsocr.model.config import ClipConfig, DecoderConfig, DeepEncoderConfig, SamConfig
from dsocr.model.deepseek_ocr import DeepSeekOCRConfig, DeepSeekOCRForCausalLM


def small_config() -> DeepSeekOCRConfig:
    vision = DeepEncoderConfig(
        sam=SamConfig(width=128, depth=4, heads=2, mlp_dim=256, global_attn_indexes=(1, 3), neck_channels=32,
                      compressor_channels=(64, 128)),
        clip=ClipConfig(width=128, depth=2, heads=2, mlp_dim=256),
        output_dim=128,
    )
    language = DecoderConfig(hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, n_shared_experts=1,
                             num_experts_per_tok=2)
    return DeepSeekOCRConfig(vision=vision, language=language)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    DeepSeekOCRForCausalLM(small_config()).save_pretrained(args.out)
    print(f"wrote a random-weight DeepSeek-OCR (small) to {args.out}")


if __name__ == "__main__":
    main()
