"""Loading a model: :func:`load_model` for every kind of model and every caller.

Bundles (``.pt``), Lightning checkpoints of ``factorseg train`` (``.ckpt``), exported ONNX and TorchScript
graphs of ``factorseg export`` (with their ``<file>.json`` config) and the models shipped inside the package
(by name, ``factorseg predict --model hippocampus``) all load into one :class:`LoadedModel`: the settings the
model was trained with and a :class:`~factorseg.inference.runners.Runner` that computes its logits. Every command,
:class:`factorseg.Predictor`, ``train --init-from`` and the demo load through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from torch import nn

from factorseg.data.labels import LabelSpec
from factorseg.data.transforms import TransformConfig
from factorseg.errors import InputError
from factorseg.inference.runners import Runner, TorchRunner, load_runner
from factorseg.io import check_regular_file
from factorseg.bundles.format import exported_kind, read_bundle

#: What ``factorseg predict --backend`` runs: PyTorch networks, or ONNX exports on onnxruntime.
Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and the settings it was trained with.

    ``runner`` computes the logits (a PyTorch network on the CPU in eval mode, or an exported graph), ``config``
    is the bundle's plain-data config and ``path`` the file it came from.
    """

    runner: Runner
    config: dict[str, Any]
    path: Path

    @property
    def model(self) -> nn.Module:
        """The PyTorch network, for what needs its modules or weights (explain, export, fine-tuning)."""
        if isinstance(self.runner, TorchRunner):
            return self.runner.module
        kind = getattr(self.runner, "kind", "exported")
        raise InputError(f"{self.path}: is an exported {kind} graph, not a bundle; use the .pt bundle it was "
                         "exported from")

    @property
    def labels(self) -> LabelSpec:
        return LabelSpec.from_dict(self.config["labels"])

    @property
    def transforms(self) -> TransformConfig:
        return TransformConfig.from_dict(self.config["transforms"])

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])


def shipped_models() -> dict[str, Path]:
    """Name -> bundle path of every model shipped in ``factorseg/pretrained``."""
    folder = resources.files("factorseg") / "pretrained"
    if not folder.is_dir():
        return {}
    return {p.name[: -len(".pt")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".pt")}


def _model_file(name_or_path: str | Path, backend: Backend | None) -> Path:
    """The file behind a path or a shipped name: a regular file (a FIFO or device would block)."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = shipped_models()
        if str(name_or_path) in shipped:
            if backend == "onnxruntime":
                raise InputError(f"{path} is a shipped model bundle, not an ONNX export; drop --backend onnxruntime")
            return shipped[str(name_or_path)]
        names = ", ".join(sorted(shipped)) or "none"
        raise InputError(f"model {str(name_or_path)!r} not found: neither a file nor a shipped model "
                         f"(shipped: {names})")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a model file (.pt, .ckpt or .onnx)")
    check_regular_file(path, "model file", "a model file (.pt, .ckpt or .onnx)")
    return path


def _check_backend(path: Path, kind: str | None, backend: Backend | None) -> None:
    """Refuse a file that ``backend`` does not run, saying how to run it."""
    if backend == "onnxruntime" and kind != "onnx":
        raise InputError(f"{path}: is not an ONNX model (--backend onnxruntime runs `factorseg export` output); "
                         "drop --backend onnxruntime to run a bundle")
    if backend == "torch" and kind == "onnx":
        raise InputError(f"{path}: is an exported ONNX model, not a bundle; run it with `factorseg predict "
                         "--backend onnxruntime` (other commands need the .pt bundle it was exported from)")
    if backend == "torch" and kind == "torchscript":
        raise InputError(f"{path}: is an exported TorchScript model, not a bundle; use the .pt bundle it was "
                         "exported from (or factorseg.Predictor.from_file)")


def load_model(name_or_path: str | Path, backend: Backend | None = None) -> LoadedModel:
    """Load a bundle, a Lightning checkpoint, an exported ONNX / TorchScript graph or a shipped model by name.

    ``backend`` restricts what is accepted: ``"torch"`` a PyTorch network (bundle, checkpoint, shipped name;
    an exported graph is refused saying how to run it), ``"onnxruntime"`` an ONNX export; None takes any.
    Files are read with ``torch.load(weights_only=True)`` (tensors and plain data, never code); every config
    is checked in full and every weight must be finite. A PyTorch network comes on the CPU in eval mode.
    """
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = _model_file(name_or_path, backend)
    kind = exported_kind(path)
    _check_backend(path, kind, backend)
    if kind is None:
        config, network = read_bundle(path)
        return LoadedModel(TorchRunner(network), config, path)
    from factorseg.inference.export import read_export_config

    config = read_export_config(path)
    return LoadedModel(load_runner(path, kind, config["inference"].get("nmf_iters")), config, path)  # type: ignore[arg-type]
