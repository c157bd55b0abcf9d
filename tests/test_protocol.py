"""The sparse-annotation protocol and Dice scoring of benchmarks/protocol.py, on tiny arrays with exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import protocol


# --------------------------------------------------------------------------- slice choice


@pytest.mark.parametrize(
    ("size", "k", "expected"),
    [
        (30, 3, [3, 15, 26]),  # 3 skipped at each end; 3 .. 26, middle 14.5 rounds up
        (30, 5, [3, 9, 15, 20, 26]),  # linspace 3, 8.75, 14.5, 20.25, 26
        (10, 2, [1, 8]),
        (10, 1, [4]),  # the middle of 1 .. 8
        (112, 5, [12, 34, 56, 77, 99]),  # ceil(11.2) = 12 skipped: 12 .. 99
        (8, 6, [1, 2, 3, 4, 5, 6]),  # exactly as many slices as the inner part holds
    ],
)
def test_choose_slices_exact(size: int, k: int, expected: list[int]) -> None:
    assert protocol.choose_slices(size, k) == expected


@pytest.mark.parametrize("size", [10, 16, 30, 32, 101, 112, 512])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_choose_slices_count_spacing_and_margin(size: int, k: int) -> None:
    slices = protocol.choose_slices(size, k)
    skip = math.ceil(0.1 * size)
    assert len(slices) == len(set(slices)) == k
    assert all(skip <= s <= size - 1 - skip for s in slices)  # the outer 10 % is never annotated
    gaps = np.diff(slices)
    assert np.all(gaps >= 1) and (k < 3 or gaps.max() - gaps.min() <= 1)  # even up to rounding
    if k > 1:
        assert slices[0] == skip and slices[-1] == size - 1 - skip


def test_choose_slices_rejects_impossible() -> None:
    with pytest.raises(ValueError, match="cannot choose 7"):
        protocol.choose_slices(8, 7)
    with pytest.raises(ValueError, match="k must be"):
        protocol.choose_slices(8, 0)


def test_spread_over_axes_and_plan_names() -> None:
    assert protocol.spread_over_axes(5) == (2, 2, 1)
    assert protocol.spread_over_axes(3) == (1, 1, 1)
    assert protocol.spread_over_axes(1) == (1, 0, 0)
    plan = protocol.make_plan((30, 20, 10), (2, 2, 1))
    assert plan == {0: [3, 26], 1: [2, 17], 2: [4]}
    assert protocol.plan_name(plan) == "k5-2z2y1x"
    assert protocol.plan_name(protocol.make_plan((30, 20, 10), (5, 0, 0))) == "k5-z"


# --------------------------------------------------------------------------- annotation


def test_sparse_annotation_is_truth_plus_one_on_chosen_slices_only() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(10, 4, 5)).astype(np.uint8)
    annotation = protocol.sparse_annotation(labels, {0: [1, 8]})
    assert annotation.dtype == np.uint8
    np.testing.assert_array_equal(annotation[[1, 8]], labels[[1, 8]] + 1)
    others = np.setdiff1d(np.arange(10), [1, 8])
    assert not annotation[others].any()
    assert annotation[[1, 8]].min() == 1  # background is painted as 1, never left at 0


def test_sparse_annotation_over_several_axes() -> None:
    labels = np.arange(4 * 5 * 6).reshape(4, 5, 6) % 3
    annotation = protocol.sparse_annotation(labels, {0: [2], 2: [1, 4]})
    annotated = annotation > 0
    expected = np.zeros_like(annotated)
    expected[2] = True
    expected[:, :, [1, 4]] = True
    np.testing.assert_array_equal(annotated, expected)
    np.testing.assert_array_equal(annotation[annotated], labels[annotated] + 1)
    assert annotated.sum() == 30 + 2 * 20 - 2 * 5  # plane + two planes - their shared lines


def test_dense_annotation_and_wide_labels() -> None:
    labels = np.array([[[0, 1], [2, 255]]], dtype=np.uint8)
    annotation = protocol.dense_annotation(labels)
    assert annotation.dtype == np.uint16  # 255 + 1 does not fit in uint8
    np.testing.assert_array_equal(annotation, labels.astype(np.uint16) + 1)


def test_prediction_back_to_ground_truth_classes() -> None:
    # Plugin output: background 0, class c painted as c + 1; a stray 1 is background.
    prediction = np.array([0, 2, 3, 8, 1])
    np.testing.assert_array_equal(protocol.to_ground_truth(prediction), [0, 1, 2, 7, 0])


def test_halves_and_split_axis() -> None:
    array = np.arange(3 * 5 * 4).reshape(3, 5, 4)
    assert protocol.split_axis((30, 512, 512)) == 1  # z-thin EM: Y halves
    assert protocol.split_axis((112, 101, 122)) == 2
    first, second = protocol.halves(array, 1)
    assert first.shape == (3, 2, 4) and second.shape == (3, 3, 4)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), array)


def test_center_crop() -> None:
    array = np.arange(6 * 8).reshape(1, 6, 8)
    crop = protocol.center_crop(array, (None, 2, 20))
    np.testing.assert_array_equal(crop, array[:, 2:4, :])


# --------------------------------------------------------------------------- Dice


def test_dice_on_unannotated_voxels_hand_computed() -> None:
    # Four slices of 1 x 4; slice 0 annotated, so it is not scored.
    truth = np.array([[[0, 0, 1, 1]], [[0, 1, 1, 2]], [[0, 0, 2, 2]], [[1, 1, 1, 0]]])
    pred = np.array([[[2, 2, 2, 2]], [[0, 1, 1, 1]], [[0, 1, 2, 2]], [[1, 1, 0, 0]]])
    annotation = protocol.sparse_annotation(truth, {0: [0]})
    result = protocol.score(truth, pred, 3, protocol.unannotated(annotation))
    assert result.scored_voxels == 12
    # Scored voxels (slices 1-3):
    #   class 0: truth 4, pred 4, both 3 -> 6/8;  class 1: truth 5, pred 6, both 4 -> 8/11;
    #   class 2: truth 3, pred 2, both 2 -> 4/5.
    assert result.dice == pytest.approx((6 / 8, 8 / 11, 4 / 5))
    assert result.mean_foreground == pytest.approx((8 / 11 + 4 / 5) / 2)
    # The annotated slice, all wrong, would have changed every figure.
    assert protocol.score(truth, pred, 3).dice != pytest.approx(result.dice)


def test_dice_nan_for_class_absent_from_truth_and_prediction() -> None:
    truth = np.array([0, 0, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0])
    result = protocol.score(truth, pred, 3)
    assert result.dice[0] == pytest.approx(2 * 2 / (3 + 2))
    assert result.dice[1] == pytest.approx(2 * 2 / (2 + 3))
    assert math.isnan(result.dice[2])
    assert result.mean_foreground == pytest.approx(0.8)  # class 2 is excluded, not counted as 0 or 1
    assert result.to_dict()["dice"][2] is None  # JSON has no NaN


def test_dice_zero_for_missed_or_invented_class() -> None:
    truth = np.array([0, 2, 2, 0])
    missed = protocol.score(truth, np.array([0, 0, 0, 0]), 3)  # never predicted (e.g. never annotated)
    invented = protocol.score(np.array([0, 0, 0, 0]), np.array([0, 2, 0, 0]), 3)
    assert missed.dice[2] == 0.0 and invented.dice[2] == 0.0
    assert math.isnan(missed.dice[1])
    assert missed.mean_foreground == 0.0


def test_mean_foreground_all_undefined_is_nan() -> None:
    result = protocol.score(np.zeros(4, int), np.zeros(4, int), 2)
    assert result.dice[0] == 1.0 and math.isnan(result.dice[1]) and math.isnan(result.mean_foreground)


def test_confusion_rejects_mismatch_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="differ"):
        protocol.confusion(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="< 2"):
        protocol.confusion(np.array([0, 2]), np.array([0, 1]), 2)


def test_real_volume_annotation_fraction() -> None:
    folder = protocol.DATA_DIR / "plantseg_ovule"
    if not folder.is_dir():
        pytest.skip(f"benchmark data not found at {folder}")
    volume = protocol.load_volume("plantseg_ovule")
    assert volume.labels.shape == (32, 128, 128) and volume.spacing == (0.235, 0.15, 0.15)
    annotation = protocol.sparse_annotation(volume.labels, protocol.make_plan(volume.labels.shape, (5, 0, 0)))
    assert (annotation > 0).mean() == pytest.approx(5 / 32)
    assert set(np.unique(annotation)) == {0, 1, 2}


def test_train_and_predict_parts_of_both_settings() -> None:
    image = np.arange(2 * 4 * 6 * 5, dtype=np.float32).reshape(2, 4, 6, 5)  # (C, Z, Y, X)
    labels = np.arange(4 * 6 * 5).reshape(4, 6, 5)
    train_image, predict_image, train_labels, truth, axis = protocol.train_and_predict_parts(image, labels, False)
    assert train_image is image and predict_image is image and train_labels is labels and truth is labels and axis is None
    train_image, predict_image, train_labels, truth, axis = protocol.train_and_predict_parts(image, labels, True)
    assert axis == 1  # Y, the longest
    assert train_image.shape == predict_image.shape == (2, 4, 3, 5) and train_labels.shape == truth.shape == (4, 3, 5)
    np.testing.assert_array_equal(truth, labels[:, 3:])
    np.testing.assert_array_equal(predict_image, image[:, :, 3:])
