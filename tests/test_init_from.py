"""``factorseg train --init-from MODEL``: fine-tuning starts from exactly the source's weights, under strict rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from builders import CLASSES, tiny_bundle

from factorseg.inference.loading import load_model
from factorseg.bundles.format import save_bundle
from factorseg.cli import main
from factorseg.data.transforms import TransformConfig
from factorseg.models import create
from factorseg.training.module import SegmentationModule

# The demo recipe shrunk to the tiny bundle's architecture (tests/builders.tiny_bundle).
TINY = ["-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.window_size=4", "-s", "model.stem=conv",
        "-s", "model.deep_supervision=false", "-s", "transforms.roi_size=[16,16,16]", "-s", "transforms.num_samples=1"]


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-d", str(data), "-o", str(out), "--recipe", "demo", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "1", "--num-workers", "0", "--folds", "4", "--val-interval", "1", "--no-progress",
            *TINY, *extra]


@pytest.fixture()
def first_step_weights(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """The network's weights when Lightning starts training (before the first optimizer step)."""
    seen: dict[str, torch.Tensor] = {}

    def record(module: SegmentationModule) -> None:
        seen.update({k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()})

    monkeypatch.setattr(SegmentationModule, "on_train_start", record, raising=False)
    return seen


def _two_class_bundle(path: Path) -> Path:
    """Like the tiny bundle but with 2 output classes (another label set)."""
    labels = {**CLASSES, "names": ["background", "a"], "values": [0, 1]}
    model_cfg = {"name": "swin_factorizer", "in_channels": 4, "out_channels": 2, "widths": [8, 16], "head_dim": 4,
                 "window_size": 4, "deep_supervision": False}
    config = {"model": model_cfg, "labels": labels, "channels": ["c0", "c1", "c2", "c3"],
              "transforms": TransformConfig(roi_size=(16, 16, 16), crop_foreground=False).to_dict(),
              "inference": {"overlap": 0.0, "sw_batch_size": 1}}
    torch.manual_seed(1)
    return save_bundle(config, create("swin_factorizer", **{k: v for k, v in model_cfg.items() if k != "name"}), path)


def _one_error_line(capsys: pytest.CaptureFixture, argv: list[str], out: Path, *fragments: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists(), "a refused run wrote something"
    return lines[0]


def test_training_starts_from_exactly_the_bundles_weights(tiny_brats: Path, tmp_path: Path,
                                                          first_step_weights: dict[str, torch.Tensor]) -> None:
    source = tiny_bundle(tmp_path / "source.pt", channels=4)
    before = source.read_bytes()
    run = tmp_path / "run"
    assert main(_train(tiny_brats, run, "--init-from", str(source))) == 0
    expected = load_model(source).model.state_dict()
    assert set(first_step_weights) == set(expected)
    for key, value in expected.items():
        assert torch.equal(first_step_weights[key], value), key
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert recorded["init_from"] == str(source.resolve()) and recorded["init_from_heads"] == "load"
    assert source.read_bytes() == before
    trained = load_model(run / "model_last.pt").model.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in expected.items())  # and then it trained

    # The run's Lightning checkpoint is a source too.
    again = tmp_path / "again"
    first_step_weights.clear()
    assert main(_train(tiny_brats, again, "--init-from", str(run / "checkpoints" / "last.ckpt"))) == 0
    for key, value in load_model(run / "checkpoints" / "last.ckpt").model.state_dict().items():
        assert torch.equal(first_step_weights[key], value), key


def test_skipped_heads_start_fresh_and_may_change_out_channels(
    tiny_brats: Path, tmp_path: Path, first_step_weights: dict[str, torch.Tensor], capsys: pytest.CaptureFixture,
) -> None:
    source = _two_class_bundle(tmp_path / "two.pt")  # 2 outputs; the BraTS data needs 3 regions
    run = tmp_path / "run"
    line = _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(source)), run,
                           "first differing key head.weight", "(2, 8, 1, 1, 1)", "(3, 8, 1, 1, 1)",
                           "--init-from-heads skip")
    assert str(source) in line
    assert main(_train(tiny_brats, run, "--init-from", str(source), "--init-from-heads", "skip")) == 0
    expected = load_model(source).model.state_dict()
    assert {k for k in expected if k not in first_step_weights or first_step_weights[k].shape != expected[k].shape} \
        == {"head.weight", "head.bias"}
    for key, value in expected.items():
        if not key.startswith("head."):
            assert torch.equal(first_step_weights[key], value), key
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init_from_heads"] == "skip"


def test_mismatches_are_refused_in_one_line(tiny_brats: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one_channel = tiny_bundle(tmp_path / "one.pt", channels=1)
    run = tmp_path / "run"
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(one_channel)), run,
                    "takes 1 input channels", "has 4", "input channels must match")
    four = tiny_bundle(tmp_path / "four.pt", channels=4)
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(four), "-s", "model.widths=[8,24]",
                                   "-s", "model.head_dim=8"), run, "first differing key", "has shape",
                    "to build the source's architecture set -s model.widths=[8,16] -s model.head_dim=4")
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(four), "--model", "segresnet"), run,
                    "same architecture")
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", "hippocampus"), run,  # a shipped name
                    "train.init_from hippocampus", "takes 1 input channels")
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(tmp_path / "absent.pt")), run,
                    "absent.pt", "neither a file nor a shipped model")
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from-heads", "skip"), run, "needs --init-from")
    _one_error_line(capsys, _train(tiny_brats, run, "--init-from", str(four), "--resume"), run,
                    "--resume", "--init-from")
    _one_error_line(capsys, _train(tiny_brats, run, "-s", f"train.init_from={four}", "--resume"), run,
                    "--resume", "--init-from")
