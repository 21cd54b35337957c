"""CUDA paths: every model forward/backward, bf16- and fp16-mixed training steps, sliding windows, export.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.inferers import sliding_window_inference

from factorseg.inference.export import export_model
from factorseg.inference.runners import load_runner
from factorseg.models import create

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SMALL = dict(widths=(16, 32, 64), head_dim=8, window_size=4, dropout=0.1, deep_supervision=True, ds_heads=2)
# name, constructor keywords, cubic input edge
MODELS = [
    ("swin_factorizer", SMALL, 32),
    ("local_factorizer", SMALL, 32),
    ("global_factorizer", SMALL, 32),
    ("swin_factorizer", {"preset": "brats"}, 64),
    ("swin_factorizer", {"preset": "isles22"}, 64),
    ("segresnet", {"init_filters": 8}, 32),
    ("swinunetr", {"feature_size": 12}, 64),
    ("unetr", {"img_size": 32}, 32),
    ("dynunet", {"patch_size": 32}, 32),
    ("basicunet", {"features": (8, 8, 16, 32, 64, 8)}, 32),
]


def _model(name: str, kwargs: dict, channels: tuple[int, int] = (2, 3)) -> torch.nn.Module:
    if "preset" in kwargs:
        return create(name, **kwargs, in_channels=channels[0], out_channels=channels[1]).cuda()
    return create(name, in_channels=channels[0], out_channels=channels[1], **kwargs).cuda()


def _loss(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    outputs = output if isinstance(output, list) else [output]
    return sum(o.float().square().mean() for o in outputs)


@pytest.mark.parametrize("name,kwargs,size", MODELS, ids=lambda v: v if isinstance(v, str) else None)
def test_forward_and_backward_on_cuda(name: str, kwargs: dict, size: int) -> None:
    torch.manual_seed(0)
    model = _model(name, kwargs).train()
    x = torch.randn(1, 2, size, size, size, device="cuda")
    _loss(model(x)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (1, 3, size, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16-mixed", "16-mixed"])
def test_mixed_precision_training_steps(dtype: torch.dtype) -> None:
    """A few AdamW steps under autocast (with a grad scaler for fp16) stay finite and close to fp32."""
    losses = {}
    for precision in (torch.float32, dtype):
        torch.manual_seed(0)
        model = _model("swin_factorizer", SMALL).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
        x = torch.randn(2, 2, 32, 32, 32, device="cuda")
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=precision, enabled=precision != torch.float32):
                loss = _loss(model(x))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses[precision] = float(loss)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert abs(losses[dtype] - losses[torch.float32]) <= 0.05 * abs(losses[torch.float32]) + 1e-3


def test_nmf_paths_agree_on_cuda() -> None:
    """The sub-block and window paths of the paper's mixer give the same values and gradients on the GPU."""
    from factorseg.models.layers.mixer import NMFMixer, with_mixer_path

    mixer = NMFMixer(16, 3, head_dim=8, window_size=4, shifts=[0, 2]).cuda().double()
    x = torch.randn(1, 16, 12, 8, 8, device="cuda", dtype=torch.float64, requires_grad=True)
    results = []
    for same in (mixer, with_mixer_path(mixer, "windows")):
        out = same(x)
        results.append((out.detach(), torch.autograd.grad(out.square().sum(), x)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-9)


def test_sliding_window_prediction_matches_the_cpu() -> None:
    torch.manual_seed(0)
    model = _model("swin_factorizer", SMALL).eval()
    x = torch.randn(1, 2, 40, 48, 36)
    with torch.inference_mode():
        gpu = sliding_window_inference(x.cuda(), (32, 32, 32), 2, model, overlap=0.5, mode="gaussian").cpu()
        cpu = sliding_window_inference(x, (32, 32, 32), 2, model.cpu(), overlap=0.5, mode="gaussian")
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3 * float(cpu.abs().max()))


def test_export_of_a_cuda_model(tmp_path: Path) -> None:
    """Export traces a CPU copy; the CUDA model itself is left on the GPU."""
    model = _model("swin_factorizer", {**SMALL, "deep_supervision": False}).eval()
    path = export_model(model, (1, 2, 32, 32, 32), tmp_path / "model.pt", "torchscript")
    assert next(model.parameters()).is_cuda
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.inference_mode():
        expected = model(x.cuda()).cpu()
    torch.testing.assert_close(load_runner(path, "torchscript")(x), expected, rtol=1e-3, atol=1e-4)
