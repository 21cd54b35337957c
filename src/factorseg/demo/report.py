"""The demo's HTML report: figures (learning curve, label overlays) and a self-contained ``report.html``.

Figures are drawn with matplotlib's object API (no GUI backend, safe in headless runs) and written as PNG
files; the report embeds them as base64 data URIs so that ``report.html`` can be moved or mailed on its own.
Every number shown in a table comes from the same dictionary that ``summary.json`` is written from.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factorseg.errors import InputError
from factorseg.io import atomic_write

__all__ = [
    "LABEL_COLOURS",
    "OverlayCase",
    "ReportContent",
    "brain_box",
    "format_score",
    "plot_components",
    "plot_learning_curve",
    "plot_overlays",
    "read_metrics_csv",
    "tumour_slice",
    "write_report",
]

#: BraTS label value -> (name, colour) used in the overlays and their legend.
LABEL_COLOURS: dict[int, tuple[str, str]] = {
    1: ("necrotic core (1)", "#e41a1c"),
    2: ("edema (2)", "#4daf4a"),
    4: ("enhancing tumour (4)", "#ffd92f"),
}
#: Decimals shown per metric in the tables (``summary.json`` keeps full precision).
DECIMALS = {"dice": 3, "hd95": 2}


def format_score(value: float, metric: str) -> str:
    """A score as the report shows it: fixed decimals per metric, ``n/a`` for a missing value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{DECIMALS.get(metric, 3)}f}"


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning ``CSVLogger`` metrics as ``{column: [(epoch, value), ...]}``, skipping empty cells.

    The logger writes one sparse row per logging event; a value logged twice for an epoch (the final
    re-validation after training) keeps the last one.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: training metrics file not found")
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for column, text in row.items():
                if column in ("epoch", "step") or not text:
                    continue
                series.setdefault(column, {})[int(float(epoch))] = float(text)
    return {column: sorted(values.items()) for column, values in series.items()}


def _save_figure(fig: Any, out_png: Path) -> Path:
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)


def plot_learning_curve(metrics: Mapping[str, Sequence[tuple[int, float]]], regions: Sequence[str], out_png: Path) -> Path:
    """Two panels: training loss per epoch, and validation Dice (mean and per region) per validated epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    loss_ax, dice_ax = fig.subplots(1, 2)
    loss = metrics.get("train/loss_epoch", [])
    if loss:
        epochs, values = zip(*loss)
        loss_ax.plot([e + 1 for e in epochs], values, marker="o", color="#333333")
    loss_ax.set(title="training loss (Dice + BCE, deep supervision)", xlabel="epoch", ylabel="loss")
    styles = {"": ("mean of the regions", "#000000", "-")}
    palette = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
    styles.update({f"_{r}": (r, palette[i % len(palette)], "--") for i, r in enumerate(regions)})
    for suffix, (name, colour, line) in styles.items():
        points = metrics.get(f"val/dice{suffix}", [])
        if points:
            epochs, values = zip(*points)
            dice_ax.plot([e + 1 for e in epochs], values, marker="o", color=colour, linestyle=line, label=name)
    dice_ax.set(title="validation Dice (training run's own validation cases)", xlabel="epoch", ylabel="Dice",
                ylim=(0.0, 1.0))
    if dice_ax.get_legend_handles_labels()[0]:
        dice_ax.legend(loc="lower right", fontsize=8)
    last = max((e for points in metrics.values() for e, _ in points), default=0) + 1
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return _save_figure(fig, out_png)


def tumour_slice(label: np.ndarray) -> int:
    """Index along the last axis of the slice with the most tumour voxels (the middle slice if none)."""
    area = (np.asarray(label) > 0).reshape(-1, label.shape[-1]).sum(axis=0)
    return int(np.argmax(area)) if area.any() else label.shape[-1] // 2


@dataclass
class OverlayCase:
    """One row of the overlay figure: two scans and two label maps on the same 3D grid, plus its scores."""

    case_id: str
    title: str
    flair: np.ndarray
    t1ce: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    dice: dict[str, float]


def _label_rgba(label: np.ndarray) -> np.ndarray:
    """RGBA image of a 2D BraTS label slice (transparent background) in :data:`LABEL_COLOURS`."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        rgba[label == value] = to_rgba(colour, alpha=0.55)
    return rgba


def brain_box(scan: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """In-plane (first two axes) bounding box of the scan's nonzero voxels plus ``margin``, for zoomed views."""
    occupied = np.abs(np.asarray(scan)).reshape(scan.shape[0], scan.shape[1], -1).max(axis=-1) > 0
    if not occupied.any():
        return slice(None), slice(None)
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(occupied.any(axis=1 - axis))
        box.append(slice(max(0, int(hits[0]) - margin), min(scan.shape[axis], int(hits[-1]) + margin + 1)))
    return box[0], box[1]


def _grey(ax: Any, scan: np.ndarray) -> None:
    """Show a 2D scan slice in grey between the 1st and 99th percentile of its nonzero voxels."""
    inside = scan[scan > 0]
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    ax.imshow(scan.T, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), origin="lower")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlays(cases: Sequence[OverlayCase], out_png: Path) -> Path:
    """One row per case: FLAIR, T1ce, reference and prediction on the axial slice with the most tumour.

    All cases share one grid; views are cropped to the box around all their brains. Scans are shown in grey; labels are filled in the colours of
    :data:`LABEL_COLOURS` (legend at the bottom), and the reference's tumour outline is repeated in cyan on
    the prediction so that over- and under-segmentation stand out.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not cases:
        raise InputError("no cases to draw overlays for")
    for case in cases:
        if not (case.flair.shape == case.t1ce.shape == case.reference.shape == case.prediction.shape == cases[0].flair.shape):
            raise InputError(f"case {case.case_id}: scans and label maps must share one grid with the other cases")
    box = brain_box(sum(np.abs(case.flair) for case in cases))  # one box for all rows: panels of equal size
    fig = Figure(figsize=(10, 2.9 * len(cases) + 0.5), layout="constrained")
    axes = fig.subplots(len(cases), 4, squeeze=False)
    for row, case in zip(axes, cases):
        z = tumour_slice(case.reference)
        view = (*box, z)
        scores = ", ".join(f"{region} {value:.2f}" for region, value in case.dice.items())
        panels = [("FLAIR", case.flair, None), ("T1ce", case.t1ce, None),
                  ("reference", case.flair, case.reference), (f"prediction\nDice {scores}", case.flair, case.prediction)]
        for k, (ax, (name, scan, label)) in enumerate(zip(row, panels)):
            _grey(ax, scan[view])
            if label is not None:
                ax.imshow(_label_rgba(label[view].T), origin="lower", interpolation="nearest")
            if k == 3 and case.reference[view].any():
                ax.contour((case.reference[view] > 0).T.astype(np.float32), levels=[0.5], colors="cyan",
                           linewidths=1.0)
            ax.set_title(name, fontsize=9)
        row[0].set_ylabel(f"{case.title}\n{case.case_id}\naxial slice {z}", fontsize=9)
    handles = [Patch(color=colour, label=name) for name, colour in LABEL_COLOURS.values()]
    handles.append(Patch(facecolor="none", edgecolor="cyan", label="reference tumour outline"))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    return _save_figure(fig, out_png)


def plot_components(flair: np.ndarray, reference: np.ndarray, maps: np.ndarray, titles: Sequence[str],
                    out_png: Path) -> Path:
    """Component maps ``(K, *scan)`` of one block next to the reference, on axial and coronal cuts through the tumour.

    The first column is FLAIR with the reference labels; each further column is one map over FLAIR (inside
    the brain, i.e. the scan's nonzero voxels), colour from 0 to that map's maximum, with the reference
    tumour outlined in cyan. Rows: the axial slice with the most tumour and the coronal slice with the most.
    """
    from matplotlib.figure import Figure

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4 or maps.shape[1:] != flair.shape or reference.shape != flair.shape:
        raise InputError(f"component maps {maps.shape} must be (K, *scan) over the scan {flair.shape}")
    if len(titles) != maps.shape[0]:
        raise InputError(f"{len(titles)} titles given for {maps.shape[0]} component maps")
    brain = flair > 0
    x_box, y_box = brain_box(flair)
    z_box = brain_box(np.moveaxis(flair, 1, 2))[1]
    cuts = {  # (name, index into the volume, 2D slice of a volume)
        "axial": (x_box, y_box, tumour_slice(reference)),
        "coronal": (x_box, tumour_slice(np.moveaxis(reference, 1, 2)), z_box),
    }
    fig = Figure(figsize=(2.3 * (maps.shape[0] + 1) + 0.6, 2 * 2.5 + 0.3), layout="constrained")
    axes = fig.subplots(2, maps.shape[0] + 1, squeeze=False)
    for row, (cut, view) in zip(axes, cuts.items()):
        _grey(row[0], flair[view])
        row[0].imshow(_label_rgba(reference[view].T), origin="lower", interpolation="nearest")
        row[0].set_title("reference" if cut == "axial" else "", fontsize=9)
        row[0].set_ylabel(f"{cut} slice", fontsize=9)
        outline = (reference[view] > 0).T.astype(np.float32)
        for k, ax in enumerate(row[1:]):
            _grey(ax, flair[view])
            shown = np.ma.masked_where(~brain[view].T, maps[k][view].T)
            image = ax.imshow(shown, cmap="inferno", vmin=0.0, vmax=float(maps[k][brain].max()) or 1.0, alpha=0.85,
                              origin="lower")
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(titles[k] if cut == "axial" else "", fontsize=8)
            if cut == "coronal":
                fig.colorbar(image, ax=ax, orientation="horizontal", shrink=0.8, pad=0.02)
    return _save_figure(fig, out_png)


@dataclass
class ReportContent:
    """What the report shows. ``scores`` and ``per_case`` use ``summary.json``'s layout.

    Attributes:
        title: page title.
        intro_html: trusted HTML fragment ("what you are looking at"), written by the caller.
        regions: region names in table order (e.g. TC, WT, ET).
        region_help: one-line description per region (which label values it unites).
        scores: ``{region: {"dice": {"mean": .., "std": ..}, "hd95": {...}}}``.
        mean_dice: mean Dice over the regions (the headline number).
        per_case: ``{case: {"dice/TC": .., "hd95/TC": .., ...}}``.
        figures: ``(heading, png path, caption HTML)`` in page order.
        facts: ``(name, value)`` rows of the settings table (plain text, escaped).
    """

    title: str
    intro_html: str
    regions: list[str]
    region_help: dict[str, str]
    scores: dict[str, dict[str, dict[str, float]]]
    mean_dice: float
    per_case: dict[str, dict[str, float]]
    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child, #facts td { text-align: left; }
thead th { background: #f3f3f3; }
.headline { font-size: 1.3em; margin: 0.6em 0; }
.note { color: #555; font-size: 0.92em; }
figure { margin: 0.8em 0 1.6em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
code { background: #f5f5f5; padding: 0 0.25em; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
"""


def _cell(value: float, metric: str) -> str:
    return f"<td>{format_score(value, metric)}</td>"


def _pm(stats: Mapping[str, float], metric: str) -> str:
    return f"<td>{format_score(stats['mean'], metric)} ± {format_score(stats['std'], metric)}</td>"


def _scores_html(content: ReportContent) -> str:
    esc = html.escape
    rows = []
    for region in content.regions:
        stats = content.scores[region]
        rows.append(
            f"<tr><td><b>{esc(region)}</b> <span class='note'>{esc(content.region_help.get(region, ''))}</span></td>"
            f"{_pm(stats['dice'], 'dice')}{_pm(stats['hd95'], 'hd95')}</tr>"
        )
    summary = (
        "<table id='scores'><thead><tr><th>region</th><th>Dice ↑ (mean ± std)</th>"
        "<th>HD95 in mm ↓ (mean ± std)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    head = "".join(f"<th>Dice {esc(r)}</th>" for r in content.regions)
    head += "".join(f"<th>HD95 {esc(r)} (mm)</th>" for r in content.regions)
    case_rows = []
    for case, values in content.per_case.items():
        dice = [values[f"dice/{r}"] for r in content.regions]
        cells = "".join(_cell(v, "dice") for v in dice)
        cells += "".join(_cell(values[f"hd95/{r}"], "hd95") for r in content.regions)
        case_rows.append(f"<tr><td>{esc(case)}</td>{cells}{_cell(float(np.mean(dice)), 'dice')}</tr>")
    per_case = (
        f"<table id='per-case'><thead><tr><th>held-out case</th>{head}<th>mean Dice</th></tr></thead><tbody>"
        + "".join(case_rows) + "</tbody></table>"
    )
    return (
        f"<p class='headline'>Mean Dice over {esc(', '.join(content.regions))}: "
        f"<b id='mean-dice'>{format_score(content.mean_dice, 'dice')}</b></p>{summary}"
        "<p class='note'>Dice: overlap between prediction and reference, 1 = perfect. HD95: 95th percentile of "
        "the distances between the two surfaces, in mm (1 voxel = 1 mm here), 0 = perfect; a region missing in "
        "one mask but not the other scores the image diagonal. std is the sample standard deviation over the "
        f"held-out cases.</p><h3>Per held-out case</h3>{per_case}"
    )


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}' data-file='{html.escape(Path(path).name)}'>"


def write_report(path: str | Path, content: ReportContent) -> Path:
    """Write ``content`` as one self-contained HTML file (figures embedded), atomically."""
    esc = html.escape
    for region in content.regions:
        if region not in content.scores:
            raise InputError(f"report: no scores for region {region!r}")
    figures = "".join(
        f"<h2>{esc(heading)}</h2><figure>{_image_tag(png, heading)}<figcaption>{caption}</figcaption></figure>"
        for heading, png, caption in content.figures
    )
    facts = "".join(f"<tr><td>{esc(name)}</td><td>{esc(value)}</td></tr>" for name, value in content.facts)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(content.title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(content.title)}</h1>"
        f"<h2>What you are looking at</h2>{content.intro_html}"
        f"<h2>Scores on the held-out cases</h2>{_scores_html(content)}{figures}"
        f"<h2>Settings and timings</h2><table id='facts'><tbody>{facts}</tbody></table>"
        "</body></html>\n"
    )
    return atomic_write(Path(path), page.encode("utf-8"), overwrite=True)
