"""Differentiable nonnegative matrix factorization (NMF) for batches of small matrices.

The Factorizer replaces attention with a low-rank nonnegative approximation ``X ~ U V^T`` of each
window matrix ``X (M x N)`` (head channels x window voxels). ``NMF`` runs a fixed number of
multiplicative-update (MU) or HALS iterations and returns the reconstruction, which is differentiable
either through every iteration or only through the last ``k`` (the one-step gradient of Geng et al.,
ICLR 2021, for ``k = 1``), trading gradient fidelity for memory.

An iteration updates ``U`` given ``V``, then ``V`` given ``U``. Initialisation gives ``U0`` and then
``V0 = argmin_V ||X - U0 V^T||`` column-wise (exact for rank 1), so zero iterations already yields a
meaningful rank-R approximation: this is the far end of the test-time speed/accuracy trade-off.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Solver = Literal["hals", "mu"]
Init = Literal["fixed", "random", "nndsvd"]

_EPS = {
    torch.float64: 1e-12,
    torch.float32: 1e-8,
    # 1e-16 underflows to 0 in half precision; these stay representable and far below typical values.
    torch.bfloat16: 1e-6,
    torch.float16: 1e-6,
}


def eps_for(dtype: torch.dtype) -> float:
    """Denominator guard for ``dtype``: small against typical values, yet representable."""
    return _EPS.get(dtype, 1e-8)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are factorised in float32: the matrices are tiny, the ratios are not."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _gram_columns(a: Tensor) -> Tensor:
    """Squared norms of the columns of ``a (..., K, R)`` -> ``(..., 1, R)``."""
    return (a * a).sum(dim=-2, keepdim=True)


def _solve_factor(x: Tensor, other: Tensor, eps: float) -> Tensor:
    """Column-wise exact least squares for one factor given the other (rank-1 closed form)."""
    return (x @ other) / (_gram_columns(other) + eps)


def _hals_update(x: Tensor, factor: Tensor, other: Tensor, eps: float) -> Tensor:
    """One HALS sweep for ``factor`` in ``x ~ factor @ other^T`` (``x`` already oriented).

    Rank 1 is the closed-form projected least squares ``relu(x v) / (v . v)``; higher ranks do
    the exact coordinate step per column, each column seeing the already-updated ones.
    """
    xo = x @ other  # (..., K, R)
    if factor.shape[-1] == 1:
        return torch.relu(xo) / (_gram_columns(other) + eps)
    gram = other.transpose(-1, -2) @ other  # (..., R, R)
    cols = list(factor.unbind(-1))
    for r in range(len(cols)):
        current = torch.stack(cols, dim=-1)
        residual = xo[..., r] - (current @ gram[..., :, r : r + 1]).squeeze(-1)
        step = residual / (gram[..., r, r].unsqueeze(-1) + eps)
        cols[r] = torch.relu(cols[r] + step)
    return torch.stack(cols, dim=-1)


def _mu_update(x: Tensor, factor: Tensor, other: Tensor, eps: float) -> Tensor:
    """One Lee-Seung multiplicative update for ``factor`` in ``x ~ factor @ other^T``."""
    numerator = x @ other
    if factor.shape[-1] == 1:
        denominator = factor * _gram_columns(other)
    else:
        denominator = factor @ (other.transpose(-1, -2) @ other)
    return factor * numerator / (denominator + eps)


_UPDATES = {"hals": _hals_update, "mu": _mu_update}


def nndsvd(x: Tensor, rank: int, fill: float | None = None) -> tuple[Tensor, Tensor]:
    """Nonnegative double SVD initialisation (Boutsidis & Gallopoulos 2008) for ``x (..., M, N)``.

    Works on any number of batch dimensions. ``fill`` replaces exact zeros (NNDSVDa uses the mean
    of ``x``), which multiplicative updates could never leave.
    """
    u_svd, s, vh = torch.linalg.svd(x, full_matrices=False)
    v_svd = vh.transpose(-1, -2)
    us, vs = [], []
    for r in range(rank):
        if r >= s.shape[-1]:
            us.append(torch.zeros_like(u_svd[..., 0]))
            vs.append(torch.zeros_like(v_svd[..., 0]))
            continue
        u, v, sigma = u_svd[..., r], v_svd[..., r], s[..., r : r + 1]
        up, un, vp, vn = u.clamp(min=0), (-u).clamp(min=0), v.clamp(min=0), (-v).clamp(min=0)
        nup, nun = up.norm(dim=-1, keepdim=True), un.norm(dim=-1, keepdim=True)
        nvp, nvn = vp.norm(dim=-1, keepdim=True), vn.norm(dim=-1, keepdim=True)
        mp, mn = nup * nvp, nun * nvn
        use_pos = mp >= mn
        tiny = torch.finfo(x.dtype).tiny
        scale = torch.sqrt(sigma * torch.where(use_pos, mp, mn))
        uu = torch.where(use_pos, up / (nup + tiny), un / (nun + tiny)) * scale
        vv = torch.where(use_pos, vp / (nvp + tiny), vn / (nvn + tiny)) * scale
        us.append(uu)
        vs.append(vv)
    u0, v0 = torch.stack(us, dim=-1), torch.stack(vs, dim=-1)
    if fill is not None:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        u0 = torch.where(u0 > 0, u0, mean * fill)
        v0 = torch.where(v0 > 0, v0, mean * fill)
    return u0, v0


class NMF(nn.Module):
    """Rank-R NMF of batched nonnegative matrices ``(..., M, N)`` returning ``U V^T``.

    Args:
        rows: M, the number of rows (needed for the fixed initialisation buffer).
        rank: R.
        num_iters: iterations per forward pass; change it on a trained model with ``set_nmf_iters``.
        solver: ``"hals"`` (projected coordinate descent) or ``"mu"`` (multiplicative updates).
        init: ``"fixed"`` (a uniform ``U0`` drawn once from ``seed`` and saved in the state dict,
            the paper's choice), ``"random"`` (fresh uniform ``U0`` per call) or ``"nndsvd"``.
        backprop_iters: backpropagate through only the last k iterations (1 = one-step gradient);
            ``None`` unrolls all of them.
        seed: seed of the fixed initialisation.
    """

    def __init__(
        self,
        rows: int,
        rank: int = 1,
        num_iters: int = 5,
        solver: Solver = "hals",
        init: Init = "fixed",
        backprop_iters: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if solver not in _UPDATES:
            raise ValueError(f"unknown NMF solver {solver!r}; choose one of {sorted(_UPDATES)}")
        if init not in ("fixed", "random", "nndsvd"):
            raise ValueError(f"unknown NMF init {init!r}; choose fixed, random or nndsvd")
        if rank < 1 or rows < 1 or num_iters < 0:
            raise ValueError("NMF needs rows >= 1, rank >= 1 and num_iters >= 0")
        if backprop_iters is not None and backprop_iters < 1:
            raise ValueError("backprop_iters must be >= 1 or None (full unrolling)")
        self.rows, self.rank, self.num_iters = rows, rank, num_iters
        self.solver, self.init, self.backprop_iters = solver, init, backprop_iters
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("u0", torch.rand(rows, rank, generator=generator))

    def extra_repr(self) -> str:
        grad = "full" if self.backprop_iters is None else f"last {self.backprop_iters}"
        return (
            f"rows={self.rows}, rank={self.rank}, num_iters={self.num_iters}, solver={self.solver}, "
            f"init={self.init}, grad={grad}"
        )

    def _initial_u(self, x: Tensor) -> Tensor:
        batch = x.shape[:-2]
        if self.init == "fixed":
            return self.u0.to(x.dtype).expand(*batch, self.rows, self.rank)
        if self.init == "random":
            return torch.rand(*batch, self.rows, self.rank, dtype=x.dtype, device=x.device)
        fill = 1e-2 if self.solver == "mu" else None
        return nndsvd(x.detach(), self.rank, fill=fill)[0]

    def decompose(self, x: Tensor, warm_start: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Factors ``U (..., M, R)`` and ``V (..., N, R)`` of ``x (..., M, N)``, in ``x``'s dtype.

        ``warm_start`` replaces the initialisation with given factors (then every iteration is
        tracked by autograd unless ``backprop_iters`` says otherwise).
        """
        if x.shape[-2] != self.rows:
            raise ValueError(f"NMF built for {self.rows} rows got matrices of shape {tuple(x.shape[-2:])}")
        out_dtype = x.dtype
        dtype = _compute_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            start = None if warm_start is None else (warm_start[0].to(dtype), warm_start[1].to(dtype))
            u, v = self._solve(x.to(dtype), eps_for(dtype), start)
        return u.to(out_dtype), v.to(out_dtype)

    def _solve(self, x: Tensor, eps: float, start: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        update = _UPDATES[self.solver]
        xt = x.transpose(-1, -2)
        tracked = self.num_iters if self.backprop_iters is None else min(self.backprop_iters, self.num_iters)
        untracked = self.num_iters - tracked
        # With no iterations at all, the initial projection is the only path for gradients.
        if start is not None:
            u, v = start
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and (untracked == 0 or tracked == 0)):
                u = self._initial_u(x)
                v = _solve_factor(xt, u, eps)
        with torch.no_grad():
            for _ in range(untracked):
                u = update(x, u, v, eps)
                v = update(xt, v, u, eps)
        for _ in range(tracked):
            u = update(x, u, v, eps)
            v = update(xt, v, u, eps)
        return u, v

    def forward(self, x: Tensor, warm_start: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Rank-R reconstruction ``U V^T`` of nonnegative ``x (..., M, N)``."""
        u, v = self.decompose(x, warm_start)
        return u @ v.transpose(-1, -2)


def set_nmf_iters(model: nn.Module, num_iters: int) -> int:
    """Set the iteration count of every NMF layer in ``model`` (the paper's test-time speed-up).

    Returns the number of layers changed, so callers can tell a model without NMF layers.
    """
    if num_iters < 0:
        raise ValueError("num_iters must be >= 0")
    layers = [m for m in model.modules() if isinstance(m, NMF)]
    for layer in layers:
        layer.num_iters = num_iters
    return len(layers)
