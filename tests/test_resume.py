"""Training survives being killed: SIGKILL mid-epoch, ``--resume``, and bitwise the same weights.

Real ``factorseg train`` processes on tiny synthetic data (CPU, one thread): two uninterrupted runs with the
same seed must end with identical weights, and a run killed in the middle of a later epoch and resumed must
end with exactly the weights of the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from factorseg.data.synthetic import write_brats_dataset
from factorseg.io import load_checkpoint

EPOCHS = 3  # epoch 1 is validated (val_interval 2); epoch 2 is not, so the final validation runs too
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "factorseg.cli", "train", "-d", str(data), "-o", str(out), "--recipe", "demo",
        "--epochs", str(EPOCHS), "--steps-per-epoch", "6", "--batch-size", "1", "--val-interval", "2",
        "--num-workers", "0", "--folds", "4", "--seed", "7", "--no-progress",
        "-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.deep_supervision=false",
        "-s", "transforms.roi_size=[32,32,32]", "-s", "transforms.num_samples=1", *extra,
    ]


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "data"
    write_brats_dataset(root, 4, seed=3, shape=(32, 32, 32))
    return root


@pytest.fixture(scope="module")
def reference_run(data: Path) -> Path:
    """An uninterrupted run."""
    out = data.parent / "uninterrupted"
    _run(_train_argv(data, out))
    return out


def test_same_seed_gives_identical_weights(data: Path, reference_run: Path) -> None:
    again = data.parent / "again"
    _run(_train_argv(data, again))
    _assert_same_weights(reference_run / "model_last.pt", again / "model_last.pt")
    _assert_same_weights(reference_run / "model_best.pt", again / "model_best.pt")


def _kill_mid_epoch(argv: list[str], checkpoint: Path, kill_after: int) -> subprocess.Popen:
    """Start training and SIGKILL it part-way through the epoch after the ``kill_after``-th checkpoint.

    Epoch length is measured between the first two checkpoint writes; the kill comes 40% of an epoch after
    checkpoint ``kill_after``, i.e. a few training steps into the next epoch.
    """
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    seen: list[float] = []
    last: tuple[int, int] | None = None
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            stat = checkpoint.stat()
            stamp: tuple[int, int] | None = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            last = stamp
            seen.append(time.monotonic())
            if len(seen) == kill_after:
                time.sleep(0.4 * (seen[1] - seen[0]))
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    process.wait(timeout=60)
    return process


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(data: Path, reference_run: Path) -> None:
    out = data.parent / "killed"
    checkpoint = out / "checkpoints" / "last.ckpt"
    process = _kill_mid_epoch(_train_argv(data, out), checkpoint, kill_after=2)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1, "the kill did not land in epoch 2"  # epochs 0 and 1 done, 2 interrupted
    assert not (out / "run_info.json").exists()
    # A kill during an atomic write leaves a temporary file (never a torn checkpoint): resume clears it.
    stale = out / "checkpoints" / ".tmp-0123456789ab-last.ckpt"
    stale.write_bytes(b"half a checkpoint")

    # --resume takes everything from the run folder (config.yaml); the data path is given again.
    _run([sys.executable, "-m", "factorseg.cli", "train", "-d", str(data), "-o", str(out), "--resume",
          "--no-progress"])
    _assert_same_weights(reference_run / "model_last.pt", out / "model_last.pt")
    _assert_same_weights(reference_run / "model_best.pt", out / "model_best.pt")
    resumed = torch.load(checkpoint, map_location="cpu", weights_only=True)
    reference = torch.load(reference_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"]) == (2, 18)
    for (k, a), b in zip(resumed["state_dict"].items(), reference["state_dict"].values()):
        assert torch.equal(a, b), k
    assert not stale.exists() and not list(out.rglob(".tmp-*"))
