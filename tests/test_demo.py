"""``factorseg demo`` end to end in a tiny setting, and the report helpers against hand-made cases."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import socket
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from factorseg.demo import pipeline as demo
from factorseg.demo import report
from factorseg.errors import InputError

# The demo recipe with a narrower model and two training steps (the block shown, decoder.1.0, still exists).
TINY = [
    "train.epochs=1", "train.steps_per_epoch=2", "train.val_interval=1", "model.widths=[8,16,32]",
    "model.head_dim=4",
]


class _Tables(HTMLParser):
    """Cell texts of every ``<table id=...>``, the text of elements with an id, and the ``<img>`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._id_stack: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        if "id" in a and tag != "table":
            self._id_stack.append((tag, a["id"], []))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._id_stack and self._id_stack[-1][0] == tag:
            _, key, text = self._id_stack.pop()
            self.ids[key] = "".join(text).strip()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, _, text in self._id_stack:
            text.append(data)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def _close(shown: float, value: float, decimals: int) -> bool:
    """``shown`` is ``value`` rounded to ``decimals`` places."""
    return abs(shown - value) <= 0.5 * 10**-decimals + 1e-12


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail any attempt to open an internet connection (local sockets, e.g. of worker processes, are fine)."""
    attempts: list[Any] = []
    original = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network access attempted: {address}")
        original(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_tiny_demo_writes_a_report_that_matches_its_summary(tmp_path: Path, no_network: list[Any]) -> None:
    torch.set_num_threads(1)
    printed = io.StringIO()
    out = tmp_path / "demo"
    result = demo.run_demo(out, cases=3, held_out=3, shape=32, seed=1, progress=False, overrides=TINY,
                           console=Console(file=printed, width=120))
    assert no_network == []

    # Files: report, summary, figures, and the outputs of the normal pipeline steps.
    assert result.report == out / "report.html" and result.summary_json == out / "summary.json"
    figures = {name: out / "figures" / name for name in ("learning_curve.png", "overlays.png", "components.png")}
    for path in figures.values():
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    for path in ("run/model_best.pt", "run/logs/metrics.csv", "scores/per_case.csv", "explain/components.json"):
        assert (out / path).is_file(), path
    held_out = sorted(p.name for p in (out / "data" / "held_out" / "images").iterdir())
    assert sorted(p.name[: -len(".nii.gz")] for p in (out / "predictions").iterdir()) == held_out
    assert not any((out / "data" / "held_out" / "images" / c / f"{c}_seg.nii.gz").exists() for c in held_out)

    # Held-out cases were never training or validation cases of the run.
    splits = json.loads((out / "run" / "splits.json").read_text())
    seen = {c for fold in splits for c in fold["train"] + fold["val"]}
    assert len(seen) == 3 and not seen & set(held_out)

    # The report embeds exactly the figure files.
    page = _Tables()
    page.feed(result.report.read_text(encoding="utf-8"))
    embedded = {img["data-file"]: img["src"] for img in page.images}
    assert set(embedded) == set(figures)
    for name, src in embedded.items():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == figures[name].read_bytes()

    # Every score in the report equals the one in summary.json (up to the shown decimals) ...
    summary = json.loads(result.summary_json.read_text())
    regions = summary["regions"]
    assert regions == ["TC", "WT", "ET"]
    rows = {row[0].split()[0]: row for row in page.tables["scores"][1:]}
    assert set(rows) == set(regions)
    for region in regions:
        for cell, metric, decimals in ((rows[region][1], "dice", 3), (rows[region][2], "hd95", 2)):
            mean, std = _numbers(cell)
            stats = summary["scores"][region][metric]
            assert _close(mean, stats["mean"], decimals) and _close(std, stats["std"], decimals), (region, metric)
    assert _close(_numbers(page.ids["mean-dice"])[0], summary["mean_dice"], 3)
    per_case = {row[0]: row[1:] for row in page.tables["per-case"][1:]}
    assert sorted(per_case) == held_out == sorted(summary["per_case"])
    for case, cells in per_case.items():
        values = summary["per_case"][case]
        expected = [values[f"dice/{r}"] for r in regions] + [values[f"hd95/{r}"] for r in regions]
        expected.append(float(np.mean([values[f"dice/{r}"] for r in regions])))
        shown = [_numbers(c)[0] for c in cells]
        for s, e, d in zip(shown, expected, [3, 3, 3, 2, 2, 2, 3], strict=True):
            assert _close(s, e, d), (case, shown, expected)

    # ... which are those of the normal evaluation output, and those the result and the printout carry.
    evaluation = json.loads((out / "scores" / "summary.json").read_text())
    for region in regions:
        for metric in ("dice", "hd95"):
            assert summary["scores"][region][metric]["mean"] == evaluation["metrics"][f"{metric}/{region}"]["mean"]
    assert math.isclose(summary["mean_dice"], np.mean([summary["scores"][r]["dice"]["mean"] for r in regions]))
    assert result.mean_dice == summary["mean_dice"]
    assert result.dice == {r: summary["scores"][r]["dice"]["mean"] for r in regions}
    text = printed.getvalue()
    assert f"{summary['mean_dice']:.3f}" in text and "report.html" in text
    assert summary["training"]["steps_run"] == result.steps == 2 and not summary["training"]["stopped_by_time_limit"]
    assert summary["explained"]["block"] == demo.DEFAULT_BLOCK

    # A second run into the same folder is refused unless asked to overwrite.
    with pytest.raises(InputError, match="--overwrite"):
        demo.run_demo(out, cases=3, held_out=3, shape=32, progress=False, overrides=TINY,
                      console=Console(file=io.StringIO()))


def test_demo_rejects_bad_settings(tmp_path: Path) -> None:
    quiet = Console(file=io.StringIO())
    with pytest.raises(InputError, match="at least 2 training cases"):
        demo.run_demo(tmp_path / "a", cases=1, progress=False, console=quiet)
    with pytest.raises(InputError, match="at least 1 held-out"):
        demo.run_demo(tmp_path / "b", held_out=0, progress=False, console=quiet)
    with pytest.raises(InputError, match="--minutes must be positive"):
        demo.run_demo(tmp_path / "c", minutes=0, progress=False, console=quiet)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        demo.run_demo(tmp_path / "file", progress=False, console=quiet)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_plan_epochs_from_measured_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_measure_seconds", lambda cfg: (2.0, 0.5))
    cfg = {
        "train": {"steps_per_epoch": 10, "val_interval": 2},
        "inference": {"overlap": 0.25, "sw_batch_size": 1},
        "transforms": {"roi_size": [32, 32, 32]},
    }
    # 48 voxels, windows of 32 every 24 -> 2 per axis, 8 in all; 2 cases x 8 x 0.5 s = 8 s per validation.
    # One epoch: 1.15 * (10 x 2 s + 8 s / 2) = 27.6 s, so 1 minute holds 2 epochs and 10 minutes 21.
    assert demo.plan_epochs(cfg, 1.0, n_val=2, shape=48) == 2
    assert demo.plan_epochs(cfg, 10.0, n_val=2, shape=48) == 21
    assert demo.plan_epochs(cfg, 0.01, n_val=2, shape=48) == 1
    with pytest.raises(InputError, match="positive"):
        demo.plan_epochs(cfg, 0.0, n_val=2, shape=48)


def test_read_metrics_csv_keeps_the_last_value_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train/loss_epoch,train/loss_step,val/dice\n"
        "0,4,,0.9,\n"
        "0,9,0.8,,\n"
        "1,19,,,0.5\n"
        "1,19,,,0.6\n"
        "1,19,0.7,,\n"
    )
    assert report.read_metrics_csv(path) == {
        "train/loss_step": [(0, 0.9)],
        "train/loss_epoch": [(0, 0.8), (1, 0.7)],
        "val/dice": [(1, 0.6)],
    }
    with pytest.raises(InputError, match="not found"):
        report.read_metrics_csv(tmp_path / "missing.csv")


def test_tumour_slice_and_score_format() -> None:
    label = np.zeros((4, 4, 5), dtype=np.uint8)
    label[1, 1, 1] = 2
    label[:2, :2, 3] = 4
    assert report.tumour_slice(label) == 3
    assert report.tumour_slice(np.zeros((4, 4, 5))) == 2
    assert report.format_score(0.87654, "dice") == "0.877"
    assert report.format_score(3.14159, "hd95") == "3.14"
    assert report.format_score(math.nan, "dice") == "n/a"
