"""Linear layers packed for oneDNN (CPU decoding): the same products as a float64 matmul and as
ATen's `F.linear`, an unchanged state dict, repacking on load, unpacking, a clear error when
trained; the packed whole model against transformers' unlimited_ocr (logits and greedy tokens)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dsocr.inference.generate import GenerationSettings, generate
from dsocr.inference.pipeline import DeepSeekOCR
from dsocr.model.config import DecoderConfig
from dsocr.model.decoder import Decoder
from dsocr.model.deepseek_ocr import DeepSeekOCRForCausalLM
from dsocr.model.packed import PackedLinear, pack_linears, packing_supported, unpack_linears
from oracles import official_model_dir, relative_error, unlimited_ocr_model

pytestmark = pytest.mark.skipif(not packing_supported("cpu", torch.float32), reason="no oneDNN packed linear here")
BF16 = packing_supported("cpu", torch.bfloat16)
TINY = DecoderConfig(
    vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1,
    first_k_dense_replace=1,
)


def _linear(out_features: int, in_features: int, dtype=torch.float32, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias).to(dtype)


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_products_match_float64(rows, bias):
    linear = _linear(96, 160, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(2, rows, 160)
    expected = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
    with torch.inference_mode():
        actual = packed(x)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-6


@pytest.mark.skipif(not BF16, reason="this CPU has no bf16 oneDNN kernels")
@pytest.mark.parametrize("rows", [1, 8])
def test_bfloat16_products_equal_aten_linear(rows):
    linear = _linear(128, 256, dtype=torch.bfloat16)
    x = torch.randn(rows, 256).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(PackedLinear(linear)(x), F.linear(x, linear.weight))


def _tiny_decoder(seed: int) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def test_state_dict_is_unchanged_by_packing_and_loading_repacks():
    model, other = _tiny_decoder(0), _tiny_decoder(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    with torch.inference_mode():
        expected_other = other(ids)
    assert pack_linears(model) == 3 * 4 + 3 + 2 * (8 + 1) * 3  # attention, dense MLP, experts + shared
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    model.load_state_dict(other.state_dict(), strict=True)  # repacks the new weights
    with torch.inference_mode():
        assert relative_error(model(ids), expected_other) <= 1e-6
    wrong = dict(other.state_dict())
    wrong["layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="q_proj"):
        model.load_state_dict(wrong)


def test_unpacking_restores_plain_linear_layers():
    model = _tiny_decoder(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pack_linears(model)
    assert unpack_linears(model) > 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(type(m.self_attn.q_proj) is nn.Linear for m in model.layers)


def test_training_a_packed_layer_is_a_clear_error():
    packed = PackedLinear(_linear(8, 16))
    x = torch.randn(2, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="unpack"):
        packed(x)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    oracle = unlimited_ocr_model(seed=11)
    return oracle, official_model_dir(oracle, tmp_path_factory.mktemp("official"))


def test_packed_model_matches_unlimited_ocr(official):
    oracle, directory = official
    model = DeepSeekOCRForCausalLM.from_pretrained(directory)
    assert not model.packed
    assert model.pack_for_inference() > 0 and model.packed
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1
    prompt = [0, *torch.randint(3, 128000, (3,), generator=gen).tolist(), *[128815] * 73,
              *torch.randint(3, 128000, (6,), generator=gen).tolist()]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        expected_logits = oracle(input_ids=ids, pixel_values=pixels).logits
        image_tokens = model.model(pixels)
        assert relative_error(model(ids, image_tokens), expected_logits) <= 1e-5
        expected = oracle.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=50, do_sample=False,
                                   eos_token_id=1, pad_token_id=2)[0, ids.shape[1]:].tolist()
        result = generate(model, [prompt], [image_tokens[0]], GenerationSettings(max_new_tokens=50, ngram_size=None))[0]
    assert 1 not in expected  # the whole 50 tokens are compared
    assert result.ids == expected


def test_pipeline_packs_on_cpu_unless_asked_not_to(official):
    _, directory = official
    assert DeepSeekOCR.from_pretrained(directory).model.packed
    assert not DeepSeekOCR.from_pretrained(directory, pack=False).model.packed
