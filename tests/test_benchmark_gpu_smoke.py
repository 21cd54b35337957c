"""The GPU benchmark script runs end to end in its CPU smoke mode (CI has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_mode_on_cpu(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--smoke", "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "gpu.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) == {"swin_factorizer (brats)", "swin_factorizer (isles22)", "segresnet", "swinunetr_24", "dynunet"}
    for name in ("swin_factorizer (brats)", "swin_factorizer (isles22)", "segresnet", "dynunet"):
        assert rows[name]["forward_s"]["median"] > 0 and rows[name]["train_s"]["median"] > 0
        assert rows[name]["train_peak_mib"] > 0
    assert "train_s" in rows["swinunetr_24"] or "error" in rows["swinunetr_24"]  # cannot train at 32^3
    assert "| swin_factorizer (brats) | 1 | fp32 |" in report["table"]
