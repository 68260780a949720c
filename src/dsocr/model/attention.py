"""Attention helpers shared by the SAM and CLIP towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Largest float attention bias materialised at once; bigger ones are computed in chunks of heads.
_MAX_BIAS_BYTES = 128 * 1024 * 1024


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_fn=None) -> torch.Tensor:
    """Scaled dot-product attention over [N, L, D] tensors (N = batch x heads).

    `bias_fn(start, stop, out)` writes the additive bias for rows start..stop of N into `out`
    [stop - start, L, L]. The bias is built and used chunk by chunk in one reused buffer, so its
    memory stays bounded at large grids and fresh pages are not faulted in for every chunk.
    """
    # 4-D inputs: the fused (flash) CPU kernel takes only those; 3-D ones fall back to the slow
    # reference path that materialises the attention matrix.
    q, k, v = q[None], k[None], v[None]
    if bias_fn is None:
        return F.scaled_dot_product_attention(q, k, v)[0]
    n, length = q.shape[1], q.shape[2]
    per_row = length * k.shape[2] * q.element_size()
    step = max(1, min(n, _MAX_BIAS_BYTES // max(per_row, 1)))
    buffer = torch.empty(step, length, k.shape[2], dtype=q.dtype, device=q.device)
    if step >= n:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias_fn(0, n, buffer)[None])[0]
    out = torch.empty(q.shape[1:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        bias = bias_fn(start, stop, buffer[: stop - start])
        out[start:stop] = F.scaled_dot_product_attention(
            q[:, start:stop], k[:, start:stop], v[:, start:stop], attn_mask=bias[None]
        )[0]
    return out
