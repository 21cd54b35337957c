"""Dataset layout detection and loading on tiny fake datasets, prediction inputs, and CV splits."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from factorseg.data.formats import cases_from_paths, detect_format, load_dataset
from factorseg.data.labels import LABEL_SPECS
from factorseg.data.splits import load_or_create_splits, make_splits
from factorseg.errors import InputError


def write_nii(path: Path, shape: tuple[int, ...] = (8, 8, 8), value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), str(path))
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_msd(root: Path, task01: bool = False) -> Path:
    labels = (
        {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
        if task01
        else {"0": "background", "1": "Anterior", "2": "Posterior"}
    )
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} if task01 else {"0": "MRI"}
    shape = (8, 8, 8, 4) if task01 else (8, 8, 8)
    for cid in ("case_001", "case_002"):
        write_nii(root / "imagesTr" / f"{cid}.nii.gz", shape)
        write_nii(root / "labelsTr" / f"{cid}.nii.gz")
    write_nii(root / "imagesTs" / "case_003.nii.gz", shape)
    write_json(
        root / "dataset.json",
        {
            "modality": modality,
            "labels": labels,
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("case_001", "case_002")
            ],
            "test": ["./imagesTs/case_003.nii.gz"],
        },
    )
    return root


def make_nnunet(root: Path) -> Path:
    for cid in ("prostate_00", "prostate_01"):
        for ch in range(2):
            write_nii(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        write_nii(root / "labelsTr" / f"{cid}.nii.gz")
    for ch in range(2):
        write_nii(root / "imagesTs" / f"prostate_09_{ch:04d}.nii.gz")
    write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "T2", "1": "ADC"},
            "labels": {"background": 0, "PZ": 1, "TZ": 2},
            "numTraining": 2,
            "file_ending": ".nii.gz",
        },
    )
    return root


def make_brats2021(root: Path) -> Path:
    for cid, labelled in (("BraTS2021_00000", True), ("BraTS2021_00002", True), ("BraTS2021_01001", False)):
        for m in ("flair", "t1", "t1ce", "t2") + (("seg",) if labelled else ()):
            write_nii(root / cid / f"{cid}_{m}.nii.gz")
    return root


def make_brats2023(root: Path) -> Path:
    for cid in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"):
        for m in ("t1n", "t1c", "t2w", "t2f", "seg"):
            write_nii(root / cid / f"{cid}-{m}.nii.gz")
    return root


def make_brats2015(root: Path) -> Path:
    for cid in ("brats_2013_pat0001_1", "brats_2013_pat0002_1"):
        for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "brainmask", "OTMultiClass"):
            write_nii(root / cid / f"{name}.nii.gz")
    (root / "splits_in_deepmedic.txt").write_text("brats_2013_pat0001_1 train\n")
    return root


def make_isles_bids(root: Path) -> Path:
    for sub in ("sub-strokecase0001", "sub-strokecase0002"):
        ses = root / "rawdata" / sub / "ses-0001"
        write_nii(ses / "dwi" / f"{sub}_ses-0001_dwi.nii.gz")
        write_nii(ses / "dwi" / f"{sub}_ses-0001_adc.nii.gz")
        write_nii(ses / "anat" / f"{sub}_ses-0001_FLAIR.nii.gz", (16, 16, 4))
        write_nii(root / "derivatives" / sub / "ses-0001" / f"{sub}_ses-0001_msk.nii.gz")
    return root


def make_isles_flat(root: Path) -> Path:
    sub = "sub-strokecase0009"
    for m in ("dwi", "adc", "flair", "msk"):
        write_nii(root / sub / f"{sub}_ses-0001_{m}.nii.gz", (16, 16, 4) if m == "flair" else (8, 8, 8))
    return root


def make_datalist(root: Path) -> Path:
    for cid in ("a", "b", "c"):
        for m in ("t1", "t2"):
            write_nii(root / "img" / f"{cid}_{m}.nii.gz")
    write_nii(root / "seg" / "a.nii.gz")
    write_nii(root / "seg" / "b.nii.gz")
    write_json(
        root / "datalist.json",
        {
            "channels": ["t1", "t2"],
            "labels": {"0": "background", "3": "lesion"},
            "training": [
                {"id": "a", "image": ["img/a_t1.nii.gz", "img/a_t2.nii.gz"], "label": "seg/a.nii.gz"},
                {"image": ["img/b_t1.nii.gz", "img/b_t2.nii.gz"], "label": "seg/b.nii.gz"},
            ],
            "test": [["img/c_t1.nii.gz", "img/c_t2.nii.gz"]],
        },
    )
    return root


def test_msd(tmp_path: Path) -> None:
    root = make_msd(tmp_path / "Task04")
    assert detect_format(root) == "msd"
    assert detect_format(root / "dataset.json") == "msd"
    info = load_dataset(root)
    assert info.format == "msd" and info.channels == ("MRI",)
    assert (info.labels.mode, info.labels.values) == ("classes", (0, 1, 2))
    assert info.case_ids == ["case_001", "case_002"]
    assert info.cases[0]["image"] == [str((root / "imagesTr" / "case_001.nii.gz").resolve())]
    assert info.cases[0]["label"] == str((root / "labelsTr" / "case_001.nii.gz").resolve())
    assert [c["id"] for c in info.test_cases] == ["case_003"] and "label" not in info.test_cases[0]


def test_msd_task01_is_regions_with_one_4d_image(tmp_path: Path) -> None:
    info = load_dataset(make_msd(tmp_path / "Task01_BrainTumour", task01=True))
    assert info.channels == ("FLAIR", "T1w", "t1gd", "T2w")
    assert info.labels == LABEL_SPECS["msd_task01"]
    assert len(info.cases[0]["image"]) == 1


def test_nnunet(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "Dataset005_Prostate")
    assert detect_format(root) == "nnunet"
    info = load_dataset(root)
    assert info.channels == ("T2", "ADC")
    assert info.labels.names == ("background", "PZ", "TZ")
    assert info.case_ids == ["prostate_00", "prostate_01"]
    assert [Path(p).name for p in info.cases[1]["image"]] == ["prostate_01_0000.nii.gz", "prostate_01_0001.nii.gz"]
    assert [c["id"] for c in info.test_cases] == ["prostate_09"]


def test_nnunet_v1_dataset_json_is_not_mistaken_for_msd(tmp_path: Path) -> None:
    root = tmp_path / "Task005"
    for ch in range(2):
        write_nii(root / "imagesTr" / f"p_00_{ch:04d}.nii.gz")
    write_nii(root / "labelsTr" / "p_00.nii.gz")
    write_json(
        root / "dataset.json",
        {
            "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ"},
            "training": [{"image": "./imagesTr/p_00.nii.gz", "label": "./labelsTr/p_00.nii.gz"}],
        },
    )
    assert detect_format(root) == "nnunet"
    assert load_dataset(root).case_ids == ["p_00"]


def test_nnunet_missing_channel_is_an_error(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds")
    (root / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="prostate_01"):
        load_dataset(root)


def test_brats2021(tmp_path: Path) -> None:
    root = make_brats2021(tmp_path / "brats21")
    assert detect_format(root) == "brats2021"
    info = load_dataset(root)
    assert info.channels == ("flair", "t1", "t1ce", "t2")
    assert info.labels == LABEL_SPECS["brats2021"]
    assert info.case_ids == ["BraTS2021_00000", "BraTS2021_00002"]
    assert [Path(p).name for p in info.cases[0]["image"]] == [
        f"BraTS2021_00000_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")
    ]
    assert [c["id"] for c in info.test_cases] == ["BraTS2021_01001"]


def test_brats2021_missing_modality_names_the_file(tmp_path: Path) -> None:
    root = make_brats2021(tmp_path / "brats21")
    (root / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    with pytest.raises(InputError, match="BraTS2021_00002_t1ce.nii.gz"):
        load_dataset(root)


def test_brats2023(tmp_path: Path) -> None:
    root = make_brats2023(tmp_path / "brats23")
    assert detect_format(root) == "brats2023"
    info = load_dataset(root)
    assert info.channels == ("t2f", "t1n", "t1c", "t2w")
    assert info.labels == LABEL_SPECS["brats2023"]
    assert info.case_ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert info.cases[0]["label"].endswith("BraTS-GLI-00000-000-seg.nii.gz")


def test_brats2015(tmp_path: Path) -> None:
    root = make_brats2015(tmp_path / "brats15")
    assert detect_format(root) == "brats2015"
    info = load_dataset(root)
    assert info.channels == ("flair", "t1c")
    assert info.labels == LABEL_SPECS["brats2015"]
    assert info.case_ids == ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]
    assert Path(info.cases[0]["image"][1]).name == "T1c_subtrMeanDivStd.nii.gz"


@pytest.mark.parametrize("use_flair", [False, True])
def test_isles22_bids(tmp_path: Path, use_flair: bool) -> None:
    root = make_isles_bids(tmp_path / "isles")
    assert detect_format(root) == "isles22"
    info = load_dataset(root, use_flair=use_flair)
    assert info.channels == (("dwi", "adc", "flair") if use_flair else ("dwi", "adc"))
    assert info.labels == LABEL_SPECS["isles22"]
    assert info.case_ids == ["sub-strokecase0001_ses-0001", "sub-strokecase0002_ses-0001"]
    names = [Path(p).name for p in info.cases[0]["image"]]
    assert names[:2] == ["sub-strokecase0001_ses-0001_dwi.nii.gz", "sub-strokecase0001_ses-0001_adc.nii.gz"]
    assert (names[2:] == ["sub-strokecase0001_ses-0001_FLAIR.nii.gz"]) is use_flair
    assert "derivatives" in info.cases[0]["label"]


def test_isles22_flat(tmp_path: Path) -> None:
    root = make_isles_flat(tmp_path / "isles")
    assert detect_format(root) == "isles22"
    info = load_dataset(root, use_flair=True)
    assert info.case_ids == ["sub-strokecase0009_ses-0001"]
    assert Path(info.cases[0]["image"][2]).name.endswith("_flair.nii.gz")
    assert info.cases[0]["label"].endswith("_msk.nii.gz")


def test_datalist(tmp_path: Path) -> None:
    root = make_datalist(tmp_path / "dl")
    assert detect_format(root) == "datalist"
    assert detect_format(root / "datalist.json") == "datalist"
    info = load_dataset(root / "datalist.json")
    assert info.channels == ("t1", "t2")
    assert info.labels.values == (0, 3)
    assert info.case_ids == ["a", "b_t1"]
    assert info.cases[1]["image"][1] == str((root / "img" / "b_t2.nii.gz").resolve())
    assert [c["id"] for c in info.test_cases] == ["c_t1"]
    assert load_dataset(root, labels="isles22").labels == LABEL_SPECS["isles22"]


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "random").mkdir()
    with pytest.raises(InputError, match="unknown dataset layout.*random"):
        detect_format(tmp_path / "random")
    root = make_msd(tmp_path / "msd")
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"labelsTr/case_002\.nii\.gz"):
        load_dataset(root)
    with pytest.raises(InputError, match="unknown dataset format"):
        load_dataset(root, format="kits")


def test_cases_from_paths(tmp_path: Path) -> None:
    # A dataset folder gives its test and training cases without labels.
    msd = cases_from_paths([make_msd(tmp_path / "msd")], channels=1)
    assert [c["id"] for c in msd] == ["case_003", "case_001", "case_002"]
    assert all("label" not in c for c in msd)
    # A plain folder with nnU-Net channel suffixes is grouped per case.
    plain = tmp_path / "plain"
    for ch in range(2):
        write_nii(plain / f"x_{ch:04d}.nii.gz")
    grouped = cases_from_paths([plain], channels=2)
    assert [(c["id"], [Path(p).name for p in c["image"]]) for c in grouped] == [
        ("x", ["x_0000.nii.gz", "x_0001.nii.gz"])
    ]
    # Single files: 3D for one channel, 4D with the channels in its last axis.
    single = cases_from_paths([write_nii(tmp_path / "one.nii.gz")], channels=1)
    assert single == [{"id": "one", "image": [str((tmp_path / "one.nii.gz").resolve())]}]
    four = cases_from_paths([write_nii(tmp_path / "four.nii", (8, 8, 8, 2))], channels=2)
    assert four[0]["id"] == "four"
    with pytest.raises(InputError, match="has 1 channel"):
        cases_from_paths([tmp_path / "one.nii.gz"], channels=2)
    with pytest.raises(InputError, match="more than one input"):
        cases_from_paths([tmp_path / "one.nii.gz", tmp_path / "one.nii.gz"], channels=1)
    with pytest.raises(InputError, match="not found"):
        cases_from_paths([tmp_path / "missing.nii.gz"], channels=1)


def test_make_splits_partition_and_determinism() -> None:
    ids = [f"case{i:02d}" for i in range(23)]
    splits = make_splits(ids, folds=5, seed=3)
    assert splits == make_splits(list(reversed(ids)), folds=5, seed=3)
    assert splits != make_splits(ids, folds=5, seed=4)
    vals = [v for s in splits for v in s["val"]]
    assert sorted(vals) == ids  # every case validated exactly once
    assert [len(s["val"]) for s in splits] == [5, 5, 5, 4, 4]
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"]) and set(s["train"]) | set(s["val"]) == set(ids)
    with pytest.raises(InputError, match="folds"):
        make_splits(ids[:3], folds=5)
    with pytest.raises(InputError, match="duplicate"):
        make_splits(["a", "a", "b"], folds=2)


def test_load_or_create_splits(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "splits.json"
    ids = [f"c{i}" for i in range(10)]
    first = load_or_create_splits(path, ids, folds=3, seed=0)
    assert json.loads(path.read_text()) == first  # nnU-Net splits_final.json layout
    # A stored file wins over the seed, so splits never change under a running experiment.
    assert load_or_create_splits(path, ids, folds=3, seed=99) == first
    with pytest.raises(InputError, match=r"splits\.json.*missing 1 ids"):
        load_or_create_splits(path, [*ids, "c10"], folds=3)
    with pytest.raises(InputError, match="3 folds but 5"):
        load_or_create_splits(path, ids, folds=5)


def test_datalist_ids_from_colliding_file_names_become_folder_names(tmp_path: Path) -> None:
    """patientNN/flair.nii.gz cases without "id" would all be "flair": their folders name them instead."""
    entries = []
    for i in range(3):
        folder = tmp_path / f"patient{i:02d}"
        folder.mkdir()
        for name in ("flair", "t1", "seg"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), folder / f"{name}.nii.gz")
        entries.append({"image": [f"patient{i:02d}/flair.nii.gz", f"patient{i:02d}/t1.nii.gz"],
                        "label": f"patient{i:02d}/seg.nii.gz"})
    doc = {"channels": ["flair", "t1"], "labels": {"0": "background", "1": "lesion"}, "training": entries}
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    assert [c["id"] for c in load_dataset(tmp_path).cases] == ["patient00", "patient01", "patient02"]
    # Explicit ids that repeat are refused in one line.
    doc["training"] = [{**e, "id": "same"} for e in entries]
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="more than once"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("value", [5, None, "", ["a.nii.gz"], {"x": 1}])
def test_msd_entries_must_be_paths(tmp_path: Path, value: object) -> None:
    doc = {"modality": {"0": "T1"}, "labels": {"0": "background", "1": "fg"},
           "training": [{"image": value, "label": "labelsTr/a.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(InputError):
        load_dataset(tmp_path, format="msd")
