"""When the fast kernels may run (not under graph capture; in place only where autograd records nothing), the
cache-sized row blocks of the inference kernels, and the per-voxel matrix product they share."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def traced() -> bool:
    """Whether a graph is being captured (export, tracing, compile): no data-dependent branches then."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def can_modify_inplace(*tensors: Tensor) -> bool:
    """In-place updates are safe where autograd records nothing for these tensors."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def unrecorded_eager(x: Tensor, *params: Tensor) -> bool:
    """Whether an inference kernel may take its in-place, block-by-block path on ``x`` with ``params``:
    nothing recorded by autograd, no graph capture, no autocast (whose products change dtypes)."""
    return not traced() and not torch.is_autocast_enabled(x.device.type) and can_modify_inplace(x, *params)


ROW_BLOCK_BYTES = 2 * 2**20
"""Bytes of the widest per-voxel temporary of one row block per intra-op thread: each thread's share of a
block's work stays well inside a core's L2 + share of L3, and the per-block overhead (Python, dispatch, thread
start) is paid once per that much work. Measured (``benchmarks/results/session27/boxsize*.py``): on one thread
2 MiB is best for training and within 3 % for inference; on two, 4 MiB gains 5 % at inference over 2 MiB."""


def block_rows(width: int, element_size: int) -> int:
    """Rows per block whose ``width``-channel temporaries fill :data:`ROW_BLOCK_BYTES` per thread."""
    return max(1, ROW_BLOCK_BYTES * torch.get_num_threads() // (width * element_size))


def row_blocks(rows: Tensor, width: int) -> tuple[Tensor, ...]:
    """``rows (V, C)`` split into views of whole rows whose ``width``-channel temporaries fill
    :data:`ROW_BLOCK_BYTES`: a chain of row-wise steps on one block stays in the cache, and no map-sized
    temporary is allocated (each of which glibc's default allocator page-faults in again)."""
    return rows.split(block_rows(width, rows.element_size()))


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
"""Whether this PyTorch build has oneDNN's fused linear (``mkldnn::_linear_pointwise``, the op ``torch.compile``'s
CPU backend emits)."""


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)`` for rows ``x (V, K)``; float32 CPU rows go through oneDNN's matrix product
    instead of MKL's, also where autograd records (:class:`_RecordedLinear`).

    The per-voxel products of the blocks are skinny (K and N of 16-256, V of thousands of rows), where MKL's
    ``sgemm`` ran at 84-97 GFLOP/s on one thread of an AMD EPYC (Zen 5, AVX-512; its square-matrix peak
    there is 102) and oneDNN's JIT kernels at 159-196 (``benchmarks/results/session29/linear_forms.py``);
    the values are the same up to rounding.
    Elsewhere (autocast, capture, other dtypes or devices, N-D rows, rows without columns, which oneDNN
    rejects) ``F.linear``.
    """
    params = (w,) if b is None else (w, b)
    if not _takes_onednn(x, *params):
        return F.linear(x, w, b)
    if can_modify_inplace(x, *params):
        return _onednn_linear(x, w, b)
    return _RecordedLinear.apply(x, w, b)


def linear_gelu(x: Tensor, w: Tensor, b: Tensor | None, approximate: str) -> Tensor:
    """``gelu(linear(x, w, b))``. For the exact GELU (``approximate="none"``, the paper's), where nothing records
    and oneDNN's product applies (see :func:`linear`), the GELU is that product's post-op, applied to each
    output tile while it is in registers: bit for bit the values of PyTorch's GELU after the product, without
    the pass over the hidden rows that it costs (0.86-1.00x the time, ``benchmarks/results/session32/linear_gelu.py``;
    oneDNN's tanh form rounds differently, so it is not used). Elsewhere the GELU after :func:`linear`, in place
    where nothing records."""
    params = (w,) if b is None else (w, b)
    if approximate == "none" and _takes_onednn(x, *params) and can_modify_inplace(x, *params):
        return _onednn_linear(x, w, b, post_op="gelu")
    h = linear(x, w, b)
    if can_modify_inplace(h):
        return torch.ops.aten.gelu_(h, approximate=approximate)
    return F.gelu(h, approximate=approximate)


def add_row_products_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a^T b``, summed over the rows of ``a (V, M)`` and ``b (V, N)`` (a weight gradient over voxels).

    MKL computes such a product with few columns and many rows on one thread: on two threads
    ``(16, 358,400) x (358,400, 16)`` (the hippocampus recipe's decoder fuse) took 2.2 ms, against 3.2 on one.
    With several threads the rows are cut into one chunk per thread, the chunks' products are one batched
    product, which MKL spreads over the threads, and they are summed: there 1.7-1.8 ms, and 0.48-1.01x MKL's
    time over the recipes' shapes, two runs (``benchmarks/results/session32/row_products.py``). The same sum up to float
    rounding (no less accurate: shorter sums).
    """
    threads, v = torch.get_num_threads(), a.shape[0]
    if threads < 2 or v * a.shape[1] * b.shape[1] < ROW_PRODUCT_CHUNK_WORK or v < 64 * threads or traced():
        return out.addmm_(a.t(), b)
    n = v - v % threads
    chunks = torch.bmm(a[:n].view(threads, -1, a.shape[1]).transpose(1, 2), b[:n].view(threads, -1, b.shape[1]))
    out += chunks.sum(0)
    return out if n == v else out.addmm_(a[n:].t(), b[n:])


ROW_PRODUCT_CHUNK_WORK = 2**23
"""Fewest multiply-adds (``V M N``) for which :func:`add_row_products_` cuts the rows into chunks: below, the
batched product's overhead outweighs the second thread (``(16, 26,880) x (26,880, 16)``: 1.07x the time)."""


def _takes_onednn(x: Tensor, *params: Tensor) -> bool:
    """Whether :func:`linear` runs ``x`` through oneDNN's product: float32 CPU rows with columns, no capture
    or autocast."""
    return (
        _ONEDNN_LINEAR and x.dim() == 2 and x.shape[1] > 0 and not traced()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *params))
        and not torch.is_autocast_enabled("cpu")
    )


def _onednn_linear(x: Tensor, w: Tensor, b: Tensor | None = None, post_op: str = "none") -> Tensor:
    """``x w^T + b`` by oneDNN (float32 CPU rows), then ``post_op`` on each output tile (``"gelu"``: the exact one)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, post_op, [], "none" if post_op == "gelu" else "")


class _RecordedLinear(torch.autograd.Function):
    """:func:`linear` under autograd: the forward product and the input's gradient by oneDNN, the weight's by MKL
    (:func:`add_row_products_`, on every thread).

    On the hippocampus recipe's per-voxel products oneDNN computes ``x w^T`` and ``g w`` 1.3-2.5x faster than
    MKL, while for ``g^T x`` (a reduction over the rows) MKL is the faster at most shapes, up to 3x
    (``benchmarks/results/session31/linear_backward.py``). Same values as ``F.linear`` up to rounding; the
    backward pass is not itself differentiable (no second derivatives).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _onednn_linear(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _onednn_linear(grad, w.t().contiguous()) if ctx.needs_input_grad[0] else None
        gw = add_row_products_(torch.zeros_like(w), grad, x) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb
