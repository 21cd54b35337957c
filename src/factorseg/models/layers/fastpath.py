"""When the fast kernels may run: not under graph capture, and in place only where autograd records nothing."""

from __future__ import annotations

import torch
from torch import Tensor


def traced() -> bool:
    """Whether a graph is being captured (export, tracing, compile): no data-dependent branches then."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def can_modify_inplace(*tensors: Tensor) -> bool:
    """In-place updates are safe where autograd records nothing for these tensors."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
