"""Shared pieces of the benchmark scripts: models, timing, peak memory, allocator, tables and plots.

Conventions (the issue's): batch 1, 4 -> 3 channels, ``torch.set_num_threads(threads)`` (2 by default),
every configuration timed in the same process with the models interleaved (A, B, C, A, B, C, ...),
reporting the minimum and the median over the repetitions after one warm-up. Forward passes run
in eval mode under ``torch.inference_mode``; a training step is forward (train mode, deep supervision
where the model has it) + Dice-CE loss + backward + AdamW step. Peak memory is the peak resident
size (``VmHWM``: ``ru_maxrss`` without the parent's share that Linux carries over ``fork``) of a
fresh child process that builds the model and runs one warm-up and one measured step; the child's
resident size just before the first step is reported too, so that model and library overheads
can be told apart from activations.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.reference import reference_block
from factorseg import allocator
from factorseg.models import create
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.factorizer import LEGACY_ARCHITECTURE
from factorseg.training.module import adamw

ROOT = Path(__file__).resolve().parents[1]

IN_CHANNELS, OUT_CHANNELS = 4, 3

#: name -> (registry name, keyword overrides, spatial multiple the model needs)
MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "swin_factorizer": ("swin_factorizer", {"preset": "brats"}, 16),
    "local_factorizer": ("local_factorizer", {"preset": "brats"}, 16),
    "global_factorizer": ("global_factorizer", {"preset": "brats"}, 16),
    "segresnet": ("segresnet", {"init_filters": 16}, 8),
    "swinunetr_24": ("swinunetr", {"feature_size": 24}, 32),
    "swinunetr_48": ("swinunetr", {"feature_size": 48}, 32),
    "unetr": ("unetr", {}, 16),
    "dynunet": ("dynunet", {}, 32),
    # Not in the default set: the BraTS preset without its dropout (0.1), to show the dropout's cost,
    # and with its blocks recomputed in the backward pass (less memory, more time).
    "swin_factorizer_no_dropout": ("swin_factorizer", {"preset": "brats", "dropout": 0.0}, 16),
    "swin_factorizer_checkpointed": ("swin_factorizer", {"preset": "brats", "checkpoint_blocks": True}, 16),
    # The BraTS preset as factorseg built it before it became the paper's network (conv-block stem,
    # normalised downsampling, fixed_u init, biases, no positional embedding): the "before".
    "swin_factorizer_legacy": ("swin_factorizer", {"preset": "brats", **LEGACY_ARCHITECTURE}, 16),
}
DEFAULT_MODELS = [name for name in MODELS if name not in (
    "swin_factorizer_no_dropout", "swin_factorizer_checkpointed", "swin_factorizer_legacy")]


def build(name: str, size: int, **overrides: Any) -> nn.Module:
    """Model ``name`` of :data:`MODELS` for cubic inputs of edge ``size`` (UNETR / DynUNet depend on it)."""
    registry, kwargs, _ = MODELS[name]
    kwargs = {**kwargs, **overrides}
    if registry == "unetr":
        kwargs["img_size"] = size
    if registry == "dynunet":
        kwargs["patch_size"] = size
    return create(registry, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **kwargs)


def fits(name: str, size: int) -> bool:
    return size % MODELS[name][2] == 0


# --- the reference ("before") implementation of the Factorizer blocks -------------------------------


class _ReferenceBlock(nn.Module):
    """A Factorizer block (its weights) run through :func:`benchmarks.reference.reference_block`."""

    def __init__(self, block: FactorizerBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return reference_block(self.block, x)


def reference_model(model: nn.Module, in_place: bool = False) -> nn.Module:
    """``model`` (a copy, unless ``in_place``) with every Factorizer block run the plain reference way.

    That is the straightforward implementation (channels-first 1x1 convolutions, ``torch.roll`` and a
    reshape per shift, unrolled NMF iterations) of ``benchmarks/reference.py``: the "before" of the
    optimisations, with the same weights.
    """
    out = model if in_place else copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FactorizerBlock):
                setattr(parent, name, _ReferenceBlock(child))
    return out


# --- process settings ------------------------------------------------------------------------------


def tune_allocator() -> bool:
    """The ``factorseg`` command's allocator settings (:func:`factorseg.allocator.restart_tuned`: this process
    re-executes itself once with them), so that figures are what the command gets.

    Returns whether the settings are in effect (glibc only). Applies to every model in the process alike.
    """
    return allocator.restart_tuned()


def cpu_model() -> str:
    """The CPU's model name, family and model number (Linux's ``/proc/cpuinfo``; else the platform's word).

    A shared VM can land on another machine between sessions, and every absolute time with it; the name
    alone ("AMD EPYC") does not tell the generations apart.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if not key:
                    break  # the end of the first processor's block
                fields.setdefault(key, value)
    except OSError:
        return platform.processor() or platform.machine()
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def environment(threads: int, tuned: bool) -> dict[str, Any]:
    """What the figures were measured on, stored with every result."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": threads,
        "allocator_tuned": tuned,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "load_average": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as in the issue)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per configuration")
    parser.add_argument("--tune-allocator", action="store_true", help="glibc: keep freed memory (see tune_allocator)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for JSON/PNG")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    tuned = tune_allocator() if args.tune_allocator else False
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return environment(args.threads, tuned)


# --- timing ----------------------------------------------------------------------------------------


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: bool = True
) -> dict[str, Timing]:
    """Time every callable ``repeats`` times, alternating between them, after one warm-up each
    (``warmup=False``: the caller already ran each once)."""
    if warmup:
        for run in runs.values():
            run()
            synchronize(device)
    out = {k: Timing() for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            out[key].times.append(time.perf_counter() - start)
    return out


def over_threads(counts: Sequence[int] = (1, 2)) -> Iterator[int]:
    """Each intra-op thread count in turn, set for the loop's body; the load average and CPU printed before and
    after (the frame of the micro-benchmark scripts under ``benchmarks/results``)."""
    print("load", os.getloadavg(), cpu_model())
    for threads in counts:
        torch.set_num_threads(threads)
        yield threads
    print("load", os.getloadavg())


class OpTimes(TorchDispatchMode):
    """Seconds and calls per ATen op and input shapes, timed around each call while the mode is on (the
    profiler inflated some large ops here 7-17x)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple[str, tuple], float] = {}
        self.calls: dict[tuple[str, tuple], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = (str(func), tuple(tuple(a.shape) for a in args if isinstance(a, Tensor))[:3])
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        self.calls[key] = self.calls.get(key, 0) + 1
        return out

    def report(self, runs: int, top: int) -> str:
        """The ``top`` ops with the most time, mean milliseconds and calls per run, one line each."""
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        return "\n".join(f"{t / runs * 1e3:7.2f} ms {self.calls[k] // runs:4d}x {k[0]} {k[1]}" for k, t in ranked)


def cpu_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each CPU callable over ``repeats`` interleaved runs (:func:`interleaved`)."""
    return {k: v.median for k, v in interleaved(runs, repeats, torch.device("cpu")).items()}


def forward_runner(model: nn.Module, x: Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def train_runner(model: nn.Module, x: Tensor, target: Tensor) -> Callable[[], object]:
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    # As in training (factorseg.training.module.make_loss): halving weights on the lower-resolution heads.
    loss = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="exp")
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=1e-2)  # as factorseg train

    def run() -> object:
        model.train()
        opt.zero_grad(set_to_none=True)
        value = loss(model(x), target)
        value.backward()
        opt.step()
        return value

    return run


def inputs(size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, IN_CHANNELS, size, size, size, generator=gen)
    target = (torch.rand(1, OUT_CHANNELS, size, size, size, generator=gen) > 0.7).float()
    return x.to(device), target.to(device)


# --- peak memory in a child process ----------------------------------------------------------------


def child_peak_memory(arguments: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``python -m benchmarks.memory_child ARGUMENTS`` and return its JSON report (or the error)."""
    cmd = [sys.executable, "-m", "benchmarks.memory_child", *arguments]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    ``VmHWM`` of ``/proc/self/status``: the high-water mark of this address space. (``ru_maxrss``
    would do elsewhere, but Linux carries the parent's peak over ``fork`` + ``exec`` into it.)
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- output ----------------------------------------------------------------------------------------


def fmt_seconds(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    os.replace(tmp, path)
    print(f"wrote {path}")


def save_plot(path: Path, draw: Callable[[Any], None], size: tuple[float, float] = (8, 4.5)) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
