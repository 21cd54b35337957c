"""Dataset layouts -> :class:`DatasetInfo` (channels, label convention, case lists).

Supported layouts (``format`` names):

* ``msd``: Medical Segmentation Decathlon folder with ``dataset.json`` (``modality``, ``labels``, ``training``,
  ``test``); a case's image is one (possibly 4D) file. Task01 BrainTumour labels become nested regions.
* ``nnunet``: nnU-Net raw folder, ``dataset.json`` with ``channel_names`` (v2) or ``modality`` (v1),
  ``imagesTr/<case>_<XXXX>.nii.gz``, ``labelsTr/<case>.nii.gz``, optional ``imagesTs``.
* ``brats2021``: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``.
* ``brats2023``: ``BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (any BraTS-* cohort).
* ``brats2015``: the preprocessed BRATS 2015 example folders (``Flair_subtrMeanDivStd``, ``T1c_subtrMeanDivStd``,
  ``OTMultiClass``).
* ``isles22``: ISLES'22 BIDS (``rawdata/sub-*/ses-*/{dwi,anat}``, masks in ``derivatives/sub-*/ses-*``) or the
  flat per-subject layout (``sub-*/sub-*_ses-*_{dwi,adc,flair,msk}.nii.gz``).
* ``datalist``: a ``datalist.json`` with ``channels``, ``labels``, ``training`` and ``test``, paths relative to it.

A case is ``{"id": str, "image": [abs path, ...], "label": abs path}`` (no ``"label"`` for test cases).
Channels on different grids (ISLES'22 FLAIR) are resampled onto the first channel's grid by the transforms.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factorseg.data.labels import LABEL_SPECS, LabelSpec, get_label_spec
from factorseg.errors import InputError
from factorseg.errors import join_problems
from factorseg.io import (
    NIFTI_SUFFIXES,
    check_regular_file,
    check_same_grid,
    is_nifti_name,
    read_header,
    read_image,
    split_channel_suffix,
    strip_nifti,
)

__all__ = ["FORMATS", "DatasetInfo", "case_problems", "cases_from_paths", "detect_format", "load_dataset"]

FORMATS = ("msd", "nnunet", "brats2021", "brats2023", "brats2015", "isles22", "datalist")

_BRATS2021_DIR = re.compile(r"^BraTS2021_\d+$")
_BRATS2023_DIR = re.compile(r"^BraTS-[A-Za-z]+-\d+-\d+$")
_SEPARATORS = "_-. "
_MSD_TASK01_NAMES = {"background", "edema", "non-enhancing tumor", "enhancing tumour"}


@dataclass
class DatasetInfo:
    """A dataset on disk: its layout, channel names, label convention and cases (see module docstring)."""

    format: str
    root: Path
    channels: tuple[str, ...]
    labels: LabelSpec
    cases: list[dict[str, Any]] = field(default_factory=list)
    test_cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        """Ids of the labelled (training) cases."""
        return [c["id"] for c in self.cases]


# ---------------------------------------------------------------------------- helpers
def _is_nifti(path: Path) -> bool:
    return path.is_file() and is_nifti_name(path.name) and not path.name.startswith(".")


def _existing(path: Path, what: str) -> str:
    """Absolute path as a string, or InputError if the file is missing or not a regular file."""
    if not path.is_file():
        if os.path.lexists(path):
            check_regular_file(path)  # a folder, FIFO, device, socket or broken link: say which
        raise InputError(f"{what} not found: {path}")
    return str(path.resolve())


def _read_json(path: Path) -> dict[str, Any]:
    if os.path.lexists(path):
        check_regular_file(path, "file", "a JSON file")  # a FIFO would block forever
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    return data


def _channel_names(mapping: Any, path: Path) -> tuple[str, ...]:
    """``{"0": "FLAIR", "1": "T1w"}`` -> ("FLAIR", "T1w") in index order."""
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"{path}: 'modality'/'channel_names' must be a non-empty mapping")
    try:
        return tuple(str(mapping[k]) for k in sorted(mapping, key=int))
    except ValueError:
        raise InputError(f"{path}: channel keys must be integers, got {list(mapping)}") from None


def _check_unique(cases: list[dict[str, Any]], where: Path) -> None:
    seen: set[str] = set()
    for c in cases:
        if c["id"] in seen:
            raise InputError(f"{where}: case id {c['id']!r} occurs more than once")
        seen.add(c["id"])


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_ci(folder: Path, suffix: str) -> list[Path]:
    """NIfTI files in ``folder`` whose name (without extension) ends with ``suffix``, case-insensitively."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_nifti(p) and strip_nifti(p.name).lower().endswith(suffix.lower()))


def _one(files: list[Path], what: str, folder: Path) -> Path:
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise InputError(f"expected one {what} file in {folder}, found {found}")
    return files[0]


# ---------------------------------------------------------------------------- detection
def _dataset_json_format(root: Path) -> str:
    """msd or nnunet for a folder holding dataset.json."""
    d = _read_json(root / "dataset.json")
    if "channel_names" in d:
        return "nnunet"
    training = d.get("training")
    if isinstance(training, list) and training and isinstance(training[0], dict) and "image" in training[0]:
        listed = root / str(training[0]["image"])
        if listed.is_file():
            return "msd"
        stem = strip_nifti(listed.name)
        if any((listed.parent / f"{stem}_0000{s}").is_file() for s in NIFTI_SUFFIXES):
            return "nnunet"
        return "msd"  # loading will name the missing file
    images = root / "imagesTr"
    if images.is_dir() and any(split_channel_suffix(strip_nifti(p.name))[1] is not None for p in images.iterdir()):
        return "nnunet"
    raise InputError(f"{root / 'dataset.json'}: neither an MSD (no 'training' list) nor an nnU-Net dataset.json")


def detect_format(path: str | Path) -> str:
    """Name of the dataset layout at ``path`` (a folder, or a dataset.json / datalist.json file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"dataset path not found: {path}")
    if not path.is_dir():  # FIFOs, devices and sockets are neither datasets nor folders
        check_regular_file(path, "dataset path", "a dataset folder or .json file")
    if path.is_file():
        if path.suffix != ".json":
            raise InputError(f"{path}: not a dataset folder or .json dataset description")
        return _dataset_json_format(path.parent) if path.name == "dataset.json" else "datalist"
    if (path / "dataset.json").is_file():
        return _dataset_json_format(path)
    if (path / "datalist.json").is_file():
        return "datalist"
    if (path / "rawdata").is_dir() and any(p.name.startswith("sub-") for p in _subdirs(path / "rawdata")):
        return "isles22"
    subdirs = _subdirs(path)
    names = [p.name for p in subdirs]
    if any(_BRATS2021_DIR.match(n) for n in names):
        return "brats2021"
    if any(_BRATS2023_DIR.match(n) for n in names):
        return "brats2023"
    if any(_find_ci(p, "OTMultiClass") or _find_ci(p, "Flair_subtrMeanDivStd") for p in subdirs):
        return "brats2015"
    if any(n.startswith("sub-") and _find_ci(p, "_dwi") for n, p in zip(names, subdirs)):
        return "isles22"
    raise InputError(
        f"unknown dataset layout: {path} (expected one of {', '.join(FORMATS)}; "
        "see factorseg.data.formats for the layouts)"
    )


# ---------------------------------------------------------------------------- loaders
def _load_msd(root: Path, **_: Any) -> DatasetInfo:
    d = _read_json(root / "dataset.json")
    channels = _channel_names(d.get("modality"), root / "dataset.json")
    label_map = d.get("labels")
    if isinstance(label_map, dict) and {str(v).strip().lower() for v in label_map.values()} == _MSD_TASK01_NAMES:
        labels = LABEL_SPECS["msd_task01"]
    else:
        labels = LabelSpec.from_json_labels(label_map or {})

    where = root / "dataset.json"

    def case(image: Any, label: Any) -> dict[str, Any]:
        img = root / _relative_path(image, where, "image")
        c: dict[str, Any] = {"id": strip_nifti(img.name), "image": [_existing(img, "image")]}
        if label is not None:
            c["label"] = _existing(root / _relative_path(label, where, "label"), "label")
        return c

    training = d.get("training", [])
    entries_ok = isinstance(training, list) and all(
        isinstance(t, dict) and {"image", "label"} <= set(t) for t in training
    )
    if not entries_ok:
        raise InputError(f"{root / 'dataset.json'}: 'training' must be a list of {{'image', 'label'}} entries")
    cases = [case(t["image"], t["label"]) for t in training]
    tests = [case(t["image"] if isinstance(t, dict) else t, None) for t in d.get("test", [])]
    return DatasetInfo("msd", root, channels, labels, cases, tests)


def _nnunet_cases(folder: Path, ending: str, n_channels: int, labels_dir: Path | None) -> list[dict[str, Any]]:
    """Group ``<case>_<XXXX><ending>`` files by case and pair them with ``labels_dir/<case><ending>``."""
    if not folder.is_dir():
        return []
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if not p.name.endswith(ending) or p.name.startswith("."):
            continue
        case, channel = split_channel_suffix(p.name[: -len(ending)])
        if channel is None:
            raise InputError(f"{p}: nnU-Net image names must end with _XXXX (channel index) before {ending}")
        groups.setdefault(case, {})[channel] = p
    cases = []
    for cid, chans in groups.items():
        if sorted(chans) != list(range(n_channels)):
            raise InputError(f"{folder}: case {cid!r} has channels {sorted(chans)}, expected 0..{n_channels - 1}")
        c: dict[str, Any] = {"id": cid, "image": [str(chans[i].resolve()) for i in range(n_channels)]}
        if labels_dir is not None:
            c["label"] = _existing(labels_dir / f"{cid}{ending}", "label")
        cases.append(c)
    return cases


def _load_nnunet(root: Path, **_: Any) -> DatasetInfo:
    d = _read_json(root / "dataset.json")
    channels = _channel_names(d.get("channel_names", d.get("modality")), root / "dataset.json")
    labels = LabelSpec.from_json_labels(d.get("labels") or {}, d.get("regions_class_order"))
    ending = d.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise InputError(f"{root / 'dataset.json'}: file_ending {ending!r} is not supported (NIfTI only)")
    if not (root / "imagesTr").is_dir():
        raise InputError(f"nnU-Net imagesTr folder not found: {root / 'imagesTr'}")
    cases = _nnunet_cases(root / "imagesTr", ending, len(channels), root / "labelsTr")
    tests = _nnunet_cases(root / "imagesTs", ending, len(channels), None)
    return DatasetInfo("nnunet", root, channels, labels, cases, tests)


def _load_case_folders(
    root: Path,
    fmt: str,
    match: Callable[[str], bool],
    channels: Sequence[str],
    files: Callable[[Path], tuple[list[Path], Path]],
    labels: LabelSpec,
) -> DatasetInfo:
    """One folder per case; ``files(folder)`` -> (channel files, label file). No label file -> test case."""
    cases, tests = [], []
    for folder in _subdirs(root):
        if not match(folder.name):
            continue
        images, label = files(folder)
        c: dict[str, Any] = {"id": folder.name, "image": [_existing(p, "image") for p in images]}
        if label.is_file():
            c["label"] = str(label.resolve())
            cases.append(c)
        else:
            tests.append(c)
    if not cases and not tests:
        raise InputError(f"no {fmt} case folders found in {root}")
    return DatasetInfo(fmt, root, tuple(channels), labels, cases, tests)


def _load_brats2021(root: Path, **_: Any) -> DatasetInfo:
    mods = ("flair", "t1", "t1ce", "t2")

    def files(folder: Path) -> tuple[list[Path], Path]:
        return [folder / f"{folder.name}_{m}.nii.gz" for m in mods], folder / f"{folder.name}_seg.nii.gz"

    return _load_case_folders(root, "brats2021", _BRATS2021_DIR.match, mods, files, LABEL_SPECS["brats2021"])


def _load_brats2023(root: Path, **_: Any) -> DatasetInfo:
    # Same modality order as brats2021 (flair, t1, t1ce, t2) so that models transfer between editions.
    mods = ("t2f", "t1n", "t1c", "t2w")

    def files(folder: Path) -> tuple[list[Path], Path]:
        return [folder / f"{folder.name}-{m}.nii.gz" for m in mods], folder / f"{folder.name}-seg.nii.gz"

    return _load_case_folders(root, "brats2023", _BRATS2023_DIR.match, mods, files, LABEL_SPECS["brats2023"])


def _load_brats2015(root: Path, **_: Any) -> DatasetInfo:
    def files(folder: Path) -> tuple[list[Path], Path]:
        flair = _one(_find_ci(folder, "Flair_subtrMeanDivStd"), "Flair_subtrMeanDivStd", folder)
        t1c = _one(_find_ci(folder, "T1c_subtrMeanDivStd"), "T1c_subtrMeanDivStd", folder)
        label = _find_ci(folder, "OTMultiClass")
        return [flair, t1c], label[0] if label else folder / "OTMultiClass.nii.gz"

    def match(name: str) -> bool:
        folder = root / name
        return bool(_find_ci(folder, "Flair_subtrMeanDivStd") or _find_ci(folder, "OTMultiClass"))

    return _load_case_folders(root, "brats2015", match, ("flair", "t1c"), files, LABEL_SPECS["brats2015"])


def _isles_case(cid: str, image_dir: Path, anat_dir: Path, mask_dir: Path, use_flair: bool) -> dict[str, Any]:
    """One ISLES'22 session: DWI, ADC (+FLAIR) and the lesion mask if present."""
    images = [
        _one(_find_ci(image_dir, f"{cid}_dwi"), "DWI", image_dir),
        _one(_find_ci(image_dir, f"{cid}_adc"), "ADC", image_dir),
    ]
    if use_flair:
        images.append(_one(_find_ci(anat_dir, f"{cid}_flair"), "FLAIR", anat_dir))
    c: dict[str, Any] = {"id": cid, "image": [str(p.resolve()) for p in images]}
    masks = _find_ci(mask_dir, f"{cid}_msk")
    if masks:
        c["label"] = str(_one(masks, "mask", mask_dir).resolve())
    return c


def _load_isles22(root: Path, use_flair: bool = False, **_: Any) -> DatasetInfo:
    cases = []
    if (root / "rawdata").is_dir():
        for sub in _subdirs(root / "rawdata"):
            for ses in (s for s in _subdirs(sub) if s.name.startswith("ses-")):
                cid = f"{sub.name}_{ses.name}"
                mask_dir = root / "derivatives" / sub.name / ses.name
                cases.append(_isles_case(cid, ses / "dwi", ses / "anat", mask_dir, use_flair))
    else:
        for sub in (s for s in _subdirs(root) if s.name.startswith("sub-")):
            for dwi in _find_ci(sub, "_dwi"):
                cid = strip_nifti(dwi.name)[: -len("_dwi")]
                cases.append(_isles_case(cid, sub, sub, sub, use_flair))
    if not cases:
        raise InputError(f"no ISLES'22 sessions found in {root}")
    channels = ("dwi", "adc", "flair") if use_flair else ("dwi", "adc")
    labelled = [c for c in cases if "label" in c]
    tests = [c for c in cases if "label" not in c]
    return DatasetInfo("isles22", root, channels, LABEL_SPECS["isles22"], labelled, tests)


def _load_datalist(root: Path, json_path: Path | None = None, **_: Any) -> DatasetInfo:
    path = json_path or root / "datalist.json"
    d = _read_json(path)
    channels = d.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise InputError(f"{path}: 'channels' must be a non-empty list of names")
    label_entry = d.get("labels")
    if isinstance(label_entry, str):
        labels = get_label_spec(label_entry)
    elif isinstance(label_entry, dict) and "mode" in label_entry:
        labels = LabelSpec.from_dict(label_entry)
    else:
        labels = LabelSpec.from_json_labels(label_entry or {})

    def case(entry: Any, labelled: bool, index: int) -> dict[str, Any]:
        if not isinstance(entry, dict):
            entry = {"image": entry}
        image = entry.get("image")
        image_list = [image] if isinstance(image, str) else image
        if not isinstance(image_list, list) or not image_list:
            raise InputError(f"{path}: entry {index} has no 'image'")
        paths = [_existing(root / _relative_path(p, path, f"entry {index} 'image'"), "image") for p in image_list]
        if len(paths) != 1 and len(paths) != len(channels):
            raise InputError(f"{path}: entry {index} has {len(paths)} images for {len(channels)} channels")
        given = entry.get("id")
        if given is not None and (not isinstance(given, (str, int)) or isinstance(given, bool) or not str(given)):
            raise InputError(f"{path}: entry {index} 'id' must be a name, got {given!r}")
        c: dict[str, Any] = {"id": str(given) if given is not None else strip_nifti(Path(paths[0]).name),
                             "image": paths}
        if given is None:
            first = Path(paths[0])
            c["_derived_id"] = str(first.relative_to(root).parent) if first.is_relative_to(root) else ""
        if labelled:
            if "label" not in entry:
                raise InputError(f"{path}: training entry {index} has no 'label'")
            c["label"] = _existing(root / _relative_path(entry["label"], path, f"entry {index} 'label'"), "label")
        return c

    for key in ("training", "test"):
        if not isinstance(d.get(key, []), list):
            raise InputError(f"{path}: '{key}' must be a list of entries")
    cases = [case(e, True, i) for i, e in enumerate(d.get("training", []))]
    tests = [case(e, False, i) for i, e in enumerate(d.get("test", []))]
    _unique_ids(cases + tests, path)
    return DatasetInfo("datalist", root, tuple(channels), labels, cases, tests)


def _relative_path(value: Any, where: Path, what: str) -> str:
    """A file path entry of a JSON file: a non-empty string (one-line InputError otherwise)."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {what} must be a file path, got {value!r}")
    return value


def _unique_ids(cases: list[dict[str, Any]], where: Path) -> None:
    """Make case ids unique: ids taken from file names that collide (``patient01/flair.nii.gz``,
    ``patient02/flair.nii.gz``) become the files' folder names; otherwise duplicates are refused."""
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["id"]] = counts.get(c["id"], 0) + 1
    for c in cases:
        folder = c.pop("_derived_id", None)
        if counts[c["id"]] > 1 and folder and folder != ".":
            c["id"] = folder.replace("/", "_")
    seen: dict[str, int] = {}
    for c in cases:
        seen[c["id"]] = seen.get(c["id"], 0) + 1
    duplicates = sorted(k for k, n in seen.items() if n > 1)
    if duplicates:
        raise InputError(
            f"{where}: {len(duplicates)} case id(s) occur more than once ({', '.join(duplicates[:5])}); give each "
            "entry a unique \"id\""
        )


_LOADERS: dict[str, Callable[..., DatasetInfo]] = {
    "msd": _load_msd,
    "nnunet": _load_nnunet,
    "brats2021": _load_brats2021,
    "brats2023": _load_brats2023,
    "brats2015": _load_brats2015,
    "isles22": _load_isles22,
    "datalist": _load_datalist,
}


def load_dataset(
    path: str | Path,
    format: str | None = None,
    labels: LabelSpec | str | None = None,
    use_flair: bool = False,
) -> DatasetInfo:
    """Read the dataset at ``path`` (layout detected unless ``format`` is given).

    Args:
        path: dataset folder, or its dataset.json / datalist.json.
        format: one of :data:`FORMATS`; ``None`` detects it.
        labels: override the layout's label convention (a :class:`LabelSpec` or a ``LABEL_SPECS`` name).
        use_flair: ISLES'22 only: add FLAIR as a third channel (resampled onto the DWI grid by the transforms).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"dataset path not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in _LOADERS:
        raise InputError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = path.parent if path.is_file() else path
    json_path = path if path.is_file() and fmt == "datalist" else None
    info = _LOADERS[fmt](root.resolve(), use_flair=use_flair, json_path=json_path)
    if labels is not None:
        info.labels = get_label_spec(labels)
    _check_unique(info.cases + info.test_cases, root)
    return info


# ---------------------------------------------------------------------------- prediction inputs
def _image_list(case: dict[str, Any]) -> list[str]:
    image = case.get("image")
    return [str(image)] if isinstance(image, (str, Path)) else [str(p) for p in image or []]


def case_problems(
    case: dict[str, Any],
    channels: int,
    channel_names: Sequence[str] | None = None,
    voxels: bool = True,
    min_coverage: float | None = None,
) -> list[str]:
    """Every problem of one case to predict, as one-line messages (empty: the case is usable).

    Header checks of every file (:func:`factorseg.io.nifti.read_header`: regular NIfTI file, dimensionality, data
    type, the size its header promises and the voxel limit), the number of channels (one 4D file with
    ``channels`` volumes, or ``channels`` 3D files), the channels' grids (:func:`factorseg.io.nifti.check_same_grid`
    with ``min_coverage``, default the transforms' :data:`~factorseg.data.transforms.MIN_COVERAGE`) and, with
    ``voxels``, the voxel data themselves (:func:`factorseg.io.nifti.read_image`: corrupt or truncated data, NaN or
    infinite values; one file in memory at a time).
    """
    files = _image_list(case)
    names = f" ({', '.join(channel_names)})" if channel_names else ""
    if not files:
        return [f"case {case.get('id', '?')}: no image files"]
    if len(files) == 1:
        try:
            shape, _ = read_header(files[0], expect_3d=False)
        except InputError as exc:
            return [str(exc)]
        found = int(shape[3]) if len(shape) == 4 else 1
        if found != channels:
            return [f"{files[0]}: has {found} channel(s) but the model expects {channels}{names}"]
    elif len(files) != channels:
        return [f"case {case.get('id', '?')}: {len(files)} image files but the model expects {channels}{names}"]
    else:
        problems = []
        for path in files:
            try:
                read_header(path, expect_3d=True)
            except InputError as exc:
                problems.append(str(exc))
        if problems:
            return problems
        if min_coverage is None:
            from factorseg.data.transforms import MIN_COVERAGE

            min_coverage = MIN_COVERAGE
        try:
            check_same_grid(files, min_coverage=min_coverage)  # close grids are resampled (with a warning) later
        except InputError as exc:
            return [f"case {case.get('id', '?')}: {exc}"]
    problems = []
    if voxels:
        for path in files:
            try:
                read_image(path, expect_3d=len(files) > 1)
            except InputError as exc:
                problems.append(str(exc))
    return problems


def _shared_id(files: Sequence[Path]) -> str:
    """Case id of one case given as several plain channel files: the common start of their names, cut at a
    separator (``BraTS2021_00025_flair``, ``..._t1`` -> ``BraTS2021_00025``); else the files' folder name."""
    stems = [strip_nifti(p.name) for p in files]
    prefix = os.path.commonprefix(stems)
    if not all(len(s) == len(prefix) or s[len(prefix)] in _SEPARATORS for s in stems):
        cut = max(prefix.rfind(c) for c in _SEPARATORS)
        prefix = prefix[:cut] if cut > 0 else ""
    prefix = prefix.rstrip(_SEPARATORS)
    if prefix:
        return prefix
    parents = {p.resolve().parent for p in files}
    return next(iter(parents)).name if len(parents) == 1 else stems[0]


def _group_files(
    files: Sequence[Path], channels: int, where: str, loose: bool, problems: list[str]
) -> list[dict[str, Any]]:
    """Cases made of NIfTI files (a folder's, or files given one by one); problems are appended, not raised.

    * nnU-Net channel files ``<case>_<XXXX>.nii.gz`` form the case ``<case>``: the ``_XXXX`` channel suffix
      never appears in the case id (so ``case_0000.nii.gz`` gives ``case.nii.gz`` whether it was given
      alone or in a folder). A multi-channel model needs channels 0..C-1; for a one-channel model only
      ``_0000`` is a channel suffix (``scan_2019.nii.gz`` stays the case ``scan_2019``) unless the same case
      also has a ``_0000`` file.
    * any other file is one case: a 3D scan for a one-channel model, a 4D scan with C volumes otherwise;
    * given one by one (``loose``), exactly C plain 3D files for a C-channel model are one case, the channels
      in the order given (as ``factorseg explain -i``), named by :func:`_shared_id`. In a folder their order
      would be a guess, so there they are refused.
    """
    groups: dict[str, dict[int, Path]] = {}
    plain: list[Path] = []
    for p in files:
        case, channel = split_channel_suffix(strip_nifti(p.name))
        if channel is None:
            plain.append(p)
        else:
            groups.setdefault(case, {})[channel] = p
    cases: list[dict[str, Any]] = []
    for cid, chans in groups.items():
        found = sorted(chans)
        if channels == 1 and 0 not in chans:
            plain.extend(chans[k] for k in found)  # scan_2019.nii.gz: a name, not a channel
        elif channels == 1 and found != [0]:
            problems.append(f"{where}: case {cid!r} has channel files {found}; the model expects 1 channel")
        elif found != list(range(channels)):
            problems.append(f"{where}: case {cid!r} has channel files {found}, expected 0..{channels - 1}")
        else:
            cases.append({"id": cid, "image": [str(chans[i].resolve()) for i in range(channels)]})
    single: list[Path] = []  # 3D files (or unreadable ones) that a multi-channel model cannot take alone
    unreadable: dict[Path, str] = {}
    for p in plain:
        try:
            shape, _ = read_header(p.resolve(), expect_3d=False)  # named as in the checks of the voxel data
        except InputError as exc:
            unreadable[p] = str(exc)
            if channels > 1:
                single.append(p)
            continue
        volumes = int(shape[3]) if len(shape) == 4 else 1
        if volumes == channels:
            cases.append({"id": strip_nifti(p.name), "image": [str(p.resolve())]})
        elif volumes == 1:
            single.append(p)
        else:
            problems.append(f"{p.resolve()}: has {volumes} channel(s) but the model expects {channels}")
    problems.extend(unreadable.values())
    if loose and channels > 1 and len(single) == channels:
        if not any(p in unreadable for p in single):
            cases.append({"id": _shared_id(single), "image": [str(p.resolve()) for p in single]})
    else:
        hint = (f" (give one case as {channels} channel files in model order, a 4D file or nnU-Net names "
                "case_0000, case_0001, ...)") if loose else ""
        problems.extend(f"{p.resolve()}: has 1 channel(s) but the model expects {channels}{hint}"
                        for p in single if p not in unreadable)
    return cases


def _folder_cases(folder: Path, channels: int, problems: list[str]) -> list[dict[str, Any]]:
    """Cases in a plain folder of NIfTI files (see :func:`_group_files`); entries named like NIfTI files that
    are not regular files (FIFOs, devices, folders, broken links) are problems, never read."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not is_nifti_name(p.name):
            continue
        try:
            check_regular_file(p)
        except InputError as exc:
            problems.append(str(exc))
            continue
        files.append(p)
    if not files:
        if not problems:
            problems.append(f"no NIfTI files (.nii/.nii.gz) found in {folder}")
        return []
    return _group_files(files, channels, str(folder), loose=False, problems=problems)


def cases_from_paths(paths: Iterable[str | Path], channels: int) -> list[dict[str, Any]]:
    """Unlabelled cases to predict from files and folders.

    A folder in a supported dataset layout gives its test and training cases (labels dropped); any other
    folder is read as NIfTI files grouped by nnU-Net ``_XXXX`` channel suffixes; files given one by one are
    grouped the same way, and otherwise each is one case (3D for a one-channel model, or 4D with ``channels``
    volumes), except that exactly ``channels`` 3D files for a multi-channel model are one case with the
    channels in the given order (see :func:`_group_files`; case ids never keep the ``_0000`` suffix).

    Every input is checked before anything is returned, and every problem is reported together in one
    :class:`InputError` line (:func:`factorseg.errors.join_problems`): missing paths, FIFOs, devices and sockets
    (never opened), names that are not NIfTI, incomplete channel groups, unreadable or forged headers, wrong
    channel counts, inputs given twice and clashing case ids. When there is any such problem, the voxel data
    of the remaining cases are checked too (:func:`case_problems`), so that the line names every bad input.
    """
    if channels < 1:
        raise InputError(f"channels must be >= 1, got {channels}")
    problems: list[str] = []
    cases: list[dict[str, Any]] = []
    loose: list[Path] = []
    seen_files: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            problems.append(f"input not found: {path}" + (" (broken symbolic link)" if path.is_symlink() else ""))
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        if not is_dir:
            try:
                check_regular_file(path)
            except InputError as exc:
                problems.append(str(exc))
                continue
            if not is_nifti_name(path.name):
                problems.append(f"{path}: not a NIfTI file (.nii/.nii.gz)")
            elif path.resolve() in seen_files:
                problems.append(f"{path}: given twice, so its case would occur in more than one input")
            else:
                seen_files.add(path.resolve())
                loose.append(path)
            continue
        if is_nifti_name(path.name):  # a folder named like a scan: a file was meant
            problems.append(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
            continue
        try:
            fmt: str | None = detect_format(path)
        except InputError:
            fmt = None
        if fmt is None:
            cases.extend(_folder_cases(path, channels, problems))
            continue
        try:
            info = load_dataset(path, fmt)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if len(info.channels) != channels:
            problems.append(
                f"{path}: {fmt} dataset has {len(info.channels)} channels but the model expects {channels}"
            )
            continue
        cases.extend({"id": c["id"], "image": list(c["image"])} for c in info.test_cases + info.cases)
    if loose:
        cases.extend(_group_files(loose, channels, "inputs", loose=True, problems=problems))
    counts = Counter(c["id"] for c in cases)
    problems.extend(f"case id {cid!r} occurs in more than one input; outputs would overwrite each other"
                    for cid, n in counts.items() if n > 1)
    if problems:
        for c in cases:
            if counts[c["id"]] == 1:
                problems.extend(case_problems(c, channels))
        raise InputError(join_problems(sorted(problems)))  # sorted: in the order of the files' paths
    return cases
