"""Label conventions: targets against MONAI references, round trips, validation and constructors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.networks.utils import one_hot
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from factorseg.data.labels import LABEL_SPECS, LabelSpec, get_label_spec
from factorseg.errors import InputError

RNG = np.random.default_rng(0)


def random_label(values: list[int], shape: tuple[int, ...] = (6, 7, 5)) -> np.ndarray:
    return RNG.choice(np.asarray(values), size=shape).astype(np.uint8)


@pytest.mark.parametrize(("name", "et_label"), [("brats2021", 4), ("brats2023", 3)])
def test_brats_regions_match_monai(name: str, et_label: int) -> None:
    spec = LABEL_SPECS[name]
    label = random_label(list(spec.values))
    target = spec.to_target(label)
    reference = ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)(torch.as_tensor(label)[None])
    assert spec.names == ("TC", "WT", "ET")
    assert target.dtype == torch.float32
    assert torch.equal(target, reference.float())


def test_msd_task01_regions_by_hand() -> None:
    # 1 edema, 2 non-enhancing, 3 enhancing: TC = {2, 3}, WT = {1, 2, 3}, ET = {3}.
    label = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    target = LABEL_SPECS["msd_task01"].to_target(label)
    expected = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]], dtype=np.float32).reshape(3, 4, 1, 1)
    np.testing.assert_array_equal(target.numpy(), expected)


@pytest.mark.parametrize("name", ["msd_task01", "brats2021", "brats2023", "isles22"])
def test_round_trip(name: str) -> None:
    spec = LABEL_SPECS[name]
    label = random_label(list(spec.values))
    target = spec.to_target(label)
    if spec.mode == "regions":
        # Through probabilities that are thresholded at 0.5, as a network's sigmoid outputs would be.
        decisions = torch.where(target > 0.5, 0.9, 0.1)
    else:
        decisions = one_hot(target[None], num_classes=spec.num_outputs)[0] * 0.8 + 0.1
    np.testing.assert_array_equal(spec.to_label(decisions), label)


def test_brats2015_round_trip_merges_non_enhancing_into_necrosis() -> None:
    spec = LABEL_SPECS["brats2015"]
    label = random_label([0, 1, 2, 3, 4]).astype(np.float32)  # stored as float in the example files
    target = spec.to_target(label)
    np.testing.assert_array_equal(target[1].numpy(), (label > 0).astype(np.float32))  # WT = 1..4
    np.testing.assert_array_equal(target[0].numpy(), np.isin(label, [1, 3, 4]).astype(np.float32))
    back = spec.to_label(target)
    np.testing.assert_array_equal(back, np.where(label == 3, 1, label))


def test_float_labels_are_rounded_and_interpolated_labels_rejected() -> None:
    spec = LABEL_SPECS["brats2015"]
    label = np.array([0.0, 0.99999997, 2.0000001, 4.0], dtype=np.float32).reshape(2, 2, 1)
    np.testing.assert_array_equal(spec.to_target(label)[1].numpy().ravel(), [0, 1, 1, 1])
    with pytest.raises(InputError, match="non-integer"):
        spec.to_target(np.full((2, 2, 2), 1.5, dtype=np.float32))


def test_classes_target_is_index_map_for_dice_ce_with_non_contiguous_values() -> None:
    spec = LabelSpec.classes_from_values([10, 0, 5], ["high", "background", "mid"])
    assert spec.values == (0, 5, 10)
    assert spec.names == ("background", "mid", "high")
    label = random_label([0, 5, 10])
    target = spec.to_target(label[None])  # channel-first input keeps its single channel
    assert target.shape == (1, *label.shape)
    assert target.dtype == torch.int64
    np.testing.assert_array_equal(target[0].numpy(), np.searchsorted([0, 5, 10], label))
    # DiceCELoss(to_onehot_y=True) on the index map equals the loss on an explicit one-hot target.
    logits = torch.randn(1, 3, *label.shape, generator=torch.Generator().manual_seed(0))
    loss_index = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target[None])
    onehot = one_hot(target[None], num_classes=3)
    loss_onehot = DiceCELoss(softmax=True)(logits, onehot)
    torch.testing.assert_close(loss_index, loss_onehot)
    back = spec.to_label(target)
    np.testing.assert_array_equal(back, label)
    assert back.dtype == np.uint8


def test_to_label_accepts_logits_and_index_maps() -> None:
    spec = LabelSpec.classes_from_values([0, 1], ["background", "lesion"])
    logits = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 3.0]]]])  # (2, 1, 1, 2)
    np.testing.assert_array_equal(spec.to_label(logits), [[[0, 1]]])
    np.testing.assert_array_equal(spec.to_label(np.array([[[[1, 0]]]])), [[[1, 0]]])
    with pytest.raises(InputError, match="channels"):
        spec.to_label(torch.zeros(3, 2, 2, 2))
    with pytest.raises(InputError, match="class indices"):
        spec.to_label(np.full((1, 2, 2, 2), 2))


def test_isles22_is_one_sigmoid_channel() -> None:
    """The paper's ISLES'22 head: one sigmoid lesion channel, thresholded at 0.5."""
    spec = LABEL_SPECS["isles22"]
    assert spec.mode == "regions" and spec.num_outputs == 1
    label = np.array([[[0, 1], [1, 0]]])
    np.testing.assert_array_equal(spec.to_target(label).numpy()[0], label)
    probabilities = torch.sigmoid(torch.tensor([[[[-2.0, 0.3], [1.0, -0.1]]]]))  # (1, 1, 2, 2)
    np.testing.assert_array_equal(spec.to_label(probabilities), [[[0, 1], [1, 0]]])


def test_regions_paint_inner_regions_over_outer() -> None:
    spec = LABEL_SPECS["brats2021"]
    # ET without TC is still written as enhancing tumour (painting order WT -> TC -> ET).
    pred = np.zeros((3, 4, 1, 1), dtype=np.float32)
    pred[1, 1:] = 1  # WT
    pred[0, 2:] = 1  # TC
    pred[2, 3] = 1  # ET
    np.testing.assert_array_equal(spec.to_label(pred).ravel(), [0, 2, 1, 4])


def test_validate_and_unknown_values() -> None:
    spec = LABEL_SPECS["brats2021"]
    spec.validate([0, 1, 2, 4])
    with pytest.raises(InputError, match=r"\[3\].*brats2021"):
        spec.validate(np.array([0, 3, 4]))
    with pytest.raises(InputError, match=r"seg\.nii\.gz.*\[3\]"):
        spec.to_target(np.full((2, 2, 2), 3), source="seg.nii.gz")
    with pytest.raises(InputError, match="shape"):
        spec.to_target(np.zeros((2, 2, 2, 2)))


def test_metatensor_metadata_is_kept() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    label = MetaTensor(torch.zeros(1, 3, 3, 3), affine=affine)
    target = LABEL_SPECS["brats2023"].to_target(label)
    assert isinstance(target, MetaTensor)
    torch.testing.assert_close(target.affine, affine.double())


def test_json_label_dicts() -> None:
    msd = LabelSpec.from_json_labels({"0": "background", "1": "Anterior", "2": "Posterior"})
    assert (msd.mode, msd.names, msd.values) == ("classes", ("background", "Anterior", "Posterior"), (0, 1, 2))
    v2 = LabelSpec.from_json_labels({"background": 0, "PZ": 1, "TZ": 2})
    assert (v2.names, v2.values) == (("background", "PZ", "TZ"), (0, 1, 2))
    regions = LabelSpec.from_json_labels(
        {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, regions_class_order=[1, 2, 3]
    )
    assert regions.mode == "regions" and regions.names == ("whole", "core", "enhancing")
    assert regions.regions == ((1, 2, 3), (2, 3), (3,))
    label = random_label([0, 1, 2, 3])
    np.testing.assert_array_equal(regions.to_label(regions.to_target(label)), label)
    with pytest.raises(InputError):
        LabelSpec.from_json_labels({"background": "zero"})


def test_regions_from_sets_infers_fill_and_rejects_bad_regions() -> None:
    spec = LabelSpec.regions_from_sets(["TC", "WT", "ET"], [[1, 4], [1, 2, 4], [4]])
    assert spec.fill == (1, 2, 4)
    reference = LABEL_SPECS["brats2021"]
    assert (spec.values, spec.regions) == (reference.values, reference.regions)
    with pytest.raises(InputError, match="overlap"):
        LabelSpec.regions_from_sets(["a", "b"], [[1, 2], [2, 3]], fill=[1, 3])
    with pytest.raises(InputError, match="fill"):
        LabelSpec.regions_from_sets(["a", "b"], [[1, 2, 3], [3]])


def test_dict_round_trip_and_registry() -> None:
    for spec in LABEL_SPECS.values():
        assert LabelSpec.from_dict(spec.to_dict()) == spec
        assert get_label_spec(spec.convention) is spec
    assert get_label_spec(LABEL_SPECS["isles22"].to_dict()) == LABEL_SPECS["isles22"]
    with pytest.raises(InputError, match="unknown label convention"):
        get_label_spec("brats2099")
    with pytest.raises(InputError):
        LabelSpec("classes", ("background",), (0,))


# ---------------------------------------------------------------- the spec owns activation, decisions and losses
REGIONS = LabelSpec.regions_from_sets(["whole", "inner"], [[1, 2], [2]])  # fill: whole -> 1, inner -> 2
CLASSES = LabelSpec.classes_from_values([0, 5, 10], ["bg", "a", "b"])


def test_activate_sigmoid_for_regions_softmax_for_classes_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]).view(1, 2, 2, 1, 1)
    np.testing.assert_allclose(REGIONS.activate(logits).view(-1), [0.5, 0.75, 0.75, 0.5], atol=1e-7)
    # Classes: softmax over the channels; logits (0, ln 2, ln 5) -> (1, 2, 5) / 8.
    logits = torch.tensor([0.0, math.log(2.0), math.log(5.0)]).view(1, 3, 1, 1, 1)
    np.testing.assert_allclose(CLASSES.activate(logits).view(-1), [0.125, 0.25, 0.625], atol=1e-7)
    for spec, x in ((REGIONS, torch.randn(2, 2, 3, 4, 5) * 30), (CLASSES, torch.randn(2, 3, 3, 4, 5) * 30)):
        copy = x.clone()
        out = spec.activate(copy, inplace=True)  # the predictor's memory-saving path: same values, no copy
        assert out.data_ptr() == copy.data_ptr()
        torch.testing.assert_close(out, spec.activate(x), rtol=1e-6, atol=1e-7)


def test_structure_and_target_masks_by_hand() -> None:
    # Regions: sigmoid > 0.5, i.e. logit > 0; every region is scored.
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 1.0, 4.0]]).view(1, 2, 3, 1, 1)
    expected = torch.tensor([[True, False, False], [False, True, True]]).view(1, 2, 3, 1, 1)
    assert torch.equal(REGIONS.structure_masks(logits), expected)
    assert torch.equal(REGIONS.target_masks(expected.float()), expected)
    # Classes: the argmax wins; the background channel is not scored (masks of a and b only).
    logits = torch.tensor([[5.0, 0.0, 0.0, 1.0], [0.0, 5.0, 0.0, 2.0], [0.0, 0.0, 5.0, 0.0]]).view(1, 3, 4, 1, 1)
    masks = CLASSES.structure_masks(logits)
    assert masks.shape == (1, 2, 4, 1, 1)
    assert masks.view(2, 4).tolist() == [[False, True, False, True], [False, False, True, False]]
    index = torch.tensor([0, 1, 2, 1]).view(1, 1, 4, 1, 1)  # a to_target output, batched
    assert torch.equal(CLASSES.target_masks(index), masks)
    assert torch.equal(CLASSES.target_masks(index.float()), masks)


def test_structures_names_and_descriptions() -> None:
    assert REGIONS.structure_names == ("whole", "inner")
    assert REGIONS.structures() == {"whole": {1, 2}, "inner": {2}}
    assert CLASSES.structure_names == ("a", "b")
    assert CLASSES.structures() == {"a": {5}, "b": {10}}
    assert REGIONS.describe() == "2 sigmoid regions (whole, inner)"
    assert REGIONS.describe(with_values=True) == "2 sigmoid regions (whole=1+2, inner=2)"
    assert CLASSES.describe() == "2 classes (a, b)"
    assert CLASSES.describe(with_values=True) == "3 softmax classes (bg=0, a=5, b=10)"
    assert LABEL_SPECS["isles22"].describe() == "1 sigmoid region (lesion)"
    assert LabelSpec.classes_from_values([0, 1], ["bg", "fg"]).describe() == "1 class (fg)"


def test_loss_options_by_hand() -> None:
    assert REGIONS.loss_options == {"sigmoid": True, "include_background": True}
    assert CLASSES.loss_options == {"to_onehot_y": True, "softmax": True, "include_background": False}
    # A perfect, confident class prediction: the Dice part (background left out) is ~0, the CE part too.
    index = torch.tensor([0, 1, 2, 1]).view(1, 1, 4, 1, 1)
    logits = one_hot(index, num_classes=3) * 40.0
    assert float(DiceCELoss(**CLASSES.loss_options)(logits, index)) < 1e-4
    # One region: sigmoid Dice + binary cross-entropy, both ~0 for a confident, perfect prediction.
    lesion = LABEL_SPECS["isles22"]
    target = torch.tensor([1.0, 0.0, 1.0]).view(1, 1, 3, 1, 1)
    assert float(DiceCELoss(**lesion.loss_options)((target * 2 - 1) * 40.0, target)) < 1e-4
