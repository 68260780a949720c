"""SAM + compressor against transformers' `deepseek_ocr2` SAM encoder with compressor channels
[512, 1024] (tiny widths here, same structure): its `proj.conv1/conv2` are DeepEncoder's
`net_2/net_3`, its other names are transformers' SAM names (mapped by dsocr's HF SAM key map)."""

from __future__ import annotations

import pytest
import torch

from dsocr.model import SamConfig, SamEncoder
from dsocr.weights.keymaps import plan_sam_hf
from oracles import TINY_SAM, randomize_, relative_error


def _oracle(compressor):
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2SamVisionEncoder

    config = DeepseekOcr2SamVisionConfig(
        hidden_size=TINY_SAM["width"], num_hidden_layers=TINY_SAM["depth"], num_attention_heads=TINY_SAM["heads"],
        mlp_dim=TINY_SAM["mlp_dim"], output_channels=TINY_SAM["neck"], global_attn_indexes=list(TINY_SAM["global_attn_indexes"]),
        downsample_channels=list(compressor),
    )
    return randomize_(DeepseekOcr2SamVisionEncoder(config).eval(), seed=9)


@pytest.mark.parametrize("size", [512, 1024, 1280])
def test_sam_with_compressor_matches_deepseek_ocr2(size):
    compressor = TINY_SAM["compressor"]
    oracle = _oracle(compressor)
    source = {f"vision_encoder.{k}": v for k, v in oracle.state_dict().items()}
    plan = plan_sam_hf({k: tuple(v.shape) for k, v in source.items()})
    state = {m.target.removeprefix("sam_model."): source[m.sources[0]] for m in plan.mapped}
    assert sorted(plan.unexpected) == ["vision_encoder.proj.conv1.weight", "vision_encoder.proj.conv2.weight"]
    state["net_2.weight"], state["net_3.weight"] = source["vision_encoder.proj.conv1.weight"], source["vision_encoder.proj.conv2.weight"]
    ours = SamEncoder(SamConfig(
        width=TINY_SAM["width"], depth=TINY_SAM["depth"], heads=TINY_SAM["heads"], mlp_dim=TINY_SAM["mlp_dim"],
        global_attn_indexes=TINY_SAM["global_attn_indexes"], neck_channels=TINY_SAM["neck"], compressor_channels=compressor,
    )).eval()
    ours.load_state_dict(state, strict=True)
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    with torch.inference_mode():
        expected = oracle(pixels).last_hidden_state
        actual = ours(pixels)
    assert actual.shape == (1, compressor[1], size // 64, size // 64)
    assert relative_error(actual, expected) <= 1e-5
