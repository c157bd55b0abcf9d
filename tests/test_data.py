"""Validation, label convention and normalisation."""

import numpy as np
import pytest

from napari_sparse_unet.core.data import (
    Normalization,
    annotation_counts,
    annotation_to_target,
    check_finite,
    fit_normalization,
    label_lut,
)
from napari_sparse_unet.core.errors import InputError
from napari_sparse_unet.core.rules import as_channel_first, check_training_pair, painted_values


def validate_pair(image, annotation):
    return check_training_pair(image, annotation)[:2]


def class_values_of(annotations):
    return painted_values([annotation_counts(a) for a in annotations])


def _ann(shape=(4, 5, 6), values=(1, 2)):
    a = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        a[1, i] = v
    return a


def test_channel_first_shapes():
    assert as_channel_first(np.zeros((4, 5, 6))).shape == (1, 4, 5, 6)
    assert as_channel_first(np.zeros((2, 4, 5, 6))).shape == (2, 4, 5, 6)
    assert as_channel_first(np.zeros((5, 6))).shape == (1, 5, 6)
    assert as_channel_first(np.zeros((3, 5, 6)), spatial_dims=2).shape == (3, 5, 6)


@pytest.mark.parametrize("shape", [(7,), (1, 2, 3, 4, 5)])
def test_wrong_dimensions_are_named(shape):
    with pytest.raises(InputError, match=str(len(shape)) + " dimensions"):
        as_channel_first(np.zeros(shape))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError, match=r"\(4, 5, 7\).*\(4, 5, 6\)"):
        validate_pair(np.zeros((4, 5, 7)), _ann())


def test_empty_annotation():
    with pytest.raises(InputError, match="no annotated voxel"):
        validate_pair(np.zeros((4, 5, 6)), np.zeros((4, 5, 6), np.uint8))


def test_only_one_class_says_paint_background():
    with pytest.raises(InputError, match="background \\(label 1\\)"):
        validate_pair(np.zeros((4, 5, 6)), _ann(values=(2,)))
    with pytest.raises(InputError, match="at least one class"):
        validate_pair(np.zeros((4, 5, 6)), _ann(values=(1,)))


def test_nan_and_inf_are_counted():
    image = np.zeros((4, 5, 6), np.float32)
    image[0, 0, :2] = np.nan
    image[3, 4, 5] = np.inf
    with pytest.raises(InputError, match="3 voxels"):
        check_finite(image)
    check_finite(np.zeros((3, 3), np.uint16))  # integers cannot hold NaN


def test_float_annotation_is_rejected():
    with pytest.raises(InputError, match="integer labels"):
        validate_pair(np.zeros((4, 5, 6)), _ann().astype(np.float32))


def test_label_convention_roundtrip():
    values = class_values_of([_ann(values=(1, 3)), _ann(values=(1, 5))])
    assert values == (1, 3, 5)
    lut = label_lut(values)
    assert lut.tolist() == [0, 3, 5] and lut.dtype == np.uint8
    assert label_lut((1, 300)).dtype == np.uint16
    target = annotation_to_target(np.array([0, 1, 3, 5, 4]), values)
    assert target.tolist() == [-1, 0, 1, 2, -1]


def test_normalization_is_robust_to_outliers_and_roundtrips():
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, size=(1, 20, 20, 20)).astype(np.float32)
    image[0, 0, 0, :5] = 1e6  # a few hot pixels
    norm = fit_normalization([image])
    assert 99 < norm.low[0] < 102 and 198 < norm.high[0] < 201
    out = norm.apply(image)
    assert out.dtype == np.float32 and -0.05 < np.median(out) - 0.5 < 0.05
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_constant_image_does_not_divide_by_zero():
    norm = fit_normalization([np.full((1, 4, 4, 4), 7, np.uint8)])
    assert np.isfinite(norm.apply(np.full((1, 4, 4, 4), 7, np.uint8))).all()


def test_normalization_checks_channels():
    norm = Normalization(low=(0.0, 0.0), high=(1.0, 1.0))
    with pytest.raises(InputError, match="1 channels but the model expects 2"):
        norm.apply(np.zeros((1, 3, 3, 3)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_equalised_integer_images_are_mapped_through_a_table_with_the_same_numbers(dtype):
    info = np.iinfo(dtype)
    image = np.random.default_rng(0).integers(info.min, info.max, size=(2, 4, 8, 8), endpoint=True).astype(dtype)
    norm = Normalization(low=(0.0, 5.0), high=(100.0, 50.0), knots=((0.0, 10.0, 90.0, 200.0), (-5.0, 0.0, 3.0, 60.0)))
    expected = norm.apply(image.astype(np.float32))
    assert np.array_equal(norm.apply(image), expected)
