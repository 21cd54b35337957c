"""nnU-Net v2 integration (factorseg[nnunet]): plans -> Factorizer, trainer discovery, the whole nnU-Net chain.

The plans-mapping tests need no nnunetv2; the others are skipped where the extra is not installed.
The chain test makes a tiny dataset in nnU-Net's raw layout and runs nnUNetv2_plan_and_preprocess,
nnUNetv2_train with ``nnUNetTrainerFactorizer_debug`` and nnUNetv2_predict, on the CPU, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import factorseg.nnunet as fnn
from factorseg.errors import InputError
from factorseg.models import create
from factorseg.nnunet.plans import NNUNetFactorizer, check_strides, factorizer_kwargs

ISO3 = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def test_plans_give_one_stage_per_stage_and_the_heads_nnunet_wants() -> None:
    kwargs = factorizer_kwargs([16, 16, 32], ISO3, in_channels=2, out_channels=3, features_per_stage=[8, 16, 32])
    assert kwargs["widths"] == (8, 16, 32) and kwargs["ds_heads"] == 2 and kwargs["crop"] == [16, 16, 32]
    net = NNUNetFactorizer(create("swin_factorizer", **kwargs))
    assert net.factorizer.pos_embed.weight.shape[2:] == (4, 4, 8)  # sized for the patch's bottleneck
    x = torch.randn(1, 2, 16, 16, 32)
    with torch.no_grad():
        for training in (True, False):  # nnU-Net's validation step wants every head in eval mode too
            net.train(training)
            assert [tuple(o.shape) for o in net(x)] == [(1, 3, 16, 16, 32), (1, 3, 8, 8, 16)]
        net.deep_supervision = False
        assert tuple(net(x).shape) == (1, 3, 16, 16, 32)


def test_widths_are_rounded_to_the_head_size_and_2d_plans_work() -> None:
    kwargs = factorizer_kwargs([32, 32], [[1, 1], [2, 2]], 1, 2, features_per_stage=[30, 60])
    assert kwargs["widths"] == (32, 64) and kwargs["spatial_dims"] == 2
    assert factorizer_kwargs([32, 32], [[1, 1], [2, 2]], 1, 2, None, head_dim=4)["widths"] == (32, 64)


@pytest.mark.parametrize(
    "strides",
    [[[1, 1, 1], [1, 2, 2], [2, 2, 2]], [[1, 1, 1], [2, 2, 2], [2, 2, 1]], [[2, 2, 2], [2, 2, 2]], [[1, 1, 1]]],
)
def test_other_strides_are_refused_naming_them(strides: list[list[int]]) -> None:
    with pytest.raises(InputError, match=r"strides are \[1, 1, 1\] then \[2, 2, 2\]") as caught:
        check_strides(strides, 3)
    assert str(strides) in str(caught.value)


def test_patch_not_divisible_by_the_total_stride_is_refused() -> None:
    with pytest.raises(InputError, match="not divisible by the total stride 4"):
        factorizer_kwargs([16, 16, 18], ISO3, 1, 2)


# ---- with nnunetv2 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet():
    return pytest.importorskip("nnunetv2")


def _configuration(patch, strides, features):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    return ConfigurationManager(
        {"patch_size": patch, "architecture": {"network_class_name": "x", "_kw_requires_import": [],
                                               "arch_kwargs": {"strides": strides, "features_per_stage": features}}}
    )


def test_trainer_builds_the_same_weights_for_training_and_inference(nnunet) -> None:
    from factorseg.nnunet.trainers import (
        nnUNetTrainerFactorizer,
        nnUNetTrainerFactorizer_iters3,
        nnUNetTrainerFactorizer_rank2,
    )

    config = _configuration([16, 16, 16], ISO3, [8, 16, 32])
    train = nnUNetTrainerFactorizer.build_network_architecture(None, config, 1, 2, True)
    infer = nnUNetTrainerFactorizer.build_network_architecture(None, config, 1, 2, enable_deep_supervision=False)
    assert isinstance(train, NNUNetFactorizer) and train.deep_supervision and not infer.deep_supervision
    infer.load_state_dict(train.state_dict())  # strict: the deep-supervision heads exist in both
    iters3 = nnUNetTrainerFactorizer_iters3.build_network_architecture(None, config, 1, 2, True)
    nmfs = [m for m in iters3.modules() if hasattr(m, "num_iters")]
    assert nmfs and all(m.num_iters == 3 and m.rank == 1 for m in nmfs)
    rank2 = nnUNetTrainerFactorizer_rank2.build_network_architecture(None, config, 1, 2, True)
    assert all(m.rank == 2 for m in rank2.modules() if hasattr(m, "num_iters"))


def test_adamw_variant_warms_up_then_decays(nnunet) -> None:
    from factorseg.nnunet.trainers import WarmupCosineLR

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosineLR(optimizer, 1e-4, warmup=4, max_steps=100)
    rates = []
    for epoch in range(100):
        schedule.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(2e-5) and rates[4] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(rates[:4], rates[1:5])) and all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] < 1e-7 and schedule.get_last_lr() == [rates[-1]]


def test_adamw_trainer_optimiser_and_schedule_lengths(nnunet) -> None:
    from types import SimpleNamespace

    from factorseg.nnunet import trainers as t

    assert t.nnUNetTrainerFactorizer.epochs is None  # nnU-Net's 1,000 epochs stay
    assert (t.nnUNetTrainerFactorizer_10epochs.epochs, t.nnUNetTrainerFactorizer_AdamW_10epochs.epochs) == (10, 10)
    assert issubclass(t.nnUNetTrainerFactorizer_AdamW_10epochs, t.nnUNetTrainerFactorizer_AdamW)
    for epochs, warmup in ((10, 1), (1000, 8)):  # 2,000 iterations of 250, at most a tenth of the schedule
        stand_in = SimpleNamespace(network=torch.nn.Linear(2, 2), initial_lr=2e-3, weight_decay=1e-2,
                                   num_iterations_per_epoch=250, num_epochs=epochs, warmup_iterations=2000)
        optimizer, schedule = t.nnUNetTrainerFactorizer_AdamW.configure_optimizers(stand_in)
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 1e-2
        assert schedule.warmup == warmup and schedule.max_steps == epochs
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 / (warmup + 1))  # epoch 0 of the warm-up


def test_shim_install_is_idempotent_and_leaves_foreign_files(nnunet, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fnn, "nnunet_trainer_dir", lambda: tmp_path)
    assert not fnn.installed() and not fnn.uninstall()
    path = fnn.install()
    assert path == tmp_path / fnn.SHIM_NAME and fnn.install() == path and fnn.installed()
    assert "from factorseg.nnunet.trainers import *" in path.read_text()
    assert fnn.uninstall() and not path.exists()
    path.write_text("# someone else's trainers\n")
    with pytest.raises(InputError, match="not written by factorseg"):
        fnn.install()
    with pytest.raises(InputError, match="not written by factorseg"):
        fnn.uninstall()
    assert path.read_text() == "# someone else's trainers\n"


def test_external_trainer_folder_is_searchable_by_nnunet(nnunet) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from factorseg.nnunet import trainers

    assert set(fnn.TRAINERS) == set(trainers.__all__)  # every trainer is listed for discovery
    folder = str(fnn.ext_trainer_dir())
    for name in fnn.TRAINERS:  # exactly how nnU-Net searches the folders named in nnUNet_extTrainer
        found = recursive_find_python_class(folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True)
        assert found is not None and issubclass(found, nnUNetTrainer) and found.__name__ == name


# ---- the whole chain -----------------------------------------------------------------------------------------

DATASET = 901


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), path)


def _make_raw_dataset(raw: Path, cases: int = 5) -> tuple[Path, tuple[int, ...], np.ndarray]:
    """``cases`` 32^3 one-channel scans with a bright ball (label 1), plus one test scan of another shape."""
    folder = raw / f"Dataset{DATASET}_Blob"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)

    def case(shape):
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
        label = (np.linalg.norm(grid - centre, axis=-1) < rng.uniform(4, 8)).astype(np.uint8)
        return (2.0 * label + rng.normal(0, 0.5, shape)).astype(np.float32), label

    affine = np.eye(4)
    for i in range(cases):
        image, label = case((32, 32, 32))
        _write(folder / "imagesTr" / f"blob_{i:03d}_0000.nii.gz", image, affine)
        _write(folder / "labelsTr" / f"blob_{i:03d}.nii.gz", label, affine)
    test_shape = (40, 28, 32)  # larger and smaller than the patch: padding and sliding windows
    test_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    test_affine[:3, 3] = [-12.5, 4.0, 7.25]
    _write(folder / "imagesTs" / "test_000_0000.nii.gz", case(test_shape)[0], test_affine)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1}, "numTraining": cases,
        "file_ending": ".nii.gz",
    }))
    return folder, test_shape, test_affine


@pytest.fixture
def trainers_installed(nnunet):
    """factorseg's trainers in nnU-Net's trainer folder for the test (the documented ``install()``)."""
    was = fnn.installed()
    fnn.install()
    yield
    if not was:
        fnn.uninstall()


def _run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).with_name(command[0])  # the venv's nnU-Net commands
    if not tool.exists():
        tool = Path(shutil.which(command[0]) or pytest.fail(f"{command[0]} is not installed next to {sys.executable}"))
    return subprocess.run([str(tool), *command[1:]], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_nnunet_plan_train_predict_with_the_factorizer(tmp_path: Path, trainers_installed) -> None:
    raw = tmp_path / "raw"
    folder, test_shape, test_affine = _make_raw_dataset(raw)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "preprocessed"),
               nnUNet_results=str(tmp_path / "results"), nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    done = _run(env, "nnUNetv2_plan_and_preprocess", "-d", str(DATASET), "-c", "3d_fullres",
                "--verify_dataset_integrity", "-np", "1", "-npfp", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    preprocessed = tmp_path / "preprocessed" / f"Dataset{DATASET}_Blob"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]

    trainer = "nnUNetTrainerFactorizer_debug"
    env["nnUNet_n_proc_DA"] = "0"  # augment in this process
    done = _run(env, "nnUNetv2_train", str(DATASET), "3d_fullres", "0", "-tr", trainer, "-device", "cpu")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "results" / f"Dataset{DATASET}_Blob" / f"{trainer}__nnUNetPlans__3d_fullres"
    checkpoint = torch.load(run_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    assert any(k.startswith("factorizer.") and "nmf" in k for k in checkpoint["network_weights"])
    assert "Mean Validation Dice" in done.stdout  # nnU-Net's own final validation ran with our network

    out = tmp_path / "predicted"
    done = _run(env, "nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", str(DATASET),
                "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mask = nib.load(out / "test_000.nii.gz")
    assert mask.shape == test_shape
    np.testing.assert_allclose(mask.affine, test_affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}

    # plans with anisotropic strides are refused when the trainer is made, naming the strides
    aniso = json.loads(json.dumps(plans))
    aniso["plans_name"] = "nnUNetPlans_aniso"
    aniso["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"][1] = [1, 2, 2]
    (preprocessed / "nnUNetPlans_aniso.json").write_text(json.dumps(aniso))
    done = _run(env, "nnUNetv2_train", str(DATASET), "3d_fullres", "0", "-tr", trainer, "-p", "nnUNetPlans_aniso",
                "-device", "cpu")
    assert done.returncode != 0
    assert "these plans have strides [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]" in done.stderr
