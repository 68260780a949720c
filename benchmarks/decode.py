"""Language-model speed: prefill of a base-mode prompt (273 image tokens + text) and greedy decode
tokens/s at batch 1 and 8, for dsocr's decoder against transformers' `deepseek_ocr2` text model
(the same DeepSeek-V2 MHA + MoE family) on the same full-size random weights, in the same run.

    python benchmarks/decode.py [--dtypes bfloat16 float32] [--batches 1 8] [--new-tokens 32] [--rounds 3]

Three rows per setting: the reference, dsocr with plain `nn.Linear` layers (its parameters are
views of the reference's tensors: one copy in memory), and dsocr with its linear layers packed
for oneDNN (`DeepSeekOCRForCausalLM.pack_for_inference`, what `DeepSeekOCR.from_pretrained` does
on CPU). The three run in turn, round after round, and the best time of each is kept: this
shared machine's memory bandwidth varies by tens of percent from minute to minute. Where memory
cannot hold the packed copy beside the reference (fp32 on 24 GiB), the reference and plain dsocr
are measured first, then the reference's tensors are released layer by layer as dsocr's are
packed, and packed dsocr is measured alone. Also prints the bytes of weights a decode step
reads (attention, the dense layer, 6 routed + the shared expert per MoE layer, the LM head), the
bandwidth each speed implies, and this machine's memory read bandwidth (a `sum` over 1 GiB).
"tokens = ref" is the share of generated positions equal to the reference's: 100% in fp32; in
bf16 dsocr's decode-step attention runs in fp32 (exact) where the reference's runs in bf16, so
random-weight logits with near ties can part ways after a few tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import split_fused_experts  # noqa: E402

from dsocr.model.config import DecoderConfig  # noqa: E402
from dsocr.model.decoder import Decoder, KVCache  # noqa: E402
from dsocr.model.packed import pack_linear, pack_linears  # noqa: E402

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


def run_dsocr(model: Decoder, lm_head: nn.Module, ids, new_tokens):
    b = ids.shape[0]
    cache = KVCache(model.decoder_config, b, ids.shape[1] + new_tokens, model.embed_tokens.weight.dtype, "cpu")
    start = time.perf_counter()
    hidden = model(ids, cache=cache)[:, -1:]
    token = lm_head(hidden).float().argmax(-1)
    prefill = time.perf_counter() - start
    out = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        hidden = model(token, cache=cache)
        token = lm_head(hidden).float().argmax(-1)
        out.append(token)
    return prefill, time.perf_counter() - start, torch.cat(out, 1)


def packed_copy(reference, cfg: DecoderConfig, lm_head: nn.Module) -> tuple[Decoder, nn.Module]:
    """A second dsocr decoder with packed copies of the reference's weights."""
    ours = dsocr_view_of(reference, cfg)
    pack_linears(ours)
    return ours, pack_linear(lm_head) or lm_head


def pack_releasing(ours: Decoder, lm_head: nn.Module, reference) -> nn.Module:
    """Pack dsocr's layers one at a time, releasing the reference's tensors of that layer (which
    dsocr's plain parameters were views of), so memory holds one copy of the weights throughout."""
    for ours_layer, ref_layer in zip(ours.layers, reference.layers):
        pack_linears(ours_layer)
        for p in ref_layer.parameters():
            p.data = torch.empty(0, dtype=p.dtype)
    return pack_linear(lm_head) or lm_head


def read_bandwidth() -> float:
    """GB/s of a `sum` over 1 GiB of float32 (the best of three): what streaming weights can reach."""
    data = torch.ones(2**28)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def measure_rounds(contenders: dict, inputs: dict, new_tokens: int, rounds: int, results: dict) -> None:
    """Each round runs every contender once per batch size, in turn, so that slow phases of a
    shared machine hit all of them alike; the best prefill and decode times are kept."""
    with torch.inference_mode():
        for run, model, head in contenders.values():
            run(model, head, inputs[min(inputs)][:, :8], 2)  # warm-up
        for _ in range(rounds):
            for b, ids in inputs.items():
                for name, (run, model, head) in contenders.items():
                    prefill, decode, tokens = run(model, head, ids, new_tokens)
                    old = results.get((name, b))
                    if old is not None:
                        prefill, decode, tokens = min(prefill, old[0]), min(decode, old[1]), old[2]
                    results[name, b] = (prefill, decode, tokens)


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


def measure_dtype(cfg: DecoderConfig, dtype: torch.dtype, args) -> None:
    dtype_name = str(dtype).removeprefix("torch.")
    steps = args.new_tokens - 1
    element = torch.tensor([], dtype=dtype).element_size()
    reference = reference_model(cfg, dtype)
    head_weight = (torch.rand(cfg.vocab_size, cfg.hidden_size, generator=torch.Generator().manual_seed(1)) - 0.5).to(dtype) * 0.06
    lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
    lm_head.weight = nn.Parameter(head_weight, requires_grad=False)
    inputs = {b: torch.randint(3, 128000, (b, PROMPT), generator=torch.Generator().manual_seed(b)) for b in args.batches}
    ours = dsocr_view_of(reference, cfg)
    contenders = {"reference": (run_reference, reference, head_weight), "dsocr plain": (run_dsocr, ours, lm_head)}
    results: dict = {}
    weights = sum(p.numel() for p in reference.parameters()) * element + head_weight.numel() * element
    available = available_memory()
    if available is None or 2.2 * weights < available:  # room for a packed copy beside the reference
        contenders["dsocr packed"] = (run_dsocr, *packed_copy(reference, cfg, lm_head))
        measure_rounds(contenders, inputs, args.new_tokens, args.rounds, results)
        how = "all three interleaved"
    else:  # one copy at a time: the reference first, then dsocr packed in its place
        measure_rounds(contenders, inputs, args.new_tokens, args.rounds, results)
        packed_head = pack_releasing(ours, lm_head, reference)
        del contenders, reference
        measure_rounds({"dsocr packed": (run_dsocr, ours, packed_head)}, inputs, args.new_tokens, args.rounds, results)
        how = "reference and plain interleaved, then packed alone (memory holds one copy of the weights)"
    print(f"\n{dtype_name}: {weights / 1e9:.1f} GB of weights; {how}")
    print(f"{'batch':>5} {'model':14} {'prefill s':>10} {'decode tok/s':>13} {'vs reference':>13} "
          f"{'tokens = ref':>12} {'weights GB/s':>13}")
    for b in args.batches:
        _, ref_decode, ref_tokens = results["reference", b]
        for name in ("reference", "dsocr plain", "dsocr packed"):
            prefill, decode, tokens = results[name, b]
            rate = active_bytes(cfg, element) * steps / decode / 1e9 if b == 1 else float("nan")
            print(f"{b:5d} {name:14} {prefill:10.2f} {b * steps / decode:13.2f} "
                  f"{ref_decode / decode:12.2f}x {(tokens == ref_tokens).float().mean().item():12.0%} {rate:13.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per model and batch (the best is kept)")
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (12 = the real model)")
    args = parser.parse_args()
    cfg = DecoderConfig(num_hidden_layers=args.layers)
    bandwidth_limit = read_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers, prompt {PROMPT} tokens, "
          f"{args.new_tokens} new tokens (greedy), best of {args.rounds} rounds; memory read bandwidth "
          f"{bandwidth_limit:.1f} GB/s")
    for dtype_name in args.dtypes:
        measure_dtype(cfg, getattr(torch, dtype_name), args)  # everything it allocates is freed on return
    print(f"active weights per token: {active_bytes(cfg, 2) / 1e9:.2f} GB in bf16, {active_bytes(cfg, 4) / 1e9:.2f} GB in fp32")


def available_memory() -> int | None:
    """Bytes of memory available (Linux /proc/meminfo), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
