"""Export a trained model to ONNX or TorchScript (run by :mod:`factorseg.inference.runners`), with its config.

``export_model`` traces the model in eval mode on one example input, checks the exported model
against PyTorch on that input (max difference at most ``1e-4`` + ``1e-4`` x the output's
magnitude), and writes the file atomically (:func:`factorseg.io.atomic_path`).

Input sizes. The exported graph is specialised to the example's spatial size: the Factorizer's
window layout (padding, windows shrunk to the input, shifts dropped along single-window axes) is
decided in Python from the input size, so an ONNX graph cannot serve every size; a sliding-window
predictor always feeds patches of one size anyway, so export with that size. The batch axis is
dynamic in ONNX (named ``batch``); TorchScript graphs also accept other batch sizes. Runners
check the spatial size and raise :class:`~factorseg.errors.InputError` on a mismatch.

The model exported is never changed: where it must be (on a GPU, in training mode, other NMF iterations),
a copy is traced instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from factorseg.config import validate_bundle_config
from factorseg.errors import InputError
from factorseg.inference.runners import CPU, FORMATS, Format, load_runner, prepared_module
from factorseg.io import atomic_path, write_json
from factorseg.models.layers.nmf import NMF

if TYPE_CHECKING:
    from factorseg.inference.loading import LoadedModel

#: Exported outputs must match PyTorch within ``ATOL + RTOL * max|output|``.
ATOL = 1e-4
RTOL = 1e-4


def _check_shape(example_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in example_shape)
    if len(shape) < 3 or min(shape) < 1:
        raise InputError(f"example shape {tuple(example_shape)} must be (batch, channels, *spatial) with sizes >= 1")
    return shape


def _example(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _with_zero_biases(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose bias-free convolutions have a zero bias (same outputs).

    The dynamo ONNX exporter (torch 2.13) writes a wrongly shaped bias for convolutions without one,
    which onnxruntime refuses; the paper's stem, downsampling and fusion convolutions have none.
    """
    if not any(isinstance(m, nn.modules.conv._ConvNd) and m.bias is None for m in model.modules()):
        return model
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.bias is None:
            channels = module.out_channels
            module.bias = nn.Parameter(module.weight.new_zeros(channels), requires_grad=False)
    return copied


def _export_onnx(model: nn.Module, example: Tensor, target: Path) -> None:
    model = _with_zero_biases(model)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:  # pragma: no cover - the export extra is installed in development
        raise ImportError("ONNX export needs the 'export' extra: pip install 'factorseg[export]'") from err
    from onnxscript import optimizer

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        optimize=False,  # see below
        verbose=False,
    )
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise RuntimeError("the ONNX exporter returned no program")
    # Not the exporter's own ``optimize=True`` (onnxscript's ``optimizer.optimize``): its no-op rewrite
    # rules drop ``x + c`` and ``x - c`` for every scalar ``|c| <= 1e-8`` as if ``c`` were 0 (a float
    # tolerance, onnxscript 0.7), which deletes the NMF's denominator guards ``+ eps`` (1e-8 in
    # float32): an all-zero window matrix (a head that a trained model's ReLU switches off) then
    # gives 0 / 0 = NaN, which spreads to the whole output. Exact constant folding only; onnxruntime
    # applies its own (exact) graph optimizations when it loads the file.
    optimizer.fold_constants(program.model)
    optimizer.remove_unused_nodes(program.model)
    program.save(str(target), external_data=False)  # one self-contained file (all presets are < 2 GB)


def _export_torchscript(model: nn.Module, example: Tensor, target: Path) -> None:
    traced = torch.jit.trace(model, (example,), check_trace=False)
    traced.save(str(target))


def export_model(
    model: nn.Module, example_shape: Sequence[int], path: str | Path, format: Format = "onnx"
) -> Path:
    """Export ``model`` for inputs shaped ``example_shape`` (``(batch, channels, *spatial)``) to ``path``.

    ``format`` is ``"onnx"`` (opset from the dynamo exporter, dynamic batch axis) or
    ``"torchscript"`` (a traced module for ``torch.jit.load``). Tracing and the check against
    PyTorch run on the CPU in eval mode (on a copy where ``model`` is on a GPU or training: ``model`` is left
    as it is); the file replaces ``path`` only after the check passes. Returns the written path.
    """
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    shape = _check_shape(example_shape)
    check_size = getattr(model, "check_size", None)
    if callable(check_size):
        try:
            check_size(shape[2:])
        except ValueError as err:
            raise InputError(f"cannot export for shape {shape}: {err}") from err
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the output file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        with torch.no_grad():
            cpu_model = prepared_module(model, CPU)
            example = _example(cpu_model, shape)
            (_export_onnx if format == "onnx" else _export_torchscript)(cpu_model, example, tmp)
            expected = cpu_model(example)
            got = load_runner(tmp, format)(example)
        _verify(expected, got, format)
    return path


def _verify(expected: Tensor, got: Tensor, format: str) -> None:
    if expected.shape != got.shape:
        raise RuntimeError(f"exported {format} model gives shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    expected, got = expected.float().cpu(), got.float().cpu()
    diff = float((expected - got).abs().max())
    bound = ATOL + RTOL * float(expected.abs().max())
    if not diff <= bound:
        raise RuntimeError(f"exported {format} model differs from PyTorch by {diff:.3g} (allowed {bound:.3g})")


def _sidecar(path: Path) -> Path:
    """The JSON file beside an exported model that carries its config as plain data."""
    return path.with_name(path.name + ".json")


def check_nmf_iters(network: nn.Module, nmf_iters: int | None) -> None:
    """Refuse an NMF iteration count to bake that is not a small whole number, or a model without NMF."""
    if nmf_iters is None:
        return
    if not isinstance(nmf_iters, int) or isinstance(nmf_iters, bool) or not 0 <= nmf_iters <= 1000:
        raise InputError(f"--nmf-iters must be an integer in [0, 1000], got {nmf_iters!r}")
    if not any(isinstance(m, NMF) for m in network.modules()):
        raise InputError("--nmf-iters: this model has no NMF layers")


def export_bundle(
    loaded: LoadedModel, path: str | Path, format: Format = "onnx", nmf_iters: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a trained bundle for its sliding-window patch size, with its config in ``<file>.json``.

    ``nmf_iters`` bakes that many NMF iterations into the graph (the test-time speed-up; default: the config's
    ``inference.nmf_iters``, else as trained); ``loaded`` is left as it is.
    """
    path = Path(path)
    sidecar = _sidecar(path)
    if not overwrite and (path.exists() or sidecar.exists()):
        raise InputError(f"{path} exists; pass --overwrite to replace it")
    network = loaded.model  # refuses an exported graph
    source = Path(loaded.path).resolve()
    if path.resolve() == source or sidecar.resolve() == source:
        raise InputError(f"{path}: would replace the model it is exported from; choose another --output")
    check_nmf_iters(network, nmf_iters)
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    config = json.loads(json.dumps(loaded.config))
    if nmf_iters is not None:
        config["inference"]["nmf_iters"] = nmf_iters
    # The graph runs the NMF iterations its config records: those prediction with the bundle runs.
    baked = config["inference"].get("nmf_iters")
    shape = (1, len(loaded.channels), *loaded.transforms.roi_size)
    export_model(prepared_module(network, CPU, baked), shape, path, format)
    try:
        write_json(sidecar, {"format": format, "config": config}, overwrite=True)
    except BaseException:
        path.unlink(missing_ok=True)  # an export without its config is unusable: leave neither
        raise
    return path


def read_export_config(path: Path) -> dict[str, Any]:
    """The config of an exported graph, from its sidecar ``<file>.json``, checked as a bundle's is
    (:func:`factorseg.config.validate_bundle_config`)."""
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise InputError(f"{path}: its config {sidecar.name} is missing (export with `factorseg export`)")
    if sidecar.stat().st_size > 16 << 20:
        raise InputError(f"{sidecar}: too large for a factorseg export config")
    try:
        payload = json.loads(sidecar.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{sidecar}: not a factorseg export config (not JSON)") from err
    except OSError as err:
        raise InputError(f"{sidecar}: cannot be read ({err.strerror})") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise InputError(f"{sidecar}: not a factorseg export config (no 'config' mapping)")
    return validate_bundle_config(payload["config"], str(sidecar))
