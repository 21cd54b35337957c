"""Runners: what the predictor calls on a batch of windows, for PyTorch networks and exported graphs alike.

A :class:`Runner` maps a batch ``(B, C, *spatial)`` to logits, computes on :attr:`Runner.device` and makes a
runner ready for prediction with :meth:`Runner.prepared` (a device, a number of NMF iterations) without changing
itself: whoever loaded a model keeps it as it was. :class:`TorchRunner` wraps an ``nn.Module``;
:class:`OnnxRunner` (onnxruntime) and :class:`TorchScriptRunner` run the graphs of ``factorseg export``, whose
spatial size is fixed (they refuse other sizes with one line) and whose NMF iterations are baked in.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from factorseg.errors import InputError
from factorseg.models.layers.nmf import NMF, set_nmf_iters

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
CPU = torch.device("cpu")


class Runner(Protocol):
    """A network as prediction sees it: ``runner(x) -> logits`` for ``x`` shaped ``(B, C, *spatial)``."""

    @property
    def device(self) -> torch.device:
        """Where it computes (inputs are best sent there; outputs come back on the input's device)."""
        ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def prepared(self, device: torch.device, nmf_iters: int | None = None) -> Runner:
        """This runner on ``device``, in eval mode, with ``nmf_iters`` NMF iterations (None: as it is);
        ``self`` is left as it is."""
        ...


def _on(tensor: Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)


def prepared_module(module: nn.Module, device: torch.device, nmf_iters: int | None = None) -> nn.Module:
    """``module`` on ``device`` in eval mode with ``nmf_iters`` NMF iterations (None: as it is).

    ``module`` itself is never changed: it is returned when it already is so, otherwise a copy is.
    """
    tensors = list(itertools.chain(module.parameters(), module.buffers()))
    iters = [m.num_iters for m in module.modules() if isinstance(m, NMF)]
    if (all(_on(t, device) for t in tensors) and not any(m.training for m in module.modules())
            and (nmf_iters is None or all(n == nmf_iters for n in iters))):
        return module
    copied = copy.deepcopy(module).to(device).eval()
    if nmf_iters is not None:
        set_nmf_iters(copied, int(nmf_iters))
    return copied


class TorchRunner:
    """A PyTorch network as a runner (:attr:`module` is the network, called as it is)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.module.parameters(), self.module.buffers()), None)
        return CPU if first is None else first.device

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)

    def prepared(self, device: torch.device, nmf_iters: int | None = None) -> TorchRunner:
        return TorchRunner(prepared_module(self.module, device, nmf_iters))


class _Exported:
    """What the exported graphs share: they run on the CPU and their NMF iterations are fixed at export."""

    kind = "exported"
    path: Path
    #: The NMF iterations baked into the graph as its config records them (None: as trained).
    nmf_iters: int | None

    @property
    def device(self) -> torch.device:
        return CPU

    def prepared(self, device: torch.device, nmf_iters: int | None = None) -> _Exported:
        """The runner itself (it takes inputs on any device); another NMF iteration count is refused."""
        if nmf_iters is not None and nmf_iters != self.nmf_iters:
            raise InputError(f"{self.path.name}: nmf_iters cannot change an exported {self.kind} graph; re-export "
                             "with the wanted iterations (factorseg export --nmf-iters N)")
        return self


class OnnxRunner(_Exported):
    """An ONNX model as a runner, e.g. for sliding-window inference.

    Runs with onnxruntime on the CPU (or the given ``providers``); inputs are converted to float32
    NumPy arrays and outputs come back as tensors on the input's device.
    """

    kind = "ONNX"

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 nmf_iters: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(f"{path}: not a readable ONNX model ({err})") from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"{path}: expected a model with one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        #: Expected input shape; ``None`` marks a dynamic axis.
        self.input_shape: tuple[int | None, ...] = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.path, self.nmf_iters = path, nmf_iters

    def __call__(self, x: Tensor) -> Tensor:
        shape = tuple(x.shape)
        expected = self.input_shape
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            raise InputError(
                f"{self.path.name}: input of shape {shape} does not match the exported shape "
                f"{tuple('batch' if e is None else e for e in expected)}; export again for this patch size"
            )
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)


class TorchScriptRunner(_Exported):
    """A traced TorchScript model as a runner, with the same input check as :class:`OnnxRunner`."""

    kind = "TorchScript"

    def __init__(self, path: str | Path, nmf_iters: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: TorchScript model not found")
        try:
            self.module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise InputError(f"{path}: not a readable TorchScript model ({err})") from err
        self.module.eval()
        self.path, self.nmf_iters = path, nmf_iters

    def __call__(self, x: Tensor) -> Tensor:
        try:
            with torch.no_grad():
                return self.module(x.to(CPU)).to(x.device)
        except RuntimeError as err:
            raise InputError(
                f"{self.path.name}: the traced model cannot run on input of shape {tuple(x.shape)} "
                f"(traced graphs are fixed to the export's spatial size): {str(err).splitlines()[0]}"
            ) from err


def load_runner(path: str | Path, format: Format | None = None,
                nmf_iters: int | None = None) -> OnnxRunner | TorchScriptRunner:
    """A runner for an exported graph file: ONNX (``.onnx``) runs on onnxruntime, anything else as TorchScript.

    ``nmf_iters``: the NMF iterations baked into the graph, as its config records them (None: as trained).
    """
    path = Path(path)
    kind = format or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")
    if kind not in FORMATS:
        raise InputError(f"unknown export format {kind!r}; choose one of {', '.join(FORMATS)}")
    return OnnxRunner(path, nmf_iters=nmf_iters) if kind == "onnx" else TorchScriptRunner(path, nmf_iters=nmf_iters)
