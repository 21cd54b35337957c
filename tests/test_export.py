"""Export to ONNX / TorchScript: outputs equal PyTorch within 1e-4, runners as predictors, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.inferers import sliding_window_inference

from factorseg.inference import export as export_mod
from factorseg.errors import InputError
from factorseg.inference.export import export_model
from factorseg.inference.runners import OnnxRunner, TorchScriptRunner, load_runner
from factorseg.models import create

SHAPE = (1, 2, 8, 8, 8)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("swin_factorizer", in_channels=2, out_channels=3, widths=(8, 16), head_dim=4, window_size=4,
                  dropout=0.0, deep_supervision=True, ds_heads=1)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = _model().train()
    path = export_model(model, SHAPE, tmp_path_factory.mktemp("onnx") / "model.onnx", "onnx")
    assert model.training  # restored
    return model, path


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow  # the ONNX translation alone takes ~20 s on 2 cores
def test_onnx_matches_pytorch_with_dynamic_batch(onnx_file) -> None:
    model, path = onnx_file
    runner = load_runner(path)
    assert isinstance(runner, OnnxRunner) and runner.input_shape == (None, *SHAPE[1:])
    for batch in (1, 3):
        x = torch.randn(batch, *SHAPE[1:])
        torch.testing.assert_close(runner(x), _reference(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_onnx_runner_in_sliding_window_inference(onnx_file) -> None:
    model, path = onnx_file
    runner = OnnxRunner(path, threads=1)
    image = torch.randn(1, 2, 12, 10, 8)
    kwargs = dict(roi_size=SHAPE[2:], sw_batch_size=2, overlap=0.5, mode="gaussian")
    got = sliding_window_inference(image, predictor=runner, **kwargs)
    with torch.no_grad():
        expected = sliding_window_inference(image, predictor=model.eval(), **kwargs)
    assert got.shape == (1, 3, 12, 10, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="does not match the exported shape"):
        runner(torch.randn(1, 2, 16, 8, 8))


def test_torchscript_matches_pytorch_and_rejects_other_sizes(tmp_path: Path) -> None:
    model = _model()
    path = export_model(model, SHAPE, tmp_path / "model.ts", "torchscript")
    runner = load_runner(path)
    assert isinstance(runner, TorchScriptRunner)
    x = torch.randn(2, *SHAPE[1:])
    torch.testing.assert_close(runner(x), _reference(model, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="fixed to the export's spatial size"):
        runner(torch.randn(1, 2, 16, 8, 8))


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    path = tmp_path / "model.ts"
    export_model(model, SHAPE, path, "torchscript")
    before = path.read_bytes()

    def fail(*args: object) -> None:
        raise RuntimeError("exported torchscript model differs from PyTorch")

    monkeypatch.setattr(export_mod, "_verify", fail)
    with pytest.raises(RuntimeError, match="differs"):
        export_model(model, SHAPE, path, "torchscript")
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]  # no temporary file left


def test_bad_arguments(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(InputError, match="unknown export format"):
        export_model(model, SHAPE, tmp_path / "m.x", "tflite")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="total stride"):
        export_model(model, (1, 2, 7, 8, 8), tmp_path / "m.ts", "torchscript")
    with pytest.raises(InputError, match="must be"):
        export_model(model, (1, 2), tmp_path / "m.ts", "torchscript")
    with pytest.raises(InputError, match="is a folder"):
        export_model(model, SHAPE, tmp_path, "torchscript")
    with pytest.raises(InputError, match="not found"):
        load_runner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        load_runner(tmp_path / "junk.onnx")


def _kill_head(mixer: torch.nn.Module, head: int = 0) -> None:
    """Switch one head of an NMF mixer off, as training does to some heads: its in-projection's
    channels are zero or negative everywhere, so the ReLU makes that head's window matrices all zero."""
    hd = mixer.matricize.head_dim
    with torch.no_grad():
        mixer.in_proj.weight[head * hd : (head + 1) * hd] = 0.0
        if mixer.in_proj.bias is not None:
            mixer.in_proj.bias[head * hd : (head + 1) * hd] = -1.0


@pytest.mark.slow  # one full ONNX translation (~15 s on 2 cores)
def test_onnx_export_of_a_model_with_dead_heads(tmp_path: Path) -> None:
    # Regression: the exporter's graph optimizer dropped the NMF's ``+ eps`` denominator guards
    # (it treats scalars within 1e-8 of 0 as 0), so all-zero window matrices gave 0 / 0 = NaN in
    # onnxruntime and the whole output was NaN, while PyTorch and TorchScript gave finite values.
    model = _model().eval()
    for name, module in model.named_modules():
        if name.endswith("mixer"):
            _kill_head(module)
    x = torch.randn(2, *SHAPE[1:])
    expected = _reference(model, x)
    assert torch.isfinite(expected).all()
    path = export_model(model, SHAPE, tmp_path / "model.onnx", "onnx")  # its own check passes
    got = load_runner(path)(x)
    assert torch.isfinite(got).all()
    bound = export_mod.ATOL + export_mod.RTOL * float(expected.abs().max())
    assert float((got - expected).abs().max()) <= bound
