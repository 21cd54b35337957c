"""benchmarks/recipe_step.py builds a recipe's model as training does and times real steps of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.recipe_step import recipe_model, step_runner

ROOT = Path(__file__).resolve().parents[1]
SMALL = "transforms.roi_size=[16,16,16];train.batch_size=1;transforms.num_samples=1"


def test_recipe_model_takes_overrides_and_trains() -> None:
    model, cfg = recipe_model(f"hippocampus:model.widths=[8,16,32,64];{SMALL}", 1, 3)
    assert cfg["model"]["widths"] == [8, 16, 32, 64] and cfg["transforms"]["roi_size"] == [16, 16, 16]
    assert model.pos_embed.weight.shape[2:] == (2, 2, 2)  # sized for the crop, as training sizes it
    before = [p.detach().clone() for p in model.parameters()]
    step_runner(model, cfg, 1, 3)()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_command_writes_times_and_a_table(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.recipe_step", "--recipes", f"hippocampus:{SMALL}",
           f"hippocampus_segresnet:{SMALL}", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "recipe_step.json").read_text())
    assert set(report["results"]) == {f"hippocampus:{SMALL}", f"hippocampus_segresnet:{SMALL}"}
    assert all(r["times"][0] > 0 for r in report["results"].values())
    assert "| recipe | min | median |" in report["table"]
