"""Training survives being killed: SIGKILL mid-epoch, ``--resume``, and bitwise the same weights and logs.

Real ``factorseg train`` processes on tiny synthetic data (CPU, one thread): two uninterrupted runs with the
same seed must end with identical weights, and a run killed in the middle of a later epoch and resumed must
end with exactly the weights and the ``logs/metrics.csv`` rows of the uninterrupted run. In-process runs
(``factorseg.cli.main``) check the same for a crash after k of N epochs and for ``--epochs k`` then
``--resume --epochs N``, and that a bad ``last.ckpt`` or a changed setting is refused in one line with the run
folder left as it was.
"""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from factorseg.cli import main
from factorseg.data.synthetic import write_brats_dataset
from factorseg.io import load_checkpoint
from factorseg.training.module import SegmentationModule

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
    # Every row of the uninterrupted run's log, once, with the same values.
    assert _rows(out) == _rows(reference_run)
    resumed = torch.load(checkpoint, map_location="cpu", weights_only=True)
    reference = torch.load(reference_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"]) == (2, 18)
    for (k, a), b in zip(resumed["state_dict"].items(), reference["state_dict"].values()):
        assert torch.equal(a, b), k
    assert not stale.exists() and not list(out.rglob(".tmp-*"))


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- in-process: crash after k epochs, --resume
TINY_EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_data(tiny_brats: Path) -> Path:
    return tiny_brats


def _tiny(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "-d", str(data), "-o", str(out), "--recipe", "demo", "--epochs", str(TINY_EPOCHS),
        "--steps-per-epoch", "3", "--batch-size", "1", "--val-interval", "2", "--num-workers", "0", "--folds", "4",
        "--seed", "5", "--no-progress", "-s", "model.widths=[8,16]", "-s", "model.head_dim=4",
        "-s", "model.deep_supervision=false", "-s", "transforms.roi_size=[16,16,16]",
        "-s", "transforms.num_samples=1", *extra,
    ]


@pytest.fixture(scope="module")
def tiny_reference(tiny_data: Path) -> Path:
    out = tiny_data.parent / "uninterrupted"
    assert main(_tiny(tiny_data, out)) == 0
    return out


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_epoch", [1, 2])
def test_crash_after_k_epochs_then_resume_keeps_every_metrics_row(crash_epoch: int, tiny_data: Path,
                                                                   tiny_reference: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies in the second step of epoch k (after epoch k-1's checkpoint and a logged step of epoch k)
    and is resumed has the uninterrupted run's metrics.csv, row for row, and its weights."""
    out = tmp_path / "run"
    original = SegmentationModule.training_step

    def crashing(self: SegmentationModule, batch: object, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == crash_epoch and batch_idx == 1:
            raise _Crash("simulated kill")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", crashing)
    with pytest.raises(_Crash):
        main(_tiny(tiny_data, out, "-s", "train.steps_per_epoch=3"))
    monkeypatch.setattr(SegmentationModule, "training_step", original)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == crash_epoch - 1
    assert main(["train", "-d", str(tiny_data), "-o", str(out), "--resume", "--no-progress"]) == 0
    assert _rows(out) == _rows(tiny_reference)
    _assert_same_weights(tiny_reference / "model_last.pt", out / "model_last.pt")


def test_epochs_k_then_resume_to_n_keeps_every_row(tiny_data: Path, tiny_reference: Path, tmp_path: Path) -> None:
    """``--epochs 1``, then ``--resume --epochs 3``: the same rows as 3 uninterrupted epochs (their values after
    epoch 0 differ: the cosine schedule spans the planned epochs), epoch 0's rows identical."""
    out = tmp_path / "run"
    assert main(_tiny(tiny_data, out, "--epochs", "1")) == 0
    first = _rows(out)
    assert main(["train", "-d", str(tiny_data), "-o", str(out), "--resume", "--epochs", str(TINY_EPOCHS),
                 "--no-progress"]) == 0
    rows, reference = _rows(out), _rows(tiny_reference)

    def shape(table: list[dict[str, str]]) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v and k not in ("epoch", "step")))
                for r in table]

    assert shape(rows) == shape(reference)
    assert [r for r in rows if r["epoch"] == "0"] == [r for r in reference if r["epoch"] == "0"]
    # The first session's rows are kept as they were, except its closing validation of the final weights (logged
    # at the checkpoint's step, after its last training step): the uninterrupted run has none there.
    kept = [r for r in first if int(r["step"]) < 3]
    assert len(kept) == len(first) - 1 and first[-1]["val/dice"]
    assert rows[: len(kept)] == kept


# ---------------------------------------------------------------- refused resumes: one line, run folder untouched
def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _garbage(ckpt: Path, tmp: Path) -> None:
    ckpt.write_bytes(os.urandom(3000))


def _empty(ckpt: Path, tmp: Path) -> None:
    ckpt.write_bytes(b"")


def _truncated(ckpt: Path, tmp: Path) -> None:
    ckpt.write_bytes(ckpt.read_bytes()[:2000])


def _pickled_code(ckpt: Path, tmp: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    raw["callbacks"]["hook"] = _Exploit(tmp / "pwned")
    torch.save(raw, ckpt)


def _no_loops(ckpt: Path, tmp: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    del raw["loops"]
    torch.save(raw, ckpt)


def _nan_weights(ckpt: Path, tmp: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][key] = raw["state_dict"][key] * float("nan")
    torch.save(raw, ckpt)


def _other_model(ckpt: Path, tmp: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"] = {k: v[..., :1].clone() if v.dim() > 1 else v for k, v in raw["state_dict"].items()}
    torch.save(raw, ckpt)


def _a_list(ckpt: Path, tmp: Path) -> None:
    torch.save([1, 2, 3], ckpt)


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "random bytes": (_garbage, "refused to unpickle"),
    "empty file": (_empty, "the file is empty"),
    "truncated": (_truncated, "not a readable checkpoint"),
    "pickled code": (_pickled_code, "refused to unpickle"),
    "no loop state": (_no_loops, "not a checkpoint written by factorseg train"),
    "NaN weights": (_nan_weights, "NaN or infinite"),
    "weights of another model": (_other_model, "do not fit the run's model"),
    "not a dict": (_a_list, "not a checkpoint written by factorseg train"),
}


@pytest.fixture(scope="module")
def one_epoch_run(tiny_data: Path) -> Path:
    out = tiny_data.parent / "one_epoch"
    assert main(_tiny(tiny_data, out, "--epochs", "1")) == 0
    return out


def _refused_resume(capsys: pytest.CaptureFixture, argv: list[str], run: Path, fragment: str) -> str:
    before = _snapshot(run)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), captured.err
    assert "Traceback" not in captured.err and "weights_only=False" not in captured.err
    assert fragment in lines[0], lines[0]
    assert _snapshot(run) == before, "the run folder changed"
    return lines[0]


@pytest.mark.parametrize("name", list(BAD_CHECKPOINTS))
def test_bad_last_checkpoint_is_refused_in_one_line(name: str, one_epoch_run: Path, tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    spoil, fragment = BAD_CHECKPOINTS[name]
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    spoil(run / "checkpoints" / "last.ckpt", tmp_path)
    line = _refused_resume(capsys, ["train", "-d", str(tiny_data), "-o", str(run), "--resume", "--epochs", "2",
                                    "--no-progress"], run, fragment)
    assert "last.ckpt" in line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--lr", "0.5"], "train.lr was 0.003, now 0.5"),
    (["-s", "model.widths=[8,32]"], "model.widths"),
    (["-s", "transforms.roi_size=[32,32,32]"], "transforms.roi_size"),
    (["--seed", "9"], "train.seed"),
    (["--fold", "1"], "data.fold"),
])
def test_resume_refuses_settings_its_checkpoint_cannot_follow(extra: list[str], fragment: str, one_epoch_run: Path,
                                                              tiny_data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    _refused_resume(capsys, ["train", "-d", str(tiny_data), "-o", str(run), "--resume", "--no-progress", *extra],
                    run, fragment)


def test_resume_with_a_corrupt_metrics_log_is_refused(one_epoch_run: Path, tiny_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    (run / "logs" / "metrics.csv").write_bytes(b"epoch,step\n\xff\xfe,\x00\n")
    _refused_resume(capsys, ["train", "-d", str(tiny_data), "-o", str(run), "--resume", "--epochs", "2",
                             "--no-progress"], run, "metrics.csv")


def test_adamw_is_fused_on_the_cpu_and_matches_the_default_loop() -> None:
    """``factorseg train``'s AdamW: one fused kernel on the CPU, the update of PyTorch's default loop up to rounding,
    and a checkpoint's state resumes it fused."""
    from factorseg.training.module import adamw

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = adamw(nets[0].parameters(), lr=1e-2, weight_decay=1e-2)
    plain = torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    x = torch.randn(64, 16)
    for _ in range(20):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(*(net.parameters() for net in nets)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    again = adamw(nets[0].parameters(), lr=1.0, weight_decay=0.0)
    again.load_state_dict(fused.state_dict())
    assert again.param_groups[0]["fused"] is True and again.param_groups[0]["lr"] == 1e-2
