"""LoRA (Hu et al. 2021): a frozen nn.Linear plus a trainable low-rank update, W + (alpha/r) B A.

`LoRALinear` is an nn.Linear subclass that keeps the base `weight` / `bias` under their own names,
so a model with adapters still has every official key; the adapters add `lora_A` / `lora_B`.
`merged_state_dict` gives the official names only, with the update folded into the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DsocrError


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))  # starts as the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The low-rank update scale * B @ A, shaped like `weight`."""
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.merged:
            out = out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
        return out

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `targets` (e.g. "q_proj") and lies under
    one of `prefixes` (e.g. "model.layers."). Returns the wrapped names."""
    chosen = [
        name for name, module in model.named_modules()
        if type(module) is nn.Linear
        and name.rsplit(".", 1)[-1] in targets
        and any(name.startswith(p) for p in prefixes)
    ]
    if not chosen:
        raise DsocrError(f"LoRA: no linear layer named {list(targets)} under {list(prefixes)}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return chosen


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`state` (default: the model's state dict) with every adapter folded in: official names only."""
    state = dict(model.state_dict() if state is None else state)
    for name, module in lora_modules(model).items():
        a, b = state.pop(f"{name}.lora_A"), state.pop(f"{name}.lora_B")
        weight = state[f"{name}.weight"]
        if not module.merged:
            delta = (b.float() @ a.float()) * module.scale
            state[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
    return state


def adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors (`...lora_A`, `...lora_B`)."""
    state = model.state_dict() if state is None else state
    return {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}
