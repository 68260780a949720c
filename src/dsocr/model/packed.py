"""Linear layers packed for oneDNN: fast CPU decoding.

A decode step multiplies one token per sequence by every active weight matrix, so its speed is
the speed at which the weights stream from memory. On CPU, ATen's `F.linear` hands a plain
`[out, in]` matrix to oneDNN, which re-lays a bf16 matrix out in its blocked (VNNI) format on
every call, or, in fp32, runs MKL's GEMV: both read the weights at about half the memory
bandwidth. `PackedLinear` stores the matrix once in oneDNN's own blocked layout and multiplies
with oneDNN's kernel directly, streaming the weights at close to the bandwidth of the machine
(see `benchmarks/decode.py`). The arithmetic is the same dot products (bf16 results equal
`F.linear`'s bit for bit; fp32 differs in summation order, ~1e-7 relative).

Packing is for inference: a packed layer has no trainable weight. `state_dict()` still yields the
plain `weight` under its usual name and `load_state_dict` repacks, so checkpoints are unchanged;
`unpack_linears` restores `nn.Linear` modules (for training, or to move the model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def packing_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """oneDNN packing runs on CPU for float32, and for bfloat16 where the CPU supports it."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(ops._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """`nn.Linear` for inference with its weight in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._pack(linear.weight.detach())

    def _pack(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for a {self.in_features}->{self.out_features} layer")
        self.dtype = weight.dtype
        # oneDNN chooses the block layout for a batch size; 1 is the decode step, and the packed
        # matrix serves any number of rows.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)

    @property
    def weight(self) -> torch.Tensor:
        """The plain `[out, in]` matrix (a new tensor: packed layers keep only the blocked copy)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("packed linear layers are for inference; unpack_linears(model) before training")
        if x.dtype != self.dtype:  # e.g. autocast: use the plain path, which follows torch's rules
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
        else:
            try:
                self._pack(state_dict[key].to(self.dtype))
            except ValueError as exc:
                error_msgs.append(f"{key}: {exc}")
        if self.bias is not None:
            if prefix + "bias" in state_dict:
                with torch.no_grad():
                    self.bias.copy_(state_dict[prefix + "bias"])
            else:
                missing_keys.append(prefix + "bias")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def _swap(root: nn.Module, convert) -> int:
    count = 0
    for module in list(root.modules()):
        for name, child in list(module.named_children()):
            new = convert(child)
            if new is not None:
                setattr(module, name, new)  # the old module (and its plain weight) is released here
                count += 1
    return count


def pack_linear(module: nn.Module) -> PackedLinear | None:
    """`module` packed, or None where it is not a plain `nn.Linear` or its device and dtype have
    no packed kernel."""
    if type(module) is not nn.Linear or not packing_supported(module.weight.device, module.weight.dtype):
        return None
    with torch.no_grad():
        return PackedLinear(module)


def pack_linears(root: nn.Module) -> int:
    """Replace every `nn.Linear` under `root` by a `PackedLinear` (one at a time, so memory peaks
    at the weights plus one matrix). Returns how many were packed; 0 where the device or dtype
    has no packed kernel."""
    return _swap(root, pack_linear)


def unpack_linears(root: nn.Module) -> int:
    """Turn every `PackedLinear` under `root` back into an `nn.Linear` with the same weights."""

    def convert(child):
        if not isinstance(child, PackedLinear):
            return None
        linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        linear.weight = nn.Parameter(child.weight)
        if child.bias is not None:
            linear.bias = nn.Parameter(child.bias.detach())
        return linear

    with torch.no_grad():
        return _swap(root, convert)
