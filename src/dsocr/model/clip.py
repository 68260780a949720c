"""CLIP ViT-L/14 vision transformer fed SAM's compressed features as patch tokens — DeepEncoder's
second half (spec §2). Parameter names follow the official checkpoint's `model.vision_model.*`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ClipConfig
from .positions import resample_grid


class Embeddings(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.grid = config.image_size // config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(config.width))
        # Unused by DeepEncoder (SAM supplies the patch tokens) but part of the official weights;
        # it still lets the tower embed raw pixels.
        self.patch_embedding = nn.Conv2d(3, config.width, config.patch_size, config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.grid**2 + 1, config.width)

    def positions(self, grid: int) -> torch.Tensor:
        """The class position followed by the patch positions resampled to grid x grid: [1 + grid^2, C]."""
        table = self.position_embedding.weight
        cls_pos, patch_pos = table[:1], table[1:]
        src = int(patch_pos.shape[0] ** 0.5)
        if src != grid:
            patch_grid = patch_pos.reshape(1, src, src, -1).permute(0, 3, 1, 2)
            patch_pos = resample_grid(patch_grid, grid).permute(0, 2, 3, 1).reshape(grid * grid, -1)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def forward(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        """[B, C, g, g] patch features -> [B, 1 + g^2, C] tokens with positions."""
        b, c, g, _ = patch_embeds.shape
        tokens = patch_embeds.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(b, 1, c)
        return torch.cat([cls, tokens], dim=1) + self.positions(g).to(tokens.dtype)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(width, 3 * width)  # rows: q, then k, then v
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv_proj(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu


class Block(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = SelfAttention(config.width, config.heads)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipVisionTower(nn.Module):
    """[B, C, g, g] SAM features -> [B, 1 + g^2, C] CLIP tokens (class token first, no post norm)."""

    def __init__(self, config: ClipConfig | None = None):
        super().__init__()
        config = config or ClipConfig()
        self.config = config
        self.embeddings = Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)  # sic, official name
        self.transformer = Transformer(config)

    def forward(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(patch_embeds)))

    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Plain CLIP on images through its own patch embedding (equals CLIPVisionModel's last_hidden_state)."""
        return self(self.embeddings.patch_embedding(pixels))
