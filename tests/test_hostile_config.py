"""Hostile and careless settings through the ``factorseg`` command: recipes, ``-s`` overrides, model bundles,
export sidecars, demo options, and what a first-time user sees.

Every refusal exits with status 2 and one ``factorseg: error:`` line naming the setting (no traceback), writes
nothing, and leaves every input byte-identical. Runs that are allowed must not be silently wrong: a bundle
that cannot mean what it says is refused, training that diverges stops, training on every case says so.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from builders import refused as _refused

from factorseg.config import (
    MODEL_COMMON,
    SCHEMA,
    DataConfig,
    InferenceConfig,
    TrainConfig,
    apply_overrides,
    available_recipes,
    factorizer_keys,
    load_recipe,
    validate_recipe,
)
from factorseg.bundles.format import save_bundle
from factorseg.cli import build_parser, main
from factorseg.data.transforms import TransformConfig
from factorseg.errors import InputError
from factorseg.io import CHECKPOINT_FORMAT
from factorseg.models import create

CLASSES = {"mode": "classes", "names": ["background", "a", "b"], "values": [0, 1, 2], "convention": "custom"}
MODEL = {"name": "swin_factorizer", "in_channels": 1, "out_channels": 3, "widths": [8, 16], "head_dim": 4,
         "window_size": 4, "deep_supervision": False}


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def dataset(tiny_brats: Path) -> Path:
    return tiny_brats


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-d", str(data), "-o", str(out), "--recipe", "demo", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "1", "--num-workers", "0", "--folds", "4", "--val-interval", "1", "--no-progress",
            "-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.deep_supervision=false",
            "-s", "transforms.roi_size=[16,16,16]", "-s", "transforms.num_samples=1", *extra]


def _good_bundle(path: Path) -> Path:
    cfg = {
        "model": dict(MODEL), "labels": CLASSES,
        "transforms": TransformConfig(roi_size=(16, 16, 16), crop_foreground=False).to_dict(),
        "channels": ["t1"], "inference": {"overlap": 0.0, "sw_batch_size": 1},
    }
    torch.manual_seed(0)
    return save_bundle(cfg, create("swin_factorizer", **{k: v for k, v in MODEL.items() if k != "name"}), path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _good_bundle(tmp_path_factory.mktemp("bundle") / "good.pt")


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    data = np.random.default_rng(0).uniform(1, 2, (16, 16, 16)).astype(np.float32)
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    return path


def _spoilt(bundle: Path, folder: Path, change: Callable[[dict[str, Any]], None],
            weights: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    raw = torch.load(bundle, weights_only=True)
    config = copy.deepcopy(raw["config"])
    change(config)
    state = dict(raw["state_dict"])
    if weights is not None:
        weights(state)
    path = folder / "spoilt.pt"
    torch.save({"format_version": CHECKPOINT_FORMAT, "factorseg_version": "test", "config": config,
                "state_dict": state}, path)
    return path


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c[section].__setitem__(key, value)


def _predict(model: Path, scan: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "-m", str(model), "-i", str(scan), "-o", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------- 1. silently wrong results
def _nan_head(state: dict[str, torch.Tensor]) -> None:
    state["head.weight"] = torch.full_like(state["head.weight"], float("nan"))


def _inf_somewhere(state: dict[str, torch.Tensor]) -> None:
    key = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")


WRONG_BUNDLES: dict[str, tuple[Callable[[dict[str, Any]], None], Any, tuple[str, ...]]] = {
    "out_channels below the labels": (_set("model", "out_channels", 1), None, ("model.out_channels=1", "3 outputs")),
    "out_channels above the labels": (_set("model", "out_channels", 5), None, ("model.out_channels=5", "3 outputs")),
    "labels with fewer classes": (lambda c: c.__setitem__("labels", {**CLASSES, "names": ["bg", "a"],
                                                                      "values": [0, 1]}), None, ("2 outputs",)),
    "in_channels vs channel names": (_set("model", "in_channels", 2), None, ("2 input channels", "1 channel names")),
    "more channel names": (lambda c: c.__setitem__("channels", ["t1", "t2"]), None, ("1 input channels",)),
    "NaN weights": (lambda c: None, _nan_head, ("NaN or infinite", "head.weight", "diverged")),
    "an infinite weight": (lambda c: None, _inf_somewhere, ("NaN or infinite",)),
}


@pytest.mark.parametrize("name", list(WRONG_BUNDLES))
def test_bundle_that_would_predict_nonsense_is_refused(name: str, bundle: Path, scan: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    change, weights, fragments = WRONG_BUNDLES[name]
    spoilt = _spoilt(bundle, tmp_path, change, weights)
    out = tmp_path / "out"
    _refused(capsys, _predict(spoilt, scan, out), ("spoilt.pt", *fragments), [spoilt, scan], out)
    # ... by every command that loads a model.
    _refused(capsys, ["export", "-m", str(spoilt), "-o", str(out / "m.onnx")], ("spoilt.pt",), [spoilt], out)


@pytest.mark.parametrize("extra", [
    ["--lr", "1e30"],
    ["--lr", "1e25", "-s", "train.grad_clip=null", "-s", "train.warmup_epochs=0"],
])
def test_diverging_training_stops_in_one_line_and_leaves_nothing(extra: list[str], dataset: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, "--steps-per-epoch", "4", *extra), ("training diverged", "train.lr"),
             [dataset], out)
    assert not out.exists()


NONFINITE_SETTINGS = [
    "train.lr=.inf", "train.lr=.nan", "train.lr=0", "train.lr=-1e-3", "train.max_minutes=-1", "train.max_minutes=0",
    "train.max_minutes=.nan", "train.max_minutes=.inf", "train.weight_decay=-0.1", "train.weight_decay=.inf",
    "train.warmup_epochs=-1", "train.warmup_epochs=.nan", "train.grad_clip=-1", "train.grad_clip=.nan",
    "train.deep_supervision_weights=[1,.inf]", "transforms.rotate_deg=.nan", "transforms.noise_std=-1",
    "transforms.scale=.inf", "transforms.spacing=[1,.nan,1]", "transforms.spacing=[1,0,1]",
    "transforms.pos_neg_ratio=-2", "transforms.flip_prob=1.5", "transforms.noise_prob=.nan",
    "inference.overlap=-0.1", "inference.overlap=.nan", "inference.sw_batch_size=0", "model.dropout=1.5",
    "model.mlp_ratio=0", "model.eps=.inf", "model.eps=0", "model.nmf_iters=-1",
]


@pytest.mark.parametrize("setting", NONFINITE_SETTINGS)
def test_nonfinite_or_nonpositive_setting_is_refused(setting: str, dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, "-s", setting), (setting.split("=")[0],), [dataset], out)


# ---------------------------------------------------------------- 3. one line instead of a traceback: bundles
SPOILT_CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "negative roi": (_set("transforms", "roi_size", [-16, 16, 16]), ("transforms.roi_size[0]",)),
    "zero roi": (_set("transforms", "roi_size", [16, 0, 16]), ("transforms.roi_size[1]",)),
    "absurd roi": (_set("transforms", "roi_size", [16, 16, 10**7]), ("transforms.roi_size[2]", "at most")),
    "roi of text": (_set("transforms", "roi_size", "16"), ("transforms.roi_size",)),
    "zero head_dim": (_set("model", "head_dim", 0), ("model.head_dim",)),
    "absurd widths": (_set("model", "widths", [8, 10**9]), ("model.widths[1]", "at most")),
    "negative window": (_set("model", "window_size", -4), ("model.window_size",)),
    "widths of text": (_set("model", "widths", "8,16"), ("model.widths",)),
    "zero sw batch": (_set("inference", "sw_batch_size", 0), ("inference.sw_batch_size",)),
    "absurd sw batch": (_set("inference", "sw_batch_size", 10**9), ("inference.sw_batch_size",)),
    "NaN overlap": (_set("inference", "overlap", float("nan")), ("inference.overlap",)),
    "blend of a number": (_set("inference", "blend", 3), ("inference.blend",)),
    "string label values": (_set("labels", "values", ["0", "1", "2"]), ("labels.values[0]",)),
    "label names of numbers": (_set("labels", "names", [0, 1, 2]), ("labels.names[0]",)),
    "unknown label mode": (_set("labels", "mode", "softmax"), ("labels.mode",)),
    "labels a list": (lambda c: c.__setitem__("labels", [0, 1, 2]), ("labels must be a mapping",)),
    "model a string": (lambda c: c.__setitem__("model", "swin_factorizer"), ("model must be a mapping",)),
    "transforms a list": (lambda c: c.__setitem__("transforms", [16]), ("transforms must be a mapping",)),
    "inference null": (lambda c: c.__setitem__("inference", None), ("inference must be a mapping",)),
    "channels a number": (lambda c: c.__setitem__("channels", 1), ("channels must be a list",)),
    "unknown model": (_set("model", "name", "resnet9000"), ("model.name",)),
    "unknown model setting": (_set("model", "heads", 3), ("model.heads",)),
    "unknown transform": (_set("transforms", "zoom", 2), ("transforms.zoom",)),
    "bad orientation": (_set("transforms", "orientation", "ABC"), ("orientation",)),
    "missing section": (lambda c: c.pop("inference"), ("inference",)),
}


@pytest.mark.parametrize("name", list(SPOILT_CONFIGS))
def test_bundle_config_is_checked_in_full(name: str, bundle: Path, scan: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    change, fragments = SPOILT_CONFIGS[name]
    spoilt = _spoilt(bundle, tmp_path, change)
    out = tmp_path / "out"
    _refused(capsys, _predict(spoilt, scan, out), ("spoilt.pt", *fragments), [spoilt, scan], out)


def test_lightning_checkpoint_config_is_checked_too(bundle: Path, scan: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    raw = torch.load(bundle, weights_only=True)
    config = copy.deepcopy(raw["config"])
    config["model"]["out_channels"] = 2
    ckpt = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": {"config": config},
                "state_dict": {f"model.{k}": v for k, v in raw["state_dict"].items()}}, ckpt)
    out = tmp_path / "out"
    _refused(capsys, _predict(ckpt, scan, out), ("run.ckpt", "model.out_channels=2"), [ckpt, scan], out)


# ---------------------------------------------------------------- exported models
def _fake_onnx(path: Path) -> Path:
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.13.0" + bytes(64))
    return path


def test_onnx_model_without_its_backend_says_how_to_run_it(scan: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    onnx = _fake_onnx(tmp_path / "model.onnx")
    _refused(capsys, _predict(onnx, scan, out), ("model.onnx", "ONNX", "--backend onnxruntime"), [onnx, scan], out)
    renamed = _fake_onnx(tmp_path / "model.pt")  # found by its content too
    _refused(capsys, _predict(renamed, scan, out), ("model.pt", "ONNX", "--backend onnxruntime"), [renamed], out)
    _refused(capsys, ["explain", "-m", str(onnx), "-i", str(scan), "-o", str(out)], ("ONNX",), [onnx], out)


def test_torchscript_file_is_named_as_such(scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    traced = tmp_path / "traced.pt"
    torch.jit.trace(torch.nn.Conv3d(1, 3, 1), torch.zeros(1, 1, 2, 2, 2)).save(str(traced))
    out = tmp_path / "out"
    _refused(capsys, _predict(traced, scan, out), ("traced.pt", "TorchScript"), [traced, scan], out)


def test_bundle_given_to_the_onnx_backend(bundle: Path, scan: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    _refused(capsys, _predict(bundle, scan, out, "--backend", "onnxruntime"),
             ("not an ONNX model", "drop --backend onnxruntime"), [bundle, scan], out)


@pytest.mark.parametrize("sidecar,fragment", [
    (None, "is missing"),
    (b"{not json", "not JSON"),
    (b"\xff\xfe\x00", "not JSON"),
    (json.dumps({"format": "onnx"}).encode(), "no 'config' mapping"),
    (json.dumps({"format": "onnx", "config": [1]}).encode(), "no 'config' mapping"),
    (json.dumps({"format": "onnx", "config": {"model": MODEL}}).encode(), "lacks labels"),
    (json.dumps({"config": {"model": {**MODEL, "out_channels": 7}, "labels": CLASSES, "transforms": {},
                            "channels": ["t1"], "inference": {}}}).encode(), "model.out_channels=7"),
    (json.dumps({"config": {"model": MODEL, "labels": CLASSES, "transforms": {"roi_size": [0, 1, 1]},
                            "channels": ["t1"], "inference": {}}}).encode(), "transforms.roi_size[0]"),
])
def test_onnx_sidecar_is_checked(sidecar: bytes | None, fragment: str, scan: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    onnx = _fake_onnx(tmp_path / "model.onnx")
    inputs = [onnx, scan]
    if sidecar is not None:
        (tmp_path / "model.onnx.json").write_bytes(sidecar)
        inputs.append(tmp_path / "model.onnx.json")
    out = tmp_path / "out"
    _refused(capsys, _predict(onnx, scan, out, "--backend", "onnxruntime"), (fragment,), inputs, out)


@pytest.mark.parametrize("iters,fragment", [("-1", "--nmf-iters"), ("100000", "--nmf-iters")])
def test_export_nmf_iters_out_of_range(iters: str, fragment: str, bundle: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    _refused(capsys, ["export", "-m", str(bundle), "-o", str(out / "m.onnx"), "--nmf-iters", iters], (fragment,),
             [bundle], out)


def test_export_never_replaces_its_own_input(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy_ = tmp_path / "m.pt"
    copy_.write_bytes(bundle.read_bytes())
    _refused(capsys, ["export", "-m", str(copy_), "-o", str(copy_), "--format", "torchscript", "--overwrite"],
             ("would replace the model",), [copy_])


# ---------------------------------------------------------------- recipes
def _recipe(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


RECIPES: dict[str, tuple[dict[str, str | bytes], tuple[str, ...]]] = {
    "base cycle": ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, ("base cycle", "a.yaml -> b.yaml")),
    "self base": ({"a.yaml": "base: a.yaml\ntrain: {epochs: 2}\n"}, ("base cycle",)),
    "long cycle": ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: c.yaml\n", "c.yaml": "base: a.yaml\n"},
                   ("base cycle",)),
    "not UTF-8": ({"a.yaml": b"base: default\n# caf\xe9\n"}, ("a.yaml", "not UTF-8")),
    "UTF-16": ({"a.yaml": "base: default\n".encode("utf-16")}, ("a.yaml", "not UTF-8")),
    "section a number": ({"a.yaml": "base: default\ntrain: 5\n"}, ("section 'train'", "mapping")),
    "section a list": ({"a.yaml": "base: default\nmodel: [swin]\n"}, ("section 'model'",)),
    "base a number": ({"a.yaml": "base: 5\n"}, ("base must be",)),
    "base a list": ({"a.yaml": "base: [default]\n"}, ("base must be",)),
    "base unknown": ({"a.yaml": "base: nonexistent\n"}, ("unknown recipe 'nonexistent'",)),
    "base missing file": ({"a.yaml": "base: other.yaml\n"}, ("other.yaml", "not found")),
    "a list": ({"a.yaml": "- train\n- model\n"}, ("a recipe must be a mapping",)),
    "bad YAML": ({"a.yaml": "train: {epochs: [1\n"}, ("not valid YAML",)),
    "unknown section": ({"a.yaml": "base: default\ntraining: {epochs: 1}\n"}, ("unknown recipe section",)),
    "number as a key": ({"a.yaml": "base: default\ntrain: {1: 2}\n"}, ("setting names must be text",)),
    "no base, keys missing": ({"a.yaml": "model: {name: swin_factorizer}\n"}, ("base: default",)),
    "wrong value": ({"a.yaml": "base: demo\ntrain: {weight_decay: lots}\n"}, ("train.weight_decay",)),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_bad_recipe_file_is_refused(name: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files, fragments = RECIPES[name]
    paths = [_recipe(tmp_path, n, t) for n, t in files.items()]
    out = tmp_path / "run"
    argv = _train(dataset, out)
    argv[argv.index("demo")] = str(paths[0])
    _refused(capsys, argv, fragments, [dataset, *paths], out)


def test_recipe_base_is_found_beside_the_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    _recipe(folder, "parent.yaml", "base: demo\ntrain: {epochs: 3}\n")
    child = _recipe(folder, "child.yaml", "base: parent.yaml\ntrain: {lr: 0.01}\n")
    cfg = validate_recipe(load_recipe(child))
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.01 and cfg["model"]["stem"] == "conv_block"


BAD_OVERRIDES = {
    "train.max_minutes=abc": "train.max_minutes",
    "model.head_dim=0": "model.head_dim",
    "model.head_dim=3": "model.head_dim=3 must divide",
    "data.fold=abc": "data.fold",
    "data.fold=7": "data.fold=7",
    "data.fold=-1": "data.fold",
    "data.folds=1": "data.folds",
    "train.precision=bogus": "train.precision",
    "train.epochs=1.5": "train.epochs",
    "train.batch_size=true": "train.batch_size",
    "train.seed=-3": "train.seed",
    "train.accelerator=abacus": "train.accelerator",
    "train.devices=0": "train.devices",
    "transforms.roi_size=abc": "transforms.roi_size",
    "transforms.roi_size=[16,16]": "transforms.roi_size",
    "transforms.flip_axes=[0,5]": "transforms.flip_axes[1]",
    "inference.blend=linear": "inference.blend",
    "inference.tta=sometimes": "inference.tta",
    "model.widths=[8,0]": "model.widths[1]",
    "model.window_size=[4,4]": "model.window_size",
    "model.solver=adam": "model.solver",
    "model.stem=big": "model.stem",
    "model.name=basicunet": "basicunet cannot train",  # the 16^3 patches are too small for its depth
    "model.name=resnet": "model.name",
    "data.cache=maybe": "data.cache",
    "data.labels=brats1999": "data.labels",
    "data.format=dicom": "data.format",
    "train.lr.x=1": "train.lr is a value",
    "train=5": "section.key",
    "training.lr=1": "section.key",
    "train.learning_rate=0.1": "train.learning_rate is not a train setting",
    "model.heads=2": "model.heads is not a setting",
    "transforms.orientation=XYZ": "orientation",
    "train.steps_per_epoch=10000000000": "at most",
}


@pytest.mark.parametrize("override", list(BAD_OVERRIDES))
def test_bad_override_is_refused_before_anything_is_written(override: str, dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, "-s", override), (BAD_OVERRIDES[override],), [dataset], out)
    assert not out.exists()


@pytest.mark.parametrize("argv,fragment", [
    (["train", "-d", "x", "-o", "y", "--epochs", "abc"], "--epochs"),
    (["train", "-d", "x", "-o", "y", "--fold", "first"], "--fold"),
    (["train", "-d", "x"], "-o/--output"),
    (["predict", "-i", "x", "-o", "y"], "-m/--model"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors_are_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    line = _refused(capsys, argv, (fragment,))
    assert "--help" in line


@pytest.mark.parametrize("extra,fragment", [
    (["--minutes", "nan"], "--minutes"), (["--minutes", "inf"], "--minutes"), (["--minutes", "-1"], "--minutes"),
    (["--minutes", "0"], "--minutes"), (["--seed", "-1"], "--seed"), (["--cases", "1"], "at least 2"),
    (["--cases", "100000"], "at most"),
])
def test_demo_settings_are_refused_before_any_data_is_made(extra: list[str], fragment: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    _refused(capsys, ["demo", "-o", str(out), "--no-progress", *extra], (fragment,), output=out)
    assert not out.exists()


def test_demo_override_and_failure_leave_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from factorseg import training
    from factorseg.demo import pipeline as demo

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the test process
    with pytest.raises(InputError, match="model.head_dim"):
        demo.run_demo(tmp_path / "a", cases=2, held_out=1, shape=32, progress=False, overrides=["model.head_dim=0"],
                      console=quiet)
    assert not (tmp_path / "a").exists()

    def failing(*args: Any, **kwargs: Any) -> None:
        raise InputError("simulated failure in training")

    monkeypatch.setattr(training, "train", failing)
    keep = tmp_path / "b" / "mine.txt"
    keep.parent.mkdir()
    keep.write_text("not the demo's")
    with pytest.raises(InputError, match="simulated"):
        demo.run_demo(tmp_path / "b", cases=2, held_out=1, shape=32, progress=False, console=quiet)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["mine.txt"]  # the generated data went too


# ---------------------------------------------------------------- the types cover every setting there is
def test_schema_covers_every_setting() -> None:
    assert set(SCHEMA["transforms"].keys) == {f.name for f in fields(TransformConfig)}
    from factorseg.models.factorizer import Factorizer, build_factorizer

    params = set(inspect.signature(Factorizer.__init__).parameters) - {"self", "variant"}
    params |= set(inspect.signature(build_factorizer).parameters) - {"variant", "overrides"}
    known = set(factorizer_keys()) | set(MODEL_COMMON)
    assert params | {"crop", "pos_embed"} <= known
    default = load_recipe("default")
    for section in ("data", "train", "inference"):
        assert set(default[section]) == set(SCHEMA[section].keys), section


@pytest.mark.parametrize("view", [DataConfig, TrainConfig, InferenceConfig, TransformConfig])
def test_default_recipe_spells_out_the_section_defaults(view: type) -> None:
    """default.yaml repeats the views' defaults for users to read: the two must agree."""
    section = "transforms" if view is TransformConfig else view.section
    default = load_recipe("default")[section]
    if view is not TransformConfig:
        assert {f.name for f in fields(view)} == set(SCHEMA[section].keys)
    assert default == {k: v for k, v in view().to_dict().items() if k in default}


@pytest.mark.parametrize("view,values,fragment", [
    (InferenceConfig, {"overlap": 1.0}, "inference.overlap must lie in [0, 1)"),
    (TrainConfig, {"init_from_heads": "maybe"}, "train.init_from_heads must be one of load, skip"),
    (DataConfig, {"fold": 5}, "data.fold=5 but there are only 5 folds"),
])
def test_section_views_check_their_values(view: type, values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InputError, match=re.escape(fragment)):
        view(**values)
    with pytest.raises(InputError, match=re.escape(f"bundle.pt: {fragment}")):
        view.from_dict(values, "bundle.pt: ")


def test_section_views_refuse_unknown_keys_and_fill_in_defaults() -> None:
    with pytest.raises(InputError, match=r"inference\.window is not a"):
        InferenceConfig.from_dict({"window": 3})
    assert InferenceConfig.from_dict({"tta": True}) == InferenceConfig(tta=True)


@pytest.mark.parametrize("name", available_recipes())
def test_every_shipped_recipe_passes_its_own_types(name: str) -> None:
    validate_recipe(load_recipe(name))


def test_shipped_model_passes_the_bundle_checks() -> None:
    from factorseg.inference.loading import load_model

    assert load_model("hippocampus").labels.num_outputs == 3


def test_scientific_notation_overrides_are_numbers() -> None:
    cfg = apply_overrides(load_recipe("demo"), ["train.lr=1e-4", "train.max_minutes=2E+1"])
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["max_minutes"] == 20.0
    switched = apply_overrides(cfg, ["model.name=segresnet", "model.init_filters=8"])
    assert switched["model"] == {"name": "segresnet", "init_filters": 8}


# ---------------------------------------------------------------- 4. what a first-time user meets
def test_fold_all_trains_on_every_case_and_says_so(dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(_train(dataset, out, "--fold", "all")) == 0
    printed = capsys.readouterr().out
    assert "all 4 cases train and none validates" in printed
    assert f"model: {out / 'model_last.pt'}" in printed and "best model" not in printed
    assert (out / "model_last.pt").is_file() and not (out / "model_best.pt").exists()
    assert not (out / "checkpoints" / "best.ckpt").exists() and not (out / "splits.json").exists()
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "val/dice" not in header
    assert (out / "config.yaml").read_text().count("fold: all") == 1


def test_start_summary_and_recorded_format(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, "auto.yaml", "base: demo\ndata: {format: null}\n")
    argv = _train(dataset, out)
    argv[argv.index("demo")] = str(recipe)
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = [line for line in lines if line.startswith("data: ")]
    assert summary == ["data: brats2021 layout, 4 labelled cases, 4 channels (flair, t1, t1ce, t2), labels "
                       "brats2021: 3 sigmoid regions (TC, WT, ET); fold 0 of 4: 3 training, 1 validation cases"]
    saved = load_recipe(out / "config.yaml")
    assert saved["data"]["format"] == "brats2021"


@pytest.mark.parametrize("which", ["val", "train"])
def test_hand_made_split_without_validation_or_training_cases(which: str, dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    ids = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    other = "train" if which == "val" else "val"
    splits = [{which: [], other: ids}] + [{"train": ids[:k] + ids[k + 1:], "val": [ids[k]]} for k in range(1, 4)]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    out = tmp_path / "run"
    name = "validation" if which == "val" else "training"
    _refused(capsys, _train(dataset, out, "-s", f"data.splits_file={path}"),
             ("splits.json", f"fold 0 has no {name} cases", "--fold all"), [dataset, path], out)


def test_training_output_has_no_library_chatter(dataset: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "factorseg.cli", *_train(dataset, tmp_path / "run")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default"))
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    for chatter in ("Tip", "litlogger", "GPU available", "TPU available", "Warning", "deprecated", "Trainer.fit"):
        assert chatter not in text, text
    assert result.stderr.strip() == ""
    assert result.stdout.splitlines()[0].startswith("data: brats2021 layout")


def test_option_spellings_and_defaults_in_help() -> None:
    parser = build_parser()
    assert parser.parse_args(["demo", "-o", "x"]).out == Path("x")
    assert parser.parse_args(["demo", "--output", "x"]).out == Path("x")
    assert parser.parse_args(["demo", "--out", "x"]).out == Path("x")
    for spelling in ("--workers", "--num-workers"):
        args = parser.parse_args(["evaluate", "-p", "a", "-r", "b", "--labels", "isles22", spelling, "3"])
        assert args.workers == 3
    assert parser.parse_args(["train", "-d", "a", "-o", "b", "--fold", "all"]).fold == "all"
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "(default: cpu)" in sub["predict"].format_help()
    assert "(default: 1.0)" in sub["evaluate"].format_help()
    assert "(default: demo_out)" in sub["demo"].format_help()
    assert "(default: onnx)" in sub["export"].format_help()


def test_recipes_lists_descriptions_and_keys(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    for name in available_recipes():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10, line
    assert "factorseg demo" in text  # the demo recipe's description
    for section in ("model", "data", "transforms", "train", "inference"):
        assert any(line.strip().startswith(f"{section}: ") for line in text.splitlines()), section
    assert "max_minutes" in text and "sw_batch_size" in text and "head_dim" in text
    assert main(["recipes", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "train.lr: a positive number" in keys and "data.fold: an integer >= 0 or all" in keys


def test_evaluate_labels_from_a_shipped_model_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    mask = np.zeros((8, 8, 8), dtype=np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    mask[5:7, 5:7, 5:7] = 2
    for folder in (pred, ref):
        nib.Nifti1Image(mask, np.eye(4)).to_filename(folder / "case.nii.gz")
    assert main(["evaluate", "-p", str(pred), "-r", str(ref), "--labels-from", "hippocampus",
                 "--metrics", "dice"]) == 0
    assert "Anterior" in capsys.readouterr().out
    _refused(capsys, ["evaluate", "-p", str(pred), "-r", str(ref), "--labels-from", "hippopotamus"],
             ("hippopotamus", "shipped", "hippocampus"), [pred, ref])


@pytest.mark.parametrize("argv,fragment", [
    (["predict", "-m", "MODEL", "-i", "SCAN", "-o", "OUT", "--sw-batch-size", "100000"], "--sw-batch-size"),
    (["predict", "-m", "MODEL", "-i", "SCAN", "-o", "OUT", "--nmf-iters", "100000"], "--nmf-iters"),
    (["predict", "-m", "MODEL", "-i", "SCAN", "-o", "OUT", "--overlap", "nan"], "overlap"),
    (["explain", "-m", "MODEL", "-i", "SCAN", "-o", "OUT", "--components", "0"], "--components"),
    (["import-checkpoint", "SCAN", "-o", "OUT/m.pt", "--nmf-iters", "-2"], "--nmf-iters"),
    (["import-checkpoint", "SCAN", "-o", "OUT/m.pt", "--window-size", "4", "0", "4"], "--window-size value 2"),
    (["import-checkpoint", "SCAN", "-o", "OUT/m.pt", "--spacing", "1", "nan", "1"], "--spacing value 2"),
    (["import-checkpoint", "SCAN", "-o", "OUT/m.pt", "--crop", "0"], "--crop"),
    (["evaluate", "-p", "OUT", "-r", "OUT", "--labels", "isles22", "--num-workers", "-1"], "--num-workers"),
    (["evaluate", "-p", "OUT", "-r", "OUT", "--labels", "isles22", "--nsd-tolerance", "inf"], "--nsd-tolerance"),
])
def test_command_line_numbers_are_checked(argv: list[str], fragment: str, bundle: Path, scan: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    names = {"MODEL": str(bundle), "SCAN": str(scan), "OUT": str(out)}
    argv = [names.get(a, a.replace("OUT", str(out))) for a in argv]
    _refused(capsys, argv, (fragment,), [bundle, scan], out)


@pytest.mark.parametrize("kind", ["fifo", "folder", "huge", "missing"])
def test_recipe_that_is_not_a_readable_file(kind: str, dataset: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "r.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block: refused without opening it
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge":
        path.write_bytes(b"# padding\n" * 200_000)
    out = tmp_path / "run"
    argv = _train(dataset, out)
    argv[argv.index("demo")] = str(path)
    fragment = {"fifo": "not a regular file", "folder": "is a folder", "huge": "too large", "missing": "not found"}
    _refused(capsys, argv, ("r.yaml", fragment[kind]), [dataset], out)
