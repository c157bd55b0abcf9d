"""The generated sample volume and the napari sample-data hook."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_sparse_unet._sample_data import (
    CLASS_NAMES,
    DEFAULT_SHAPE,
    SPACING,
    make_sample_data,
    make_sample_volume,
    painted_slice_indices,
)


@pytest.fixture(scope="module")
def sample():
    start = time.process_time()  # CPU time: other jobs on a shared machine do not count
    volume = make_sample_volume()
    return volume, time.process_time() - start


def test_shapes_dtypes_and_speed(sample):
    (image, truth, annotation), seconds = sample
    assert image.shape == truth.shape == annotation.shape == DEFAULT_SHAPE
    assert image.dtype == np.uint16 and truth.dtype == np.uint8 and annotation.dtype == np.uint8
    assert seconds < 2.0


def test_every_class_is_present_and_painted(sample):
    (image, truth, annotation), _ = sample
    assert set(np.unique(truth)) == set(range(len(CLASS_NAMES)))
    counts = np.bincount(truth.ravel(), minlength=len(CLASS_NAMES))
    assert all(counts[c] > 1000 for c in range(1, len(CLASS_NAMES))), counts
    # Convention: 0 not painted, 1 background, 2.. classes (ground truth + 1), all painted.
    assert set(np.unique(annotation)) == {0, 1, 2, 3, 4}


def test_four_painted_slices_follow_the_ground_truth(sample):
    (image, truth, annotation), _ = sample
    painted = [z for z in range(annotation.shape[0]) if annotation[z].any()]
    assert painted == painted_slice_indices(annotation.shape[0], 4).tolist()
    assert len(painted) == 4
    for z in painted:
        np.testing.assert_array_equal(annotation[z], truth[z] + 1)  # every voxel of the slice is painted
    assert not annotation[[z for z in range(annotation.shape[0]) if z not in painted]].any()


def test_painted_slices_skip_the_outer_tenth():
    np.testing.assert_array_equal(painted_slice_indices(40, 4), [4, 14, 25, 35])
    assert painted_slice_indices(100, 3).tolist() == [10, 50, 89]
    assert painted_slice_indices(5, 4).tolist() == [0, 1, 3, 4]  # too short for a margin
    with pytest.raises(ValueError):
        painted_slice_indices(10, 0)


def test_a_threshold_cannot_separate_the_classes(sample):
    """Object intensity ranges overlap: intensity alone does not tell the classes apart."""
    (image, truth, _), _ = sample
    ranges = {c: np.percentile(image[truth == c], [10, 90]) for c in range(len(CLASS_NAMES))}
    for a in range(1, len(CLASS_NAMES)):
        for b in range(a + 1, len(CLASS_NAMES)):
            (lo_a, hi_a), (lo_b, hi_b) = ranges[a], ranges[b]
            assert lo_a < hi_b and lo_b < hi_a, (CLASS_NAMES[a], CLASS_NAMES[b], ranges)
    # and the brighter background overlaps the dimmer objects
    assert np.percentile(image[truth == 0], 99.5) > np.percentile(image[truth > 0], 5)


def test_same_seed_same_volume_other_seed_other_volume():
    a = make_sample_volume(shape=(12, 40, 40), seed=3)
    b = make_sample_volume(shape=(12, 40, 40), seed=3)
    c = make_sample_volume(shape=(12, 40, 40), seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.image, c.image)


def test_small_volumes_still_hold_every_class():
    image, truth, annotation = make_sample_volume(shape=(16, 48, 48), seed=1)
    assert set(np.unique(truth)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="shape"):
        make_sample_volume(shape=(48, 48))


def test_napari_hook_returns_image_and_labels_layers():
    layers = make_sample_data()
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (image, image_meta, _), (labels, labels_meta, _) = layers
    assert image.shape == labels.shape == DEFAULT_SHAPE
    assert image_meta["name"] == "sample image" and labels_meta["name"] == "annotation"
    assert tuple(image_meta["scale"]) == tuple(labels_meta["scale"]) == SPACING
    assert labels_meta["metadata"]["class_names"] == {1: "background", 2: "nuclei", 3: "vesicles", 4: "filaments"}
    assert np.issubdtype(labels.dtype, np.integer)
