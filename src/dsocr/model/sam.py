"""SAM ViT-B image encoder (window attention, decomposed relative positions), its neck, and the
16x token compressor (`net_2`, `net_3`) — DeepEncoder's first half (spec §1).

Parameter names follow segment-anything's `ImageEncoderViT` and the official checkpoint's
`model.sam_model.*`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attend
from .config import SamConfig
from .positions import relative_position_table, resample_grid


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)  # [B, H, W, C]


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(width, hidden)
        self.lin2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def _pad_to_windows(x: torch.Tensor, window: int, fill: torch.Tensor | None) -> torch.Tensor:
    """Pad [B, H, W, C] at the bottom/right to a multiple of `window` with the vector `fill`."""
    b, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    if (hp, wp) == (h, w):
        return x
    if fill is None:
        return F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    out = fill.to(x.dtype).expand(b, hp, wp, c).clone()
    out[:, :h, :w] = x
    return out


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B * nH * nW, window, window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def _window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    c = x.shape[-1]
    b = x.shape[0] // ((hp // window) * (wp // window))
    x = x.view(b, hp // window, wp // window, window, window, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return x[:, : size[0], : size[1]]


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position bias (MViTv2 / SAM)."""

    def __init__(self, width: int, heads: int, rel_pos_size: int):
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        b, h, w, c = x.shape
        # q/k/v are computed before window padding: a padded (zero) token's projection is the bias,
        # so padding q/k/v with the bias equals the official pad-then-project, with fewer FLOPs.
        qkv = self.qkv(x)
        if window:
            qkv = _pad_to_windows(qkv, window, self.qkv.bias)
            padded = qkv.shape[1:3]
            qkv = _window_partition(qkv, window)
        out = self._attend(qkv)
        if window:
            out = _window_unpartition(out, window, padded, (h, w))
        return self.proj(out)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)
        rel_h = relative_position_table(self.rel_pos_h, h, h)  # [h, h, D]
        rel_w = relative_position_table(self.rel_pos_w, w, w)  # [w, w, D]

        def bias(start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
            r_q = q[start:stop].reshape(-1, h, w, q.shape[-1])
            bias_h = torch.einsum("nhwd,hkd->nhwk", r_q, rel_h)
            bias_w = torch.einsum("nhwd,wkd->nhwk", r_q, rel_w)
            # bias[(y, x), (ky, kx)] = bias_h[y, x, ky] + bias_w[y, x, kx]
            if torch.is_grad_enabled() and (bias_h.requires_grad or bias_w.requires_grad):
                return (bias_h[..., :, None] + bias_w[..., None, :]).reshape(-1, h * w, h * w)
            torch.add(bias_h[..., :, None], bias_w[..., None, :], out=out.view(-1, h, w, h, w))  # in place: no fresh pages
            return out

        out = attend(q, k, v, bias)  # [b * heads, h * w, D]
        return out.view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)


class Block(nn.Module):
    def __init__(self, config: SamConfig, window: int, rel_pos_size: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = Attention(config.width, config.heads, rel_pos_size)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.window)
        return x + self.mlp(self.norm2(x))


class SamEncoder(nn.Module):
    """Pixels [B, 3, L, L] -> compressed features [B, C_out, L/64, L/64] (1024 x 16 x 16 at L=1024)."""

    def __init__(self, config: SamConfig | None = None):
        super().__init__()
        config = config or SamConfig()
        self.config = config
        grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.width))
        self.blocks = nn.ModuleList()
        for i in range(config.depth):
            is_global = i in config.global_attn_indexes
            window = 0 if is_global else config.window_size
            self.blocks.append(Block(config, window, grid if is_global else config.window_size))
        neck = config.neck_channels
        self.neck = nn.Sequential(
            nn.Conv2d(config.width, neck, kernel_size=1, bias=False),
            LayerNorm2d(neck, config.layer_norm_eps),
            nn.Conv2d(neck, neck, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(neck, config.layer_norm_eps),
        )
        mid, out = config.compressor_channels
        self.net_2 = nn.Conv2d(neck, mid, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1, bias=False)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Trunk and neck: what segment-anything's `ImageEncoderViT` returns, [B, 256, L/16, L/16]."""
        x = self.patch_embed(pixels)
        pos = self.pos_embed.permute(0, 3, 1, 2)
        x = x + resample_grid(pos, x.shape[1]).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net_3(self.net_2(self.image_features(pixels)))
