"""NMF component extraction: exact factors on known rank-1 inputs, unchanged outputs, overlap scores, writers."""

import json
import math

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from factorseg.models.layers.mixer import NMFMixer
from factorseg.models.layers.nmf import NMFConfig
from factorseg.errors import InputError
from factorseg.explain import (
    component_label_overlap,
    explain,
    list_blocks,
    run_explain,
    save_montage,
    upsample_maps,
    write_maps_nifti,
)
from factorseg.models.layers.windows import WindowMatricize
from factorseg.models import create

SMALL = dict(widths=(8, 16), head_dim=4, window_size=4, dropout=0.1, mlp_ratio=1.0)


def identity_mixer(channels: int, dims: int, head_dim: int, window, shifts, **nmf) -> nn.Module:
    """An NMF mixer whose input projection is the identity, so relu(in_proj(x)) = x for x >= 0."""
    mixer = NMFMixer(channels, dims, head_dim=head_dim, window_size=window, shifts=shifts, nmf=NMFConfig(rank=1, **nmf))
    with torch.no_grad():
        eye = torch.eye(channels).reshape(channels, channels, *([1] * dims))
        mixer.in_proj.weight.copy_(eye)
    return nn.Sequential(mixer)


def blobs(heads: int, spatial: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """One nonnegative pattern per head: a Gaussian blob at a distinct place plus a little texture."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij")
    patterns, centres = [], []
    for h in range(heads):
        centre = tuple(int((h + 1) * s / (heads + 1)) for s in spatial)
        dist = sum((g - c) ** 2 for g, c in zip(grids, centre))
        patterns.append(torch.exp(-dist / 4.0) + 0.05 * torch.rand(spatial, generator=gen, dtype=torch.float64))
        centres.append(centre)
    return torch.stack(patterns), centres


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("spatial", [(9, 14), (7, 10, 6)])
def test_local_windows_rank_one_pattern_is_recovered_in_place(spatial: tuple[int, ...]) -> None:
    """Each window is loading_w (x) pattern, the loading differing per window: the map is the pattern."""
    gen = torch.Generator().manual_seed(0)
    heads, head_dim, window = 2, 3, 4
    patterns, centres = blobs(heads, spatial, gen)
    grid = [-(-s // window) for s in spatial]
    # A unit-norm loading per head and window, scaled to norm 2: the expected map is exactly 2 * pattern.
    loadings = torch.rand(heads, *grid, head_dim, generator=gen, dtype=torch.float64) + 0.1
    loadings = loadings / loadings.norm(dim=-1, keepdim=True)
    per_voxel = loadings
    for d in range(len(spatial)):  # expand window loadings to voxels
        per_voxel = per_voxel.repeat_interleave(window, dim=1 + d).narrow(1 + d, 0, spatial[d])
    x = 2.0 * per_voxel.movedim(-1, 1) * patterns[:, None]  # (heads, head_dim, *spatial)
    x = x.reshape(1, heads * head_dim, *spatial)
    model = identity_mixer(heads * head_dim, len(spatial), head_dim, window, (0,)).double()
    _, found = explain(model, x)
    comp = found["0"]
    assert comp.maps.shape == (1, heads, *spatial)
    assert comp.meta["heads"] == heads and comp.meta["rank"] == 1 and comp.meta["stride"] == [1] * len(spatial)
    torch.testing.assert_close(comp.maps[0].double(), 2.0 * patterns, rtol=1e-4, atol=1e-5)
    for h in range(heads):
        assert cosine(comp.maps[0, h].double(), patterns[h]) > 0.999
        peak = np.unravel_index(int(comp.maps[0, h].argmax()), spatial)
        assert tuple(int(p) for p in peak) == centres[h]
    # Loadings are the per-window channel directions: (1, S, H, W, head_dim, 1) vs (H, *grid, head_dim).
    torch.testing.assert_close(
        comp.loadings[0, 0, :, :, :, 0].double(), loadings.reshape(heads, -1, head_dim), rtol=1e-4, atol=1e-5
    )
    assert float(comp.window_error.max()) < 1e-4


@pytest.mark.parametrize("variant,window,shifts", [("global", None, (0,)), ("swin", 4, (0, 2))])
@pytest.mark.parametrize("spatial", [(10, 13), (6, 9, 7)])
def test_global_and_shifted_windows_recover_rank_one_pattern(variant, window, shifts, spatial) -> None:
    gen = torch.Generator().manual_seed(1)
    heads, head_dim = 3, 4
    patterns, centres = blobs(heads, spatial, gen)
    loading = torch.rand(heads, head_dim, generator=gen, dtype=torch.float64) + 0.1
    x = (loading[(...,) + (None,) * len(spatial)] * patterns[:, None]).reshape(1, heads * head_dim, *spatial)
    model = identity_mixer(heads * head_dim, len(spatial), head_dim, window, shifts).double()
    _, found = explain(model, x)
    comp = found["0"]
    assert comp.loadings.shape[1] == (2 if variant == "swin" else 1)
    expected = loading.norm(dim=-1)[(...,) + (None,) * len(spatial)] * patterns
    torch.testing.assert_close(comp.maps[0].double(), expected, rtol=1e-4, atol=1e-5)
    for h in range(heads):
        assert cosine(comp.maps[0, h].double(), patterns[h]) > 0.999
        assert tuple(int(p) for p in np.unravel_index(int(comp.maps[0, h].argmax()), spatial)) == centres[h]


def test_window_error_measures_the_rank_one_misfit() -> None:
    """On a rank-2 window the error is the relative residual of the best rank-1 fit (SVD, Eckart-Young)."""
    torch.manual_seed(0)
    x = torch.rand(1, 4, 4, 4, dtype=torch.float64)
    model = identity_mixer(4, 2, 4, None, (0,), num_iters=200).double()
    _, found = explain(model, x)
    s = torch.linalg.svdvals(x.reshape(4, 16))
    expected = float(s[1:].norm() / s.norm())
    assert float(found["0"].window_error) == pytest.approx(expected, rel=1e-3)


def test_list_blocks_names_blocks_by_module_path() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, spatial_dims=2,
                   encoder_depths=(1, 2), **SMALL)
    assert list_blocks(model) == ["encoder.0.0", "encoder.1.0", "encoder.1.1", "decoder.0.0"]
    with pytest.raises(InputError, match="unknown block.*encoder.0.0"):
        explain(model, torch.zeros(1, 1, 8, 8), blocks=["encoder.9.0"])
    with pytest.raises(InputError, match="no NMF blocks"):
        explain(create("basicunet", in_channels=1, out_channels=2, spatial_dims=2), torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("name", ["swin_factorizer", "local_factorizer", "global_factorizer"])
@pytest.mark.parametrize("size", [(10, 18), (6, 10, 14)])
def test_collecting_leaves_the_output_bitwise_unchanged(name: str, size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create(name, in_channels=2, out_channels=3, spatial_dims=len(size), rank=2,
                   deep_supervision=True, ds_heads=1, **SMALL)
    x = torch.randn(1, 2, *size)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    model.train()
    output, found = explain(model, x)
    assert model.training  # restored
    assert torch.equal(output, reference)
    assert list(found) == list_blocks(model)
    bottleneck = found["encoder.1.0"]
    half = tuple(s // 2 for s in size)  # odd sizes: the windows are padded and cropped
    assert bottleneck.maps.shape == (1, (16 // 4) * 2, *half)
    assert bottleneck.meta["stride"] == [2] * len(size) and bottleneck.meta["spatial"] == list(half)
    assert bottleneck.window_error.shape == bottleneck.loadings.shape[:4]
    assert bool((bottleneck.maps >= 0).all()) and bool(torch.isfinite(bottleneck.maps).all())
    # The hooks are gone afterwards: no instance-level override is left on any NMF layer.
    assert all("decompose" not in vars(m.nmf) for m in model.modules() if isinstance(m, NMFMixer))


@pytest.mark.parametrize("init", ["fixed", "random"])
def test_captured_factors_are_the_forward_pass_factors(init: str) -> None:
    """loadings @ spatial_factors^T, put back through the mixer's own inverse and out-projection, is its output."""
    torch.manual_seed(0)
    model = create("swin_factorizer", in_channels=1, out_channels=2, spatial_dims=3, init=init, rank=2,
                   **{**SMALL, "dropout": 0.0})
    mixer = model.encoder[1][0].mixer
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        # The block gives the mixer its input channels-last and has it add that input to its output.
        assert kwargs.get("channels_last") and kwargs.get("add_input")
        seen.update(x=args[0].movedim(-1, 1), out=(out - args[0]).movedim(-1, 1))

    handle = mixer.register_forward_hook(hook, with_kwargs=True)
    x = torch.randn(1, 1, 10, 6, 14)
    torch.manual_seed(1)
    with torch.no_grad():
        model.eval()
        reference = model(x)
    torch.manual_seed(1)
    output, found = explain(model, x, blocks=["encoder.1.0"])
    handle.remove()
    assert torch.equal(output, reference)
    comp = found["encoder.1.0"]
    recon = comp.loadings @ comp.spatial_factors.transpose(-1, -2)
    _, layout = mixer.matrices(seen["x"])
    with torch.no_grad():
        rebuilt = mixer.out_proj(mixer.matricize.inverse(recon, layout))
    torch.testing.assert_close(rebuilt, seen["out"], rtol=1e-4, atol=1e-5)
    # Map channel h * rank + r is head h's component r, reassembled on its own.
    for r in range(2):
        alone = WindowMatricize(3, 1, layout.window, layout.shifts).inverse(
            comp.spatial_factors[..., r : r + 1].transpose(-1, -2), layout
        )
        torch.testing.assert_close(comp.maps[:, r::2], alone)


def test_overlap_scores_against_known_answers() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    label = np.zeros((30, 30, 20), dtype=np.int64)
    label[5:15, 5:15, 5:10] = 1
    label[18:25, 10:20, 8:14] = 3
    exact = (label == 1).astype(np.float32)
    noise = rng.random(label.shape).astype(np.float32)
    coarse = np.round(noise * 5) / 5  # heavy ties
    rows = component_label_overlap(np.stack([exact, 1 - exact, noise, coarse]), label,
                                   {"one": 1, "core": [1, 3], "absent": [7]}, names=["a", "b", "c", "d"])
    table = {(r["name"], r["label"]): r for r in rows}
    assert table["a", "one"]["auc"] == 1.0 and table["a", "one"]["best_dice"] == 1.0
    assert table["a", "one"]["voxels"] == 500 and table["a", "one"]["threshold"] == 1.0
    assert table["b", "one"]["auc"] == 0.0
    assert abs(table["c", "one"]["auc"] - 0.5) < 0.05
    for name, scores in [("c", noise), ("d", coarse)]:
        reference = roc_auc_score(np.isin(label, [1, 3]).ravel(), scores.ravel())
        assert table[name, "core"]["auc"] == pytest.approx(reference)
    # Best Dice: brute force over every distinct threshold of the tied map.
    truth = np.isin(label, [1, 3])
    brute = max(2 * (truth & (coarse >= t)).sum() / (truth.sum() + (coarse >= t).sum()) for t in np.unique(coarse))
    assert table["d", "core"]["best_dice"] == pytest.approx(brute)
    assert table["a", "absent"]["voxels"] == 0 and math.isnan(table["a", "absent"]["auc"])
    # A mask restricts the voxels scored; default label values are the nonzero ones.
    mask = np.zeros(label.shape, dtype=bool)
    mask[:16] = True
    masked = component_label_overlap(noise[None], label, mask=mask)
    assert [r["label"] for r in masked] == ["1", "3"] and masked[1]["voxels"] == 0
    assert masked[0]["auc"] == pytest.approx(roc_auc_score(label[mask] == 1, noise[mask]))
    with pytest.raises(InputError, match="does not match"):
        component_label_overlap(noise[None], label[:-1])


def test_upsample_maps_keeps_block_voxels_in_place() -> None:
    maps = torch.zeros(1, 1, 3, 4, 2)
    maps[0, 0, 1, 2, 1] = 1.0
    up = upsample_maps(maps, (6, 8, 4))
    assert up.shape == (1, 1, 6, 8, 4)
    peak = np.unravel_index(int(up.argmax()), (6, 8, 4))
    assert peak[0] in (2, 3) and peak[1] in (4, 5) and peak[2] in (2, 3)
    assert upsample_maps(maps, (3, 4, 2)) is maps


def test_writers_produce_files_with_the_right_shape_and_affine(tmp_path) -> None:
    affine = np.diag([0.8, 1.2, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    maps = np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32)
    path = write_maps_nifti(maps, affine, tmp_path / "maps.nii.gz")
    img = nib.load(path)
    assert img.shape == (5, 6, 7, 3)
    np.testing.assert_allclose(img.affine, affine)
    # 16-bit integers with a scale factor: every value within 5e-4 of its component's maximum
    assert img.get_data_dtype() == np.uint16
    back = np.moveaxis(img.get_fdata(dtype=np.float32), -1, 0)
    for k in range(3):
        assert np.abs(back[k] - maps[k]).max() <= 5e-4 * maps[k].max() + 1e-7
    exact = nib.load(write_maps_nifti(maps, affine, tmp_path / "exact.nii.gz", dtype="float32"))
    np.testing.assert_array_equal(np.asarray(exact.dataobj)[..., 1], maps[1])
    assert nib.load(write_maps_nifti(maps[:, :, :, 0], affine, tmp_path / "flat.nii")).shape == (5, 6, 1, 3)
    with pytest.raises(InputError, match="already exists"):
        write_maps_nifti(maps, affine, path)
    scan = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    outline = (scan > 0.5).astype(np.uint8)
    png = save_montage(scan, maps, tmp_path / "montage.png", slices=2, titles=["x/head 0/component 0", "b", "c"],
                       outline=outline)
    picture = matplotlib.image.imread(png)
    assert picture.ndim == 3 and picture.shape[0] > picture.shape[1]  # 3 rows of 2 slices
    with pytest.raises(InputError, match="montage needs"):
        save_montage(scan[:4], maps, tmp_path / "bad.png")
    with pytest.raises(InputError, match="outline of shape"):
        save_montage(scan, maps, tmp_path / "bad.png", outline=outline[:4])


def test_run_explain_writes_maps_on_the_scan_grid(tmp_path) -> None:
    torch.manual_seed(0)
    model = create("local_factorizer", in_channels=2, out_channels=2, spatial_dims=3, **SMALL)
    image = torch.randn(2, 7, 9, 8)  # not a multiple of the stride: padded, then cropped
    scan = np.abs(np.random.default_rng(0).normal(size=(14, 18, 16))).astype(np.float32)
    label = np.zeros(scan.shape, dtype=np.uint8)
    label[3:8, 4:10, 5:9] = 1
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    summary = run_explain(model, image, scan, affine, tmp_path / "out", blocks=["encoder.1.0", "decoder.0.0"],
                          label=label, per_component=True, montage_components=3)
    out = tmp_path / "out"
    index = json.loads((out / "components.json").read_text())
    assert index == summary and list(index["blocks"]) == ["encoder.1.0", "decoder.0.0"]
    bottleneck = index["blocks"]["encoder.1.0"]
    assert bottleneck["heads"] == 4 and bottleneck["stride"] == [2, 2, 2] and len(bottleneck["components"]) == 4
    assert bottleneck["components"][2]["head"] == 2
    shown = bottleneck["montage_components"]
    assert len(shown) == 3  # the best AUC first
    best_auc = {r["component"]: r["auc"] for r in index["overlap"] if r["block"] == "encoder.1.0"}
    assert [best_auc[k] for k in shown] == sorted((best_auc[k] for k in shown), reverse=True)
    assert min(best_auc[k] for k in shown) >= max(v for k, v in best_auc.items() if k not in shown)
    assert bottleneck["best_per_label"]["1"]["component"] == shown[0]
    img = nib.load(out / bottleneck["files"]["nifti"])
    assert img.shape == (*scan.shape, 4)
    np.testing.assert_allclose(img.affine, affine)
    assert nib.load(out / bottleneck["components"][0]["nifti"]).shape == scan.shape
    assert (out / bottleneck["files"]["montage"]).stat().st_size > 0
    lines = (out / "overlap.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 + 2  # header, 4 bottleneck + 2 decoder components x 1 label
    assert all(0.0 <= row["auc"] <= 1.0 for row in index["overlap"])
    with pytest.raises(InputError, match="already exists"):
        run_explain(model, image, scan, affine, out, blocks=["encoder.1.0"])
    with pytest.raises(InputError, match="not on the scan grid"):
        run_explain(model, image, scan, affine, out, label=label[:-1])


def test_run_explain_on_a_real_scan(tmp_path, shared_data) -> None:
    """A real hippocampus MRI (odd sizes, 1 mm): maps land on the scan's grid and affine."""
    from factorseg.io import read_image

    case = sorted((shared_data / "hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    vol = read_image(case)
    label = read_image(shared_data / "hippocampus" / "labelsTr" / case.name).array
    image = torch.from_numpy((vol.array - vol.array.mean()) / (vol.array.std() + 1e-8))[None]
    torch.manual_seed(0)
    model = create("swin_factorizer", in_channels=1, out_channels=3, spatial_dims=3, **SMALL)
    summary = run_explain(model, image, vol.array, vol.affine, tmp_path, blocks=["encoder.0.0"], label=label)
    img = nib.load(tmp_path / summary["blocks"]["encoder.0.0"]["files"]["nifti"])
    assert img.shape == (*vol.array.shape, 2)
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-5)
    assert {row["label"] for row in summary["overlap"]} == {"1", "2"}


def test_run_explain_leaves_nothing_it_created_when_it_fails(tmp_path) -> None:
    """Refusals and failures part-way (here: the second block's maps cannot be mapped to the scan) remove the
    files and folders this call created, and keep what was there before."""
    torch.manual_seed(0)
    model = create("local_factorizer", in_channels=1, out_channels=2, spatial_dims=3, **SMALL)
    image = torch.randn(1, 8, 8, 8)
    scan = np.ones((8, 8, 8), np.float32)
    affine = np.eye(4)
    calls = []

    def fails_second_time(maps: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 2:
            raise InputError("cannot map these maps")
        return maps

    nested = tmp_path / "a" / "b"
    with pytest.raises(InputError, match="cannot map"):
        run_explain(model, image, scan, affine, nested, blocks=["encoder.0.0", "encoder.1.0"],
                    to_scan_grid=fails_second_time, per_component=True)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="unknown block"):
        run_explain(model, image, scan, affine, nested, blocks=["nope"])
    assert list(tmp_path.iterdir()) == []
    # an existing folder keeps its own files; a refusal for existing outputs happens before any writing
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    calls.clear()
    with pytest.raises(InputError, match="cannot map"):
        run_explain(model, image, scan, affine, out, blocks=["encoder.0.0", "encoder.1.0"],
                    to_scan_grid=fails_second_time)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    run_explain(model, image, scan, affine, out, blocks=["encoder.0.0"])
    written = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match=r"encoder_0_0_components.nii.gz: already exists \(and 2 more\)"):
        run_explain(model, image, scan, affine, out, blocks=["encoder.0.0"])
    assert sorted(p.name for p in out.iterdir()) == written
