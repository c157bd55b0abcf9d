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

napari_layers = pytest.importorskip("napari.layers")


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
    fitting = _layers.image_snapshot(napari_layers.Image(np.zeros((4, 5, 6)), name="img"))
    copy = _layers.annotation_copy(layer, fitting)
    copy[0, 0, 0] = 9
    assert layer.data[0, 0, 0] == 0
    other = _layers.image_snapshot(napari_layers.Image(np.zeros((4, 5, 7)), name="img"))
    with pytest.raises(_layers.LayerError, match="'ann' has shape"):
        _layers.annotation_copy(layer, other)


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


def test_importing_the_widget_imports_neither_torch_nor_pyqtgraph():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        "import sys, napari_sparse_unet._qt.widget; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'pyqtgraph' not in sys.modules, 'pyqtgraph imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
