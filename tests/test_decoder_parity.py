"""The decoder alone against transformers' `deepseek_ocr2` text model (the same DeepSeek-V2 MHA +
MoE family) with identical random weights: logits in float32, rel. error <= 1e-5."""

from __future__ import annotations

import pytest
import torch

from dsocr.model.config import DecoderConfig
from dsocr.model.decoder import Decoder
from oracles import randomize_, relative_error, split_fused_experts

TOL = 1e-5


def _oracle(cfg: DecoderConfig, seed: int):
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2TextConfig
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextModel

    layer_types = ["dense" if not cfg.is_moe_layer(i) else "sparse" for i in range(cfg.num_hidden_layers)]
    config = DeepseekOcr2TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, n_routed_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
        n_shared_experts=cfg.n_shared_experts, mlp_layer_types=layer_types, rms_norm_eps=cfg.rms_norm_eps,
    )
    torch.manual_seed(seed)
    return randomize_(DeepseekOcr2TextModel(config).eval(), seed, std=0.05)


def _check(cfg: DecoderConfig, length: int, seed: int):
    oracle = _oracle(cfg, seed)
    ours = Decoder(cfg).eval()
    ours.load_state_dict(split_fused_experts(oracle.state_dict(), cfg.n_routed_experts), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    lm_head = torch.randn(cfg.vocab_size, cfg.hidden_size, generator=torch.Generator().manual_seed(seed + 1)) * 0.05
    with torch.inference_mode():
        expected = oracle(input_ids=ids).last_hidden_state @ lm_head.T
        actual = ours(ids) @ lm_head.T
    assert relative_error(actual, expected) <= TOL


def test_tiny_decoder_matches_deepseek_ocr2_text_model():
    cfg = DecoderConfig(vocab_size=1000, hidden_size=96, intermediate_size=160, moe_intermediate_size=32,
                        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8,
                        n_shared_experts=2, num_experts_per_tok=3)
    _check(cfg, length=40, seed=0)


@pytest.mark.slow
def test_full_width_decoder_matches_deepseek_ocr2_text_model():
    """Official widths (1280, 10 heads of 128, dense 6848, 64 experts of 896, top-6, 2 shared) with
    two layers (one dense, one MoE) and a small vocabulary."""
    cfg = DecoderConfig(vocab_size=2000, num_hidden_layers=2)
    _check(cfg, length=300, seed=1)
