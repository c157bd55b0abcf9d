"""Instances from a prediction: watershed splits touching objects, components do not, specks go, bad classes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparse_unet.core.errors import ConfigError, InputError
from napari_sparse_unet.core.analysis.instances import ClassProbabilityWriter, InstanceConfig, segment_instances
from napari_sparse_unet.core.rules import check_instance_class


def touching_balls() -> np.ndarray:
    """(20, 40, 60) uint8: two overlapping balls of class 2, a one-voxel speck of 2, a small box of class 3."""
    z, y, x = np.mgrid[:20, :40, :60]
    labels = np.zeros((20, 40, 60), np.uint8)
    for cx in (18, 33):  # centres 15 apart, radius 9: they touch through a neck
        labels[(z - 10) ** 2 + (y - 20) ** 2 + (x - cx) ** 2 <= 81] = 2
    labels[2, 2, 2] = 2
    labels[14:18, 32:36, 50:56] = 3
    return labels


def test_watershed_splits_touching_objects_and_components_do_not():
    labels = touching_balls()
    split = segment_instances(labels, InstanceConfig(2, method="watershed", min_size=5))
    joined = segment_instances(labels, InstanceConfig(2, method="components", min_size=5))
    assert split.dtype == np.int32 and joined.dtype == np.int32
    assert split.max() == 2 and joined.max() == 1
    # The cut runs between the two centres: each centre in its own object, all of class 2 covered.
    assert split[10, 20, 18] != split[10, 20, 33]
    assert np.array_equal(split > 0, joined > 0)
    sizes = np.bincount(split.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.05 * sizes.sum()


def test_min_size_removes_specks_and_numbers_objects_from_one():
    labels = touching_balls()
    kept = segment_instances(labels, InstanceConfig(2, method="components", min_size=0))
    assert kept.max() == 2 and kept[2, 2, 2] > 0  # the speck is an object of its own
    cleaned = segment_instances(labels, InstanceConfig(2, method="components", min_size=2))
    assert cleaned.max() == 1 and cleaned[2, 2, 2] == 0
    assert set(np.unique(cleaned)) == {0, 1}


def test_class_choice_and_the_probability_landscape():
    labels = touching_balls()
    box = segment_instances(labels, InstanceConfig(3, method="components"))
    assert box.max() == 1 and np.array_equal(box > 0, labels == 3)
    # A probability with two peaks (one per ball) splits them too; it is kept as float16 per slab.
    z, y, x = np.mgrid[:20, :40, :60]
    peaks = np.maximum(np.exp(-((x - 18) ** 2 + (y - 20) ** 2 + (z - 10) ** 2) / 60.0),
                       np.exp(-((x - 33) ** 2 + (y - 20) ** 2 + (z - 10) ** 2) / 60.0))
    probabilities = np.stack([1 - peaks, peaks]).astype(np.float32)
    writer = ClassProbabilityWriter(labels.shape, 1)
    for start in range(0, 20, 7):
        writer(slice(start, start + 7), probabilities[:, start : start + 7])
    assert writer.out.dtype == np.float16 and np.allclose(writer.out, peaks, atol=1e-3)
    split = segment_instances(labels, InstanceConfig(2, landscape="probability", min_size=5), probability=writer.out)
    assert split.max() == 2 and split[10, 20, 18] != split[10, 20, 33]


def test_clear_errors_for_classes_and_settings():
    with pytest.raises(InputError, match="no such class; its classes are 2, 3"):
        check_instance_class(5, (1, 2, 3))
    with pytest.raises(InputError, match="background"):
        check_instance_class(1, (1, 2, 3))
    assert check_instance_class(3, (1, 2, 3)) == 2
    with pytest.raises(ConfigError, match="unknown instance method 'blobs'"):
        InstanceConfig(2, method="blobs")
    with pytest.raises(ConfigError, match="unknown watershed landscape"):
        InstanceConfig(2, landscape="height")
    with pytest.raises(ConfigError, match="minimum instance size"):
        InstanceConfig(2, min_size=-1)
