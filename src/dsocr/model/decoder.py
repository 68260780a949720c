"""DeepSeek-3B-MoE, the language model of DeepSeek-OCR (spec §5): the DeepSeek-V2 decoder with
standard multi-head attention (no MLA), RoPE over the full head, RMSNorm, a dense SwiGLU first
layer and mixture-of-experts layers (softmax gate, greedy top-k, shared experts).

Parameter names follow the official checkpoint (`embed_tokens`, `layers.N.self_attn.q_proj`,
`layers.N.mlp.experts.E.gate_proj`, `layers.N.mlp.shared_experts.*`, `norm`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DecoderConfig


class RMSNorm(nn.Module):
    """Normalised in float32, scaled in the input dtype."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary(nn.Module):
    """Llama-style rotary embedding (non-interleaved halves); cos/sin computed in float32."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, head_dim]."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=positions.device).float() / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents)
        freqs = positions[..., None].float() * inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of every layer for a batch, preallocated to `capacity` positions."""

    def __init__(self, config: DecoderConfig, batch: int, capacity: int, dtype: torch.dtype, device):
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.capacity = capacity
        self.length = 0  # positions filled, the same for every layer once a forward finishes

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {stop} needed")
        self.keys[layer][:, :, start:stop] = k
        self.values[layer][:, :, start:stop] = v
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        width = config.hidden_size
        self.q_proj = nn.Linear(width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, width, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        causal = mask is None and t > 1
        dtype = q.dtype
        if t == 1 and q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
            # A decode step on CPU: the float32 kernel is ~3x faster than the bf16 one there, and exact.
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.kv_heads != self.heads
        ).to(dtype)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Router: softmax over experts in float32, greedy top-k (weights not renormalised by default)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Linear (the official gate is a bare Parameter)
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.scaling = config.routed_scaling_factor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> (weights [N, k] float32, experts [N, k], scores [N, E] float32)."""
        scores = F.linear(x.float(), self.weight.float()).softmax(dim=-1)
        weights, experts = torch.topk(scores, self.top_k, dim=-1, sorted=False)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scaling, experts, scores


class MoE(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.gate = Gate(config)
        self.experts = nn.ModuleList(MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.n_routed_experts))
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts) if config.n_shared_experts else None
        )
        self.last_scores: torch.Tensor | None = None  # router scores of the last forward (training's balance loss)
        self.last_experts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts, scores = self.gate(flat)
        if self.training:
            self.last_scores, self.last_experts = scores, experts
        routed = self._routed(flat, weights, experts)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(flat)
        return routed.view(shape)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Run only the chosen experts: the (token, slot) pairs sorted by expert, one matmul each."""
        k = experts.shape[1]
        if x.shape[0] == 1:  # one token (a decode step at batch 1): its k experts in turn
            chosen = [self.experts[e](x) for e in experts[0].tolist()]
            outputs = torch.cat(chosen).to(x.dtype)
            return (outputs[None].float() * weights[..., None]).sum(dim=1).to(x.dtype)
        flat_experts = experts.flatten()
        order = flat_experts.argsort(stable=True)
        counts = torch.bincount(flat_experts, minlength=len(self.experts)).tolist()
        outputs = x.new_empty(flat_experts.shape[0], x.shape[-1])
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                slots = order[start : start + count]
                outputs[slots] = expert(x[slots // k]).to(outputs.dtype)  # bf16 under autocast
                start += count
        # weighted sum over the k slots in float32, as the official moe_infer
        mixed = (outputs.view(-1, k, x.shape[-1]).float() * weights[..., None]).sum(dim=1)
        return mixed.to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MoE(config) if config.is_moe_layer(layer) else MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(padding: torch.Tensor | None, t: int, past: int, device) -> torch.Tensor | None:
    """Boolean mask [B, 1, T, past + T] (True = attend) for T new tokens after `past` cached ones,
    or None where plain causal attention (or, for one new token, no mask) is exact."""
    if padding is None:
        if past == 0 or t == 1:
            return None
        padding = torch.ones(1, past + t, dtype=torch.bool, device=device)
    keys = torch.arange(past + t, device=device)
    queries = torch.arange(past, past + t, device=device)
    causal = keys[None, :] <= queries[:, None]  # [T, S]
    mask = causal[None] & padding[:, None, : past + t].bool()
    # A fully padded query row (left padding) would attend to nothing: let it see itself.
    mask = mask | (~mask.any(-1, keepdim=True) & (keys[None, None, :] == queries[None, :, None]))
    return mask[:, None]


class DecoderMixin:
    """The language model's modules and forward, shared by the stand-alone `Decoder` and the full
    model's `DeepSeekOCRModel` (which also holds the vision modules, as the official class)."""

    def _build_decoder(self, config: DecoderConfig) -> None:
        self.decoder_config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Hidden states [B, T, D] after the final norm.

        `positions` [B, T] default to past..past+T-1; `padding` [B, past + T] marks real tokens
        (1) against left padding (0); `cache` is filled and advanced."""
        b, t, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + t, device=inputs_embeds.device).expand(b, t)
        cos, sin = self.rotary(positions, inputs_embeds.dtype)
        mask = attention_mask(padding, t, past, inputs_embeds.device)
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length = past + t
        return self.norm(x)


class Decoder(DecoderMixin, nn.Module):
    """The language model alone (its names are the official ones under `model.`)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self._build_decoder(config)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.decode(self.embed_tokens(input_ids), **kwargs)
