"""Language-model speed: prefill of a base-mode prompt (273 image tokens + text) and greedy decode
tokens/s at batch 1 and 8, for dsocr's decoder against transformers' `deepseek_ocr2` text model
(the same DeepSeek-V2 MHA + MoE family) on the same full-size random weights, in the same run.

    python benchmarks/decode.py [--dtypes bfloat16 float32] [--batches 1 8] [--new-tokens 16]

dsocr's parameters are views of the reference's (one copy in memory). Also prints the bytes of
weights a decode step must read (active parameters: attention, the dense layer, 6 routed + the
shared expert per MoE layer, the LM head) and the bandwidth that speed implies.
"""

from __future__ import annotations

import argparse
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import split_fused_experts  # noqa: E402

from dsocr.model.config import DecoderConfig  # noqa: E402
from dsocr.model.decoder import Decoder, KVCache  # noqa: E402

PROMPT = 273 + 15  # base mode image tokens + a short prompt


def reference_model(cfg: DecoderConfig, dtype):
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2TextConfig
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextModel

    config = DeepseekOcr2TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, n_routed_experts=cfg.n_routed_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
        n_shared_experts=cfg.n_shared_experts,
        mlp_layer_types=["sparse" if cfg.is_moe_layer(i) else "dense" for i in range(cfg.num_hidden_layers)],
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = DeepseekOcr2TextModel(config)
    model = model.to_empty(device="cpu").to(dtype)
    for module in model.modules():  # to_empty leaves buffers uninitialised: recompute RoPE's, in float32
        if hasattr(module, "compute_default_rope_parameters"):
            inv_freq, _ = module.compute_default_rope_parameters(config)
            module.inv_freq, module.original_inv_freq = inv_freq, inv_freq.clone()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float32) - 0.5) * 0.06)
    return model.eval()


def dsocr_view_of(reference, cfg: DecoderConfig) -> Decoder:
    """dsocr's Decoder whose parameters are views of the reference's tensors."""
    with torch.device("meta"):
        ours = Decoder(cfg)
    state = split_fused_experts(reference.state_dict(), cfg.n_routed_experts)
    ours.load_state_dict(state, strict=True, assign=True)
    return ours.eval()


def run_dsocr(model: Decoder, lm_head, ids, new_tokens):
    b = ids.shape[0]
    cache = KVCache(model.decoder_config, b, ids.shape[1] + new_tokens, lm_head.dtype, "cpu")
    start = time.perf_counter()
    hidden = model(ids, cache=cache)[:, -1:]
    token = (hidden @ lm_head.T).float().argmax(-1)
    prefill = time.perf_counter() - start
    out = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        hidden = model(token, cache=cache)
        token = (hidden @ lm_head.T).float().argmax(-1)
        out.append(token)
    return prefill, time.perf_counter() - start, torch.cat(out, 1)


def run_reference(model, lm_head, ids, new_tokens):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    hidden = model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1:]
    token = (hidden @ lm_head.T).float().argmax(-1)
    prefill = time.perf_counter() - start
    out = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        hidden = model(input_ids=token, cache=cache, use_cache=True).last_hidden_state
        token = (hidden @ lm_head.T).float().argmax(-1)
        out.append(token)
    return prefill, time.perf_counter() - start, torch.cat(out, 1)


def active_bytes(cfg: DecoderConfig, element: int) -> int:
    d = cfg.hidden_size
    attention = 4 * d * d * cfg.num_hidden_layers
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    dense = 3 * d * cfg.intermediate_size * (cfg.num_hidden_layers - moe_layers)
    moe = moe_layers * (3 * d * cfg.moe_intermediate_size * (cfg.num_experts_per_tok + cfg.n_shared_experts) + cfg.n_routed_experts * d)
    return (attention + dense + moe + cfg.vocab_size * d) * element


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (12 = the real model)")
    args = parser.parse_args()
    cfg = DecoderConfig(num_hidden_layers=args.layers)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers, prompt {PROMPT} tokens, "
          f"{args.new_tokens} new tokens (greedy)")
    print(f"{'dtype':9} {'batch':>5} {'prefill dsocr':>14} {'prefill ref':>12} {'decode tok/s dsocr':>19} "
          f"{'ref':>7} {'speed-up':>9} {'same tokens':>12} {'GB/s (dsocr, b=1)':>18}")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        reference = reference_model(cfg, dtype)
        ours = dsocr_view_of(reference, cfg)
        lm_head = (torch.rand(cfg.vocab_size, cfg.hidden_size, generator=torch.Generator().manual_seed(1)) - 0.5).to(dtype) * 0.06
        element = torch.tensor([], dtype=dtype).element_size()
        for batch in args.batches:
            ids = torch.randint(3, 128000, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                run_dsocr(ours, lm_head, ids[:, :8], 2)  # warm-up
                run_reference(reference, lm_head, ids[:, :8], 2)
                p_ours, d_ours, t_ours = run_dsocr(ours, lm_head, ids, args.new_tokens)
                p_ref, d_ref, t_ref = run_reference(reference, lm_head, ids, args.new_tokens)
            steps = args.new_tokens - 1
            tps_ours, tps_ref = batch * steps / d_ours, batch * steps / d_ref
            bandwidth = active_bytes(cfg, element) * steps / d_ours / 1e9 if batch == 1 else float("nan")
            print(f"{dtype_name:9} {batch:5d} {p_ours:13.2f}s {p_ref:11.2f}s {tps_ours:19.2f} {tps_ref:7.2f} "
                  f"{tps_ours / tps_ref:8.2f}x {str(torch.equal(t_ours, t_ref)):>12} {bandwidth:18.1f}", flush=True)
        del reference, ours
    print(f"active weights per token: {active_bytes(cfg, 2) / 1e9:.2f} GB in bf16, {active_bytes(cfg, 4) / 1e9:.2f} GB in fp32")


if __name__ == "__main__":
    main()
