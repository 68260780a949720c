"""Resampling of learned position tables to other grid sizes, as the official code does it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """Resample a channels-first grid [1, C, h, w] to [1, C, size, size].

    Official DeepEncoder: float32, bicubic, antialias=True, align_corners=False, then back to the
    input dtype. With antialias the kernel is Pillow's (a=-0.5) even when upsampling.
    """
    if grid.shape[-1] == size and grid.shape[-2] == size:
        return grid
    out = F.interpolate(grid.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.to(grid.dtype)


def relative_position_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis: [q_size, k_size, C].

    A table of another length is resampled linearly in float32 first (SAM's `get_rel_pos`).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.float().t()[None], size=length, mode="linear")
        rel_pos = resized[0].t().to(rel_pos.dtype)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]
