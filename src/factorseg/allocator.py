"""glibc malloc settings that stop the page-fault storm of large CPU tensors (applied by the CLI only).

PyTorch's CPU allocator returns every freed block to glibc, and glibc serves blocks above its mmap
threshold (128 KiB to 32 MiB, adapting) with a fresh ``mmap`` and unmaps them on ``free``. A training
step allocates and frees hundreds of large activations, so every step page-faults them all in again:
on the 2-core VM this project is developed on, half of a Factorizer training step was the kernel
zeroing pages (docs/performance.md). Keeping freed memory in the heap removes that cost:

* ``M_MMAP_MAX = 0``: no block is served by ``mmap``; everything comes from the heap, which is reused;
* ``M_TRIM_THRESHOLD = -1``: the heap top is never given back (it is reused by the next step). The
  largest positive value, 2 GiB, is not enough: a 128^3 forward pass frees more than that at once, and
  glibc then trims the heap and the next pass faults it in again (1.5 GiB a pass, measured);
* ``M_TOP_PAD`` = 256 MiB: the heap grows in large steps (fewer ``brk`` calls);
* ``M_ARENA_MAX = 1``: one arena, so that autograd's backward thread does not allocate from a
  secondary arena, whose heaps glibc shrinks whatever the trim threshold;
* ``glibc.malloc.hugetlb=1`` (start-up only, glibc 2.35+; older versions ignore it): the heap is
  ``madvise``d for transparent huge pages, so large tensors sit on 2 MiB pages instead of 4 KiB ones
  (far fewer TLB misses in the blocks' gathers and per-voxel passes). Measured on the development VM
  (two threads, glibc 2.36, THP ``madvise``, three rounds): a Factorizer's 128^3 forward pass 2-14 % faster
  and SegResNet's 1-2 %, a hippocampus training step faster in 5 of 6 pairs (Factorizer 1-13 %), the 128^3
  training step level (``benchmarks/results/session30/thp_ab.sh``).

The process then keeps its peak working set (it does not grow beyond it: freed blocks are reused).

Library code does not change process-wide state behind its caller, so only the ``factorseg`` command
(every sub-command, ``python -m factorseg``, and the DDP workers, which run the same command) and the
benchmarks apply these settings, never an import: :func:`restart_tuned` re-executes the command once
with :data:`TUNABLES` added to ``GLIBC_TUNABLES`` (huge pages can only be asked for at start-up), and
where it cannot, :func:`tune` sets the first four with ``mallopt``. Python API users who want the same
start Python with ``GLIBC_TUNABLES=`` :data:`TUNABLES`, or call :func:`tune` at the start of their program
(no huge pages then). ``FACTORSEG_ALLOCATOR=default`` (or any ``GLIBC_TUNABLES`` of the user's own that
sets malloc parameters) leaves glibc as it is.

Where none of these settings is in effect (a Python-API user who sets nothing), the Factorizer's layers take
their own map-sized buffers from a pool that keeps them between steps (:mod:`factorseg.models.layers.pool`,
:func:`pool_wanted`): with the layers' gradients summed in place, a 160^3 training step then page-faults 3.4
instead of 17 GiB, without anything of the process's allocator changed (docs/performance.md). ``FACTORSEG_ALLOCATOR=default`` turns the pool off too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from collections.abc import Mapping

#: Environment variable: ``default`` keeps glibc's own allocator behaviour.
OPT_OUT = "FACTORSEG_ALLOCATOR"
_RESTARTED = "_FACTORSEG_ALLOCATOR_RESTARTED"  # set in the re-executed process's environment

#: The settings of the module docstring as glibc tunables (what :func:`restart_tuned` adds to ``GLIBC_TUNABLES``).
TUNABLES = (
    "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=268435456"
    ":glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"
)

# mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_TOP_PAD = 256 << 20
_NO_TRIM = -1  # mallopt(3): disables trimming completely


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether :func:`tune` should act: Linux, no opt-out, no malloc tunables set by the user."""
    env = os.environ if environ is None else environ
    if platform.system() != "Linux":
        return False
    if env.get(OPT_OUT, "").strip().lower() in ("default", "off", "0", "no", "false"):
        return False
    return "glibc.malloc." not in env.get("GLIBC_TUNABLES", "")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (``mallopt`` with glibc's parameter numbers), else None."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # not glibc (musl, macOS) or no C library found
        return None
    return libc


def tune(environ: Mapping[str, str] | None = None) -> bool:
    """Apply the settings of the module docstring to this process; returns whether they were applied."""
    if not wanted(environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM), (_M_TOP_PAD, _TOP_PAD))
    applied = all(bool(libc.mallopt(param, ctypes.c_int(value))) for param, value in settings)
    _TUNED_HERE[0] = _TUNED_HERE[0] or applied
    return applied


_TUNED_HERE = [False]  # whether tune() applied its settings in this process


def pool_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether factorseg's layers keep their map-sized CPU buffers for reuse (:mod:`factorseg.models.layers.pool`).

    Only where glibc would otherwise unmap and page-fault them again every step: Linux with glibc, its malloc
    left as glibc sets it (no ``glibc.malloc`` tunables of anyone's, no :func:`tune` in this process; with the
    command's settings glibc keeps freed memory itself), and no :data:`OPT_OUT`.
    """
    return wanted(environ) and not _TUNED_HERE[0] and _glibc() is not None


def tuned_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``environ`` with :data:`TUNABLES` appended to its ``GLIBC_TUNABLES`` (the user's other tunables kept),
    or None where :func:`wanted` says no."""
    env = dict(os.environ if environ is None else environ)
    if not wanted(env):
        return None
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLES) if t)
    return env


def restart_tuned() -> bool:
    """Re-execute this process (same interpreter, same command line: ``sys.orig_argv``) with
    :func:`tuned_environment`, once, before any work: glibc reads its tunables only at start-up.

    Returns (in the re-executed process, or where it does not re-execute: not wanted, not glibc, no
    interpreter path, ``exec`` failed) whether the settings are in effect, applying what ``mallopt`` can
    (:func:`tune`) where they are not. Call it first thing in a program's entry point: nothing of the
    process survives it but its open files.
    """
    env = tuned_environment()
    if env is not None and _glibc() is not None and not os.environ.get(_RESTARTED) and sys.executable:
        env[_RESTARTED] = "1"  # never twice, whatever glibc does with GLIBC_TUNABLES
        for stream in (sys.stdout, sys.stderr):  # None where the process started without that descriptor
            if stream is not None:
                stream.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:
            pass
    return active() or tune()


def active(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process started with :data:`TUNABLES` (by :func:`restart_tuned` or by the user)."""
    env = os.environ if environ is None else environ
    return TUNABLES in env.get("GLIBC_TUNABLES", "")
