"""torch.distributed for training: process-group setup from torchrun's environment, DDP / FSDP2
wrapping, collectives that are no-ops in a single process, and full (unsharded) state dicts.

Under `torchrun` the variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set and
the group is initialised with `env://` (nccl on CUDA, gloo on CPU). Without them the same config
runs as one plain process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import DsocrError


@dataclass
class Dist:
    mode: str  # "none" | "ddp" | "fsdp2" (the mode actually used: "none" when world == 1)
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(mode: str, device: str = "auto") -> Dist:
    """Join the process group started by torchrun (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DsocrError("device = cuda but CUDA is not available")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world == 1:
        return Dist("none", device=target)
    if mode == "none":
        raise DsocrError(f"launched as {world} processes but distributed = \"none\"; set ddp or fsdp2")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return Dist(mode, rank, world, local_rank, target)


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, info: Dist, shard_units: list[nn.Module]) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each of `shard_units`, then on the root), or the module."""
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if info.mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world,))
        for unit in shard_units:
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "no_sync") and hasattr(module, "module") else module


def gradient_sync(module: nn.Module, info: Dist, enabled: bool):
    """Context for one micro-batch: gradients are reduced across processes only when `enabled`
    (the last micro-batch of an accumulation step)."""
    if info.mode == "ddp" and not enabled:
        return module.no_sync()
    if info.mode == "fsdp2":
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum over processes (a copy; float64 on the device)."""
    values = values.detach().to(info.device, torch.float64).clone()
    if info.enabled:
        dist.all_reduce(values)
    return values


def all_gather_object(value, info: Dist) -> list:
    if not info.enabled:
        return [value]
    out = [None] * info.world
    dist.all_gather_object(out, value)
    return out


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, info: Dist) -> float:
    """Total gradient norm (returned), and gradients scaled down to `max_norm` when above it (0: no
    clipping). Squares are summed in float64 (a float32 norm of a large tensor is off by ~1e-6),
    over the shards of every process under FSDP2, so the value does not depend on the split."""
    squares = torch.zeros((), dtype=torch.float64, device=info.device)
    for p in params:
        if p.grad is not None:
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            for chunk in grad.reshape(-1).split(1 << 24):  # float64 sums, 128 MiB at a time
                squares += chunk.double().square().sum()
    if info.mode == "fsdp2":  # each process holds a disjoint shard of every gradient
        dist.all_reduce(squares)
    norm = float(squares.sqrt())
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


# -- state dicts that do not depend on how the model is split --------------------------------


def model_state(module: nn.Module, info: Dist) -> dict[str, torch.Tensor]:
    """The full model state on the main process (on CPU); other processes get {} under FSDP2."""
    if info.mode == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, info: Dist) -> dict:
    """Optimizer state keyed by parameter names (so any process count can load it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if info.mode == "fsdp2" else None
    return get_optimizer_state_dict(unwrap(module), optimizer, options=options)


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, info: Dist) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True) if info.mode == "fsdp2" else None
    set_optimizer_state_dict(unwrap(module), optimizer, state, options=options)
