"""The layer adapter and the widget's pure helpers: no viewer, no training.

Arrays are (Z, Y, X); annotations use 0 = not painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_sparse_unet import _layers
from napari_sparse_unet._qt._jobs import ViewedSlice, preview_region
from napari_sparse_unet._qt.widget import parse_patch_size

napari_layers = pytest.importorskip("napari.layers")


def _brute_stats(data: np.ndarray) -> tuple[dict[int, int], dict[int, int], int]:
    voxels = {int(v): int((data == v).sum()) for v in np.unique(data) if v != 0}
    slices = {v: int(sum((data[z] == v).any() for z in range(data.shape[0]))) for v in voxels}
    annotated = int(sum(data[z].any() for z in range(data.shape[0])))
    return voxels, slices, annotated


def test_counter_full_then_incremental_matches_a_recount(rng):
    data = np.zeros((20, 16, 16), np.uint8)
    data[3, 2:6, 2:6] = 1
    data[3, 8:10, 8:12] = 2
    data[11] = rng.integers(0, 4, (16, 16))
    counter = _layers.AnnotationCounter()
    stats = counter.update(data)
    assert (stats.voxels, stats.slices, stats.annotated_slices) == _brute_stats(data)

    # A stroke on slice 15 and an erase on slice 3: only those slices are marked.
    data[15, 0:3, 0:3] = 3
    data[3] = 0
    counter.mark_slices([15])
    counter.mark_range(3, 4)
    stats = counter.update(data)
    assert (stats.voxels, stats.slices, stats.annotated_slices) == _brute_stats(data)
    assert not counter.pending


def test_counter_only_recounts_marked_slices():
    data = np.zeros((4, 8, 8), np.uint8)
    counter = _layers.AnnotationCounter()
    counter.update(data)
    data[2, 0, 0] = 1  # not marked: the counter must not have looked
    assert counter.update(data).voxels == {}
    counter.mark_slices([2])
    assert counter.update(data).voxels == {1: 1}


def test_counter_2d_has_no_slices():
    data = np.zeros((10, 12), np.uint16)
    data[1, 1] = 1
    data[5, 2:4] = 300
    stats = _layers.AnnotationCounter().update(data)
    assert stats.voxels == {1: 1, 300: 2}
    assert stats.slices == {} and stats.ndim == 2


@pytest.mark.parametrize(
    ("voxels", "expected"),
    [
        ({}, "nothing painted"),
        ({2: 10}, "paint some background (label 1) too"),
        ({1: 10}, "paint at least one class"),
        ({1: 10, 2: 3}, None),
        ({-1: 2, 1: 3, 2: 3}, "≥ 0"),
    ],
)
def test_stats_problem_says_what_is_missing(voxels, expected):
    problem = _layers.AnnotationStats(ndim=3, voxels=voxels, annotated_slices=2).problem()
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_stats_hint_for_a_single_slice():
    stats = _layers.AnnotationStats(ndim=3, voxels={1: 5, 2: 5}, annotated_slices=1)
    assert stats.problem() is None and "more slices" in stats.hint()


def test_dirty_slices_of_paint_events():
    masked = SimpleNamespace(slice_key=(slice(4, 6), slice(0, 3), slice(1, 2)))
    setitem = ((np.array([7, 9]), np.array([0, 1]), np.array([0, 1])), np.array([0, 0]), np.array([1, 1]))
    ranges, unknown = _layers.dirty_slices_of_paint([masked, setitem])
    assert ranges == [(4, 6), (7, 10)] and not unknown
    assert _layers.dirty_slices_of_paint([object()])[1]


def test_image_snapshot_axis_conventions():
    volume = napari_layers.Image(np.zeros((5, 6, 7), np.float32), scale=(2, 1, 1), translate=(1, 0, 0))
    snap = _layers.image_snapshot(volume)
    assert snap.data.shape == (1, 5, 6, 7) and snap.scale == (2, 1, 1) and snap.translate == (1, 0, 0)
    assert snap.spatial_dims == 3 and snap.channels == 1

    multi = napari_layers.Image(np.zeros((2, 5, 6, 7), np.float32), scale=(1, 2, 1, 1))
    snap = _layers.image_snapshot(multi)
    assert snap.data.shape == (2, 5, 6, 7) and snap.scale == (2, 1, 1) and snap.channels == 2

    rgb = napari_layers.Image(np.zeros((6, 7, 3), np.uint8), rgb=True)
    snap = _layers.image_snapshot(rgb)
    assert snap.data.shape == (3, 6, 7) and snap.spatial_shape == (6, 7) and len(snap.scale) == 2

    planar = napari_layers.Image(np.zeros((2, 6, 7), np.float32))
    assert _layers.image_snapshot(planar, first_axis_is_channel=True).data.shape == (2, 6, 7)
    assert _layers.image_snapshot(planar).data.shape == (1, 2, 6, 7)


def test_annotation_copy_is_independent_and_shape_checked():
    layer = napari_layers.Labels(np.zeros((4, 5, 6), np.uint8), name="ann")
    copy = _layers.annotation_copy(layer, (4, 5, 6))
    copy[0, 0, 0] = 9
    assert layer.data[0, 0, 0] == 0
    with pytest.raises(_layers.LayerError, match="'ann' has shape"):
        _layers.annotation_copy(layer, (4, 5, 7))


def test_copy_slice_keeps_painted_voxels_maps_background_and_undoes():
    prediction = napari_layers.Labels(np.zeros((3, 4, 4), np.uint8))
    prediction.data[1, :2] = 2
    prediction.data[0] = 3  # another slice: must not be copied
    annotation = napari_layers.Labels(np.zeros((3, 4, 4), np.uint8))
    annotation.data[1, 0, 0] = 1  # the user's paint wins over the prediction
    before = annotation.data.copy()

    changed = _layers.copy_slice_to_annotation(prediction, annotation, axis=0, index=1)

    expected = before.copy()
    expected[1] = np.where(prediction.data[1] == 0, 1, prediction.data[1])
    expected[1, 0, 0] = 1
    np.testing.assert_array_equal(annotation.data, expected)
    assert changed == 15
    annotation.undo()
    np.testing.assert_array_equal(annotation.data, before)


def test_copy_slice_other_axis_and_shape_mismatch():
    prediction = napari_layers.Labels(np.full((3, 4, 5), 2, np.uint8))
    annotation = napari_layers.Labels(np.zeros((3, 4, 5), np.uint8))
    assert _layers.copy_slice_to_annotation(prediction, annotation, axis=2, index=4) == 12
    assert (annotation.data[:, :, 4] == 2).all() and not annotation.data[:, :, :4].any()
    with pytest.raises(_layers.LayerError, match="differ in shape"):
        _layers.copy_slice_to_annotation(prediction, napari_layers.Labels(np.zeros((3, 4, 4), np.uint8)), 0, 0)


@pytest.mark.parametrize(
    ("shape", "view", "depth", "expected"),
    [
        ((20, 8, 8), (0, 10), 4, (slice(8, 12), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (0, 0), 4, (slice(0, 4), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (0, 19), 4, (slice(16, 20), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (2, 5), 3, (slice(0, 20), slice(0, 8), slice(4, 7))),
        ((3, 8, 8), (0, 1), 16, (slice(0, 3), slice(0, 8), slice(0, 8))),  # patch deeper than the volume
        ((20, 8, 8), None, 4, (slice(8, 12), slice(0, 8), slice(0, 8))),
        ((8, 8), None, 4, (slice(0, 8), slice(0, 8))),
    ],
)
def test_preview_region(shape, view, depth, expected):
    assert preview_region(shape, view, depth) == expected


def test_viewed_slice_holder():
    holder = ViewedSlice()
    assert holder.get() is None
    holder.set((0, 3))
    assert holder.get() == (0, 3)


@pytest.mark.parametrize(
    ("text", "dims", "expected"),
    [("auto", 3, None), ("", 3, None), ("48", 3, (48, 48, 48)), ("16, 64,64", 3, (16, 64, 64)),
     ("16x32x32", 3, (16, 32, 32)), ("64", 2, (64, 64))],
)
def test_parse_patch_size(text, dims, expected):
    assert parse_patch_size(text, dims) == expected


@pytest.mark.parametrize("text", ["big", "16,16", "0,8,8"])
def test_parse_patch_size_rejects(text):
    with pytest.raises(ValueError, match="patch size"):
        parse_patch_size(text, 3)


def test_importing_the_widget_does_not_import_torch():
    src = Path(__file__).resolve().parents[1] / "src"
    code = "import sys, napari_sparse_unet._qt.widget; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
