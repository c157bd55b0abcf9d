"""Corrections painted in napari while the widget trains join the training within seconds.

A real napari window (virtual display) trains on the generated sample with
previews every second; a slice the sample leaves unpainted is viewed, its
preview's errors are painted over with the true classes, and the test waits
for the trainer to count the strokes and for the preview of that slice to follow
them (a quarter of the painted errors gone at least).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TIMEOUT_MS = 180_000
LATENCY = 10.0  # seconds from the stroke to a changed preview of its slice


def test_a_correction_painted_while_training_reaches_the_preview(make_napari_viewer, qtbot):
    from napari_sparse_unet._layers import PREDICTION_KEY
    from napari_sparse_unet._qt.widget import SparseUNetWidget
    from napari_sparse_unet._sample_data import make_sample_volume

    image, truth, annotation = make_sample_volume(shape=(24, 96, 96), seed=3)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="image")
    layer = viewer.add_labels(annotation, name="annotation")
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=TIMEOUT_MS)
    training = widget.training
    training.preset_combo.setCurrentIndex(training.preset_combo.findData("cpu"))
    training.device_combo.setCurrentIndex(training.device_combo.findData("cpu"))
    training.time_spin.setValue(60)
    training.preview_spin.setValue(1.0)
    unpainted = np.flatnonzero(~annotation.reshape(len(annotation), -1).any(axis=1))
    z = int(unpainted[len(unpainted) // 2])
    viewer.dims.set_current_step(0, z)
    assert widget.train()

    def prediction():
        return next((l for l in viewer.layers if PREDICTION_KEY in l.metadata), None)

    previews = []  # (time, step) of each preview shown
    shown = widget.training_flow._show_preview

    def record(preview):
        shown(preview)
        previews.append((time.perf_counter(), preview.step))

    widget.training_flow._show_preview = record
    # A first preview of the slice (on a loaded machine the first ones can take a while).
    qtbot.waitUntil(lambda: len(previews) >= 1 and prediction() is not None, timeout=TIMEOUT_MS)
    trainer = widget.runner.job.trainer
    before_voxels = trainer.painted_voxels
    before = np.array(prediction().data[z])
    target = np.where(truth[z] == 0, 0, truth[z] + 1)  # the prediction shows background as 0, classes as painted
    wrong = before != target
    if wrong.sum() < 50:  # a good preview already: correct a block instead
        wrong[:] = False
        wrong[30:60, 30:60] = True
    ys, xs = np.nonzero(wrong)
    stroke = (np.full(len(ys), z), ys, xs)
    painted_at = time.perf_counter()
    layer.data_setitem(stroke, (truth[z][wrong] + 1).astype(layer.data.dtype))  # a brush stroke's path
    after_stroke = len(previews)

    def counted():
        return trainer.painted_voxels >= before_voxels + len(ys)

    qtbot.waitUntil(counted, timeout=int(1000 * LATENCY))
    counted_after = time.perf_counter() - painted_at

    def changed():
        """A preview made after the stroke, with a quarter fewer errors on the stroke at least."""
        if len(previews) <= after_stroke or previews[-1][0] <= painted_at:
            return False
        still_wrong = np.array(prediction().data[z])[wrong] != target[wrong]
        return bool(still_wrong.sum() <= 0.75 * wrong.sum())

    qtbot.waitUntil(changed, timeout=int(1000 * LATENCY))
    latency = previews[-1][0] - painted_at
    now = np.array(prediction().data[z])
    figures = {
        "stroke_voxels": int(len(ys)), "counted_after_s": round(counted_after, 2), "preview_changed_after_s": round(latency, 2),
        "wrong_on_stroke_before": int((before[wrong] != target[wrong]).sum()), "wrong_on_stroke_now": int((now[wrong] != target[wrong]).sum()),
    }
    print(json.dumps(figures))
    widget.runner.stop()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert widget.model is not None
    widget.shutdown()
