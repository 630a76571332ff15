"""CUDA work looked at without a GPU: modules and tensors on fake CUDA devices (torch's
FakeTensorMode: shapes, dtypes and devices, no data), and a count of the kernels an op sequence
would launch with the bytes they would write. Used by benchmarks/cuda_op_count.py and by the
graph-safety tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class KernelCount(TorchDispatchMode):
    """Counts the ops that would launch work (not views, not metadata) and the bytes they write."""

    def __init__(self):
        super().__init__()
        self.kernels = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace != "prim" and not func.is_view:
            self.kernels += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def on_fake_cuda(mode: FakeTensorMode, module: torch.nn.Module) -> torch.nn.Module:
    """module with every parameter and buffer replaced by a fake CUDA tensor of the same layout."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                fake = mode.from_tensor(p.detach())
                with mode:
                    m._parameters[name] = torch.nn.Parameter(fake.to("cuda"), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                fake = mode.from_tensor(b)
                with mode:
                    m._buffers[name] = fake.to("cuda")
    return module


@contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CUDA autocast that also holds where there is no GPU (torch.autocast("cuda") turns itself off
    there): what fake CUDA tensors need to show the dtypes, hence the bytes, of a mixed-precision step."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)
