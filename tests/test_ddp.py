"""Multi-process training: two DDP processes on CPU (gloo) launched by torchrun, as on a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from factorseg.data.synthetic import write_brats_dataset


def test_two_process_ddp_training_under_torchrun(tmp_path: Path) -> None:
    write_brats_dataset(tmp_path / "data", 4, seed=3, shape=(32, 32, 32))
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "factorseg.cli", "train", "-d", str(tmp_path / "data"), "-o", str(out), "--recipe", "demo",
        "--accelerator", "cpu", "--devices", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1",
        "--val-interval", "1", "--num-workers", "0", "--folds", "4", "--no-progress",
        "-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.deep_supervision=false",
        "-s", "transforms.roi_size=[32,32,32]", "-s", "transforms.num_samples=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["global_steps"] == 2  # each rank ran 2 steps on its own slice of the epoch
    assert (out / "model_last.pt").exists() and (out / "checkpoints" / "last.ckpt").exists()
