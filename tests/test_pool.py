"""The layers' pool of map-sized CPU buffers: a buffer is reused only once nothing refers to it, the pool holds
no more than its callers' peak, and a model gives the same bits with it as without."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from factorseg import allocator
from factorseg.models import create
from factorseg.models.layers import pool

MIB = 1 << 20


@pytest.fixture
def fresh_pool(monkeypatch: pytest.MonkeyPatch) -> pool.BufferPool:
    """A new pool serving from 1 MiB, whatever the process's allocator settings."""
    monkeypatch.setattr(pool, "_POOLS", {})
    monkeypatch.setattr(pool, "LARGE", MIB)
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: True)
    return pool.pool()


def test_a_freed_buffer_is_reused_and_a_live_one_never(fresh_pool: pool.BufferPool) -> None:
    a = pool.empty((4, MIB), torch.float32)
    ptr = a.data_ptr()
    view = a[1:3]
    del a
    b = pool.empty((4, MIB), torch.float32)  # ``a``'s buffer is still referred to by ``view``
    assert b.data_ptr() != ptr
    del view
    gc.collect()
    c = pool.empty((4, MIB), torch.float32)
    assert c.data_ptr() == ptr
    assert fresh_pool.leased == 2 * 16 * MIB and fresh_pool.held == 2 * 16 * MIB


def test_a_buffer_saved_by_autograd_stays_leased_until_the_graph_is_freed(fresh_pool: pool.BufferPool) -> None:
    w = torch.randn(4, MIB, requires_grad=True)
    t = pool.empty((4, MIB), torch.float32).fill_(2.0)
    loss = (w * t).sum()  # saves ``t`` for w's gradient
    ptr = t.data_ptr()
    del t
    other = pool.empty((4, MIB), torch.float32)
    assert other.data_ptr() != ptr
    loss.backward()
    assert torch.equal(w.grad, torch.full_like(w, 2.0))
    del loss
    assert pool.empty((4, MIB), torch.float32).data_ptr() == ptr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.bool, torch.int64])
def test_empty_like_keeps_dtype_and_dense_strides(fresh_pool: pool.BufferPool, dtype: torch.dtype) -> None:
    x = torch.zeros(4, 16, 8, 64, 64, dtype=dtype)
    for like in (x, x.to(memory_format=torch.channels_last_3d), x.permute(0, 2, 3, 4, 1), x[:, :, ::2]):
        out = pool.empty_like(like)
        ref = torch.empty_like(like)
        assert (out.shape, out.stride(), out.dtype) == (ref.shape, ref.stride(), ref.dtype)
        assert out._base is None or dtype == torch.bfloat16  # autograd may sum gradients into it in place
        assert pool.empty_like(like, contiguous=True).is_contiguous()
    del out
    assert fresh_pool.leased == 0  # every lease above was dropped at once
    assert fresh_pool.peak_leased > 0


def test_small_or_unwanted_buffers_come_from_torch(fresh_pool: pool.BufferPool, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = [pool.empty((MIB // 8,), torch.float32)]  # half a MiB: below ``LARGE``
    assert fresh_pool.peak_leased == 0
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: False)
    kept.append(pool.empty((4, MIB), torch.float32))
    assert fresh_pool.peak_leased == 0 and len(kept) == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 24), st.booleans()), min_size=1, max_size=40))
def test_live_leases_never_overlap_and_the_pool_holds_little_more_than_its_peak(ops: list[tuple[int, bool]]) -> None:
    """Random leases (MiB) and frees (the oldest live lease when the flag is set)."""
    p = pool.BufferPool()
    live: list[torch.Tensor] = []
    for mib, free in ops:
        if free and live:
            live.pop(0)
        live.append(torch.from_numpy(p.lease(mib * MIB)))
        spans = sorted((t.data_ptr(), t.data_ptr() + t.numel()) for t in live)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
        assert p.leased >= sum(t.numel() for t in live) and p.held <= pool.SLACK * p.peak_leased
        assert p.held == p.leased + sum(b.nbytes for b in p._free)
    live.clear()
    held = p.held
    assert p.leased == 0 and p.release() == held and p.held == 0


def test_leases_from_several_threads_never_share_a_buffer() -> None:
    """Threads leasing and dropping buffers at once (the lock, and finalizers run by whichever thread drops the
    last reference): each live lease keeps its own bytes, and the books balance at the end."""
    import threading

    p = pool.BufferPool()
    errors: list[str] = []

    def work(tag: int) -> None:
        live: list[torch.Tensor] = []
        for i in range(60):
            live.append(torch.from_numpy(p.lease((1 + (i + tag) % 3) * MIB)).fill_(tag))
            if not all(bool((t == tag).all()) for t in live):
                errors.append(f"thread {tag}: a live lease was overwritten at lease {i}")
            if len(live) > 2:
                live.pop(0)  # its buffer goes back while the other threads lease

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and p.leased == 0 and p.held <= pool.SLACK * p.peak_leased


def test_release_gives_back_only_free_buffers(fresh_pool: pool.BufferPool) -> None:
    kept = pool.empty((2, MIB), torch.float32)
    pool.empty((3, MIB), torch.float32)  # freed at once
    assert pool.release() == 12 * MIB
    assert fresh_pool.held == fresh_pool.leased == 8 * MIB and kept.numel() == 2 * MIB


def _model_and_input(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = create("swin_factorizer", in_channels=2, out_channels=2, preset="brats", widths=(8, 16, 32), ds_heads=1,
                   dropout=0.1)
    return model, torch.randn(1, 2, 32, 32, 32).to(memory_format=torch.channels_last_3d)


def _train_step(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model, x = _model_and_input(seed)
    model.train()
    out = model(x)
    loss = sum((o.float() ** 2).mean() for o in (out if isinstance(out, list) else [out]))
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def test_a_training_step_gives_the_same_bits_with_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: False)
    loss, grads = _train_step(0)
    monkeypatch.setattr(pool, "_POOLS", {})
    monkeypatch.setattr(pool, "LARGE", 64 << 10)  # the step's maps are 0.1-1 MiB
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: True)
    held = []
    for _ in range(3):  # the later steps on the first one's buffers
        pooled_loss, pooled_grads = _train_step(0)
        assert torch.equal(pooled_loss, loss)
        assert all(torch.equal(a, b) for a, b in zip(pooled_grads, grads))
        held.append(pool.pool().held)
    p = pool.pool()
    assert p.peak_leased > 0 and p.leased == 0
    assert held[0] == held[1] == held[2] <= pool.SLACK * p.peak_leased  # no new buffer after the first step


def test_a_forward_pass_gives_the_same_bits_with_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model_and_input(0)
    model.eval()
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: False)
    with torch.inference_mode():
        ref = model(x)
    monkeypatch.setattr(pool, "_POOLS", {})
    monkeypatch.setattr(pool, "LARGE", 64 << 10)
    monkeypatch.setattr(allocator, "pool_wanted", lambda environ=None: True)
    with torch.inference_mode():
        out = model(x)
    assert torch.equal(out, ref)
    # The model's output is its caller's to keep: not leased (a kept lease would raise what the pool holds).
    assert pool.pool().peak_leased > 0 and pool.pool().leased == 0


def test_a_forked_child_makes_its_own_pool() -> None:
    parent = pool.pool()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it got a new pool, then leave without running the parent's cleanup
        os.write(write, b"1" if pool.pool() is not parent else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and pool.pool() is parent


_TUNED_PROBE = """
from factorseg import allocator
before = allocator.pool_wanted()
applied = allocator.tune()
print(before, applied, allocator.pool_wanted())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")
def test_the_pool_serves_only_where_glibc_does_not_keep_freed_memory() -> None:
    assert not allocator.pool_wanted({"GLIBC_TUNABLES": allocator.TUNABLES})
    assert not allocator.pool_wanted({allocator.OPT_OUT: "default"})
    out = subprocess.run([sys.executable, "-c", _TUNED_PROBE], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}).stdout.split()
    if out[1] != "True":
        pytest.skip("not glibc")
    assert out == ["True", "True", "False"]  # after tune(), glibc keeps freed blocks itself
