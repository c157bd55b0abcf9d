"""The dock widget driven end to end in a real napari viewer (virtual display).

Volumes are tiny (12, 32, 32) and the network tiny (base 4, depth 2, patch
8×16×16), so a training run is a few CPU steps.  Arrays are (Z, Y, X);
annotations use 0 = not painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 180_000  # generous: a shared, loaded CI machine can take a minute to import torch


def _notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def _errors_since(count: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity

    return [n.message for n in _notifications()[count:] if n.severity == NotificationSeverity.ERROR]


def configure_tiny(widget, steps: int = 4, preview: float = 0.0) -> None:
    """Settings for a run of a few CPU steps."""
    widget.training.time_spin.setValue(0)
    widget.training.steps_spin.setValue(steps)
    widget.training.patch_edit.setText("8,16,16")
    widget.training.batch_spin.setValue(1)
    widget.training.channels_spin.setValue(4)
    widget.training.depth_spin.setValue(2)
    widget.training.validation_check.setChecked(False)
    widget.training.preview_spin.setValue(preview)
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def wait_for_step(qtbot, widget, step: int) -> None:
    """Wait until the progress shows training step ``step`` or later (warm-up steps can be too fast to see each)."""

    def reached() -> bool:  # a bool: pytest-qt takes a callback returning None as already passed
        shown = re.search(r"step (\d+)/", widget.progress.loss_label.text())
        return shown is not None and int(shown.group(1)) >= step

    qtbot.waitUntil(reached, timeout=TIMEOUT_MS)


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot, tiny_volume):
    """A viewer with the tiny image and its annotation, and the widget docked."""
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    image, _, annotation = tiny_volume
    viewer = make_napari_viewer()
    viewer.add_image(image, name="image", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    viewer.add_labels(annotation, name="annotation", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse U-Net")
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=TIMEOUT_MS)  # torch imported off-thread
    yield viewer, widget
    widget.shutdown()


@pytest.fixture
def trained(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    configure_tiny(widget)
    assert widget.train()
    wait_idle(qtbot, widget)
    assert widget.model is not None
    return viewer, widget


def test_manifest_opens_widget_and_sample(make_napari_viewer, npe2pm, qtbot):
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_file(REPO / "src" / "napari_sparse_unet" / "napari.yaml"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sparse-unet", "sparse_unet_sample")
    kinds = {type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"Image", "Labels"}
    _, widget = viewer.window.add_plugin_dock_widget("napari-sparse-unet", "Sparse U-Net")
    assert type(widget).__name__ == "SparseUNetWidget"
    # The painted sample is picked and counted without any click.
    assert widget.image_layer is not None and widget.annotation_layer is not None
    stats = widget.update_stats()
    assert stats is not None and stats.problem() is None
    assert "nuclei" in widget.data.stats_label.text()  # class names from the sample's layer metadata
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=TIMEOUT_MS)
    widget.shutdown()


def test_pickers_preselect_and_stats_follow_painting(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="unrelated")
    assert widget.image_layer is viewer.layers["image"]
    assert widget.annotation_layer is viewer.layers["annotation"]
    stats = widget.update_stats()
    assert stats.annotated_slices == 2 and set(stats.class_values) == {1, 2, 3}
    assert "2 of 12 Z slices" in widget.data.stats_label.text()

    # Painting (an undoable edit, like a brush stroke) updates the counts after the debounce.
    layer = viewer.layers["annotation"]
    z, y, x = np.meshgrid([9], np.arange(4), np.arange(5), indexing="ij")
    layer.data_setitem((z.ravel(), y.ravel(), x.ravel()), 2)
    qtbot.waitUntil(lambda: "3 of 12 Z slices" in widget.data.stats_label.text(), timeout=5000)
    # Undo is followed by a refresh of the viewed slice only: view slice 9, undo, and it is recounted.
    viewer.dims.set_current_step(0, 9)
    layer.undo()
    qtbot.waitUntil(lambda: "2 of 12 Z slices" in widget.data.stats_label.text(), timeout=5000)


def test_new_annotation_layer_and_what_is_missing(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    before = len(_notifications())
    layer = widget.data.new_annotation_button.click() or widget.annotation_layer
    assert layer is not viewer.layers["annotation"]
    assert layer.data.shape == (12, 32, 32) and not layer.data.any()
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    np.testing.assert_allclose(layer.translate, (4, 0, 0))
    assert viewer.layers.selection.active is layer and layer.mode == "paint"
    qtbot.waitUntil(lambda: "Nothing painted" in widget.data.stats_label.text(), timeout=5000)

    layer.data_setitem((np.array([3, 3]), np.array([1, 2]), np.array([1, 1])), 2)
    qtbot.waitUntil(lambda: "background (label 1) too" in widget.data.stats_label.text(), timeout=5000)
    assert not widget.train()
    assert any("background (label 1)" in m for m in _errors_since(before))
    assert not widget.busy and widget.training.train_button.isEnabled()


def test_train_shows_progress_and_leaves_layers_unchanged(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    image = viewer.layers["image"].data.copy()
    annotation = viewer.layers["annotation"].data.copy()
    configure_tiny(widget, steps=3)
    assert widget.train()
    assert widget.busy and not widget.training.train_button.isEnabled() and widget.training.stop_button.isEnabled()
    wait_idle(qtbot, widget)
    assert widget.model is not None and widget.model.class_values == (1, 2, 3)
    assert widget.progress.progress_bar.value() == 1000
    assert "step 3/3" in widget.progress.loss_label.text() and "loss" in widget.progress.loss_label.text()
    assert "Training finished" in widget.progress.status_label.text()
    assert "classes" in widget.model_panel.model_label.text()
    np.testing.assert_array_equal(viewer.layers["image"].data, image)
    np.testing.assert_array_equal(viewer.layers["annotation"].data, annotation)
    assert widget.training.train_button.isEnabled() and not widget.training.stop_button.isEnabled()
    assert widget.prediction.predict_button.isEnabled() and widget.training.train_button.text() == "Train more"


def test_event_loop_runs_and_stop_keeps_the_best_model(viewer_widget, qtbot):
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_widget
    configure_tiny(widget, steps=100_000)
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    frozen_before = gc.get_freeze_count()
    assert widget.train()
    wait_for_step(qtbot, widget, 3)
    # The garbage collector's full passes skip what existed at the click (a pass over napari's
    # and torch's objects stalls the event loop for 0.2 s), until the job ends.
    assert gc.get_freeze_count() > frozen_before
    started = len(ticks)
    qtbot.wait(500)
    timer.stop()
    # The main thread kept serving its timer (~25 ticks in 0.5 s) while the worker trained.
    assert len(ticks) - started >= 10
    gaps = np.diff(ticks[started:])
    assert gaps.max() < 0.5, f"main thread blocked for {gaps.max():.2f} s"

    stop = time.perf_counter()
    widget.training.stop_button.click()
    wait_idle(qtbot, widget, timeout=10_000)
    assert time.perf_counter() - stop < 2.0
    assert gc.get_freeze_count() == frozen_before
    assert widget.model is not None and "stopped" in widget.progress.status_label.text()
    assert widget.model.history["steps"] >= 3


def test_predict_copy_save_load(trained, qtbot, tmp_path, monkeypatch):
    viewer, widget = trained
    image = viewer.layers["image"].data.copy()
    annotation_layer = viewer.layers["annotation"]

    widget.prediction.probabilities_check.setChecked(True)
    widget.prediction.tta_check.setChecked(True)
    assert widget.predict_config().tta
    widget.prediction.tta_check.setChecked(False)  # flips multiply the time; the core tests what they compute
    assert widget.predict()
    wait_idle(qtbot, widget)
    prediction = viewer.layers["prediction"]
    names = [layer.name for layer in viewer.layers if layer.name.startswith("probability")]
    assert names == ["probability class 2", "probability class 3"]
    probability = viewer.layers[names[0]].data
    assert probability.shape == (12, 32, 32) and 0 <= probability.min() and probability.max() <= 1
    widget.prediction.probabilities_check.setChecked(False)
    assert prediction.data.shape == (12, 32, 32)
    assert set(np.unique(prediction.data)) <= {0, 2, 3}
    np.testing.assert_allclose(prediction.scale, (2, 1, 1))
    np.testing.assert_allclose(prediction.translate, (4, 0, 0))
    assert prediction.get_color(2) is not None
    np.testing.assert_allclose(prediction.get_color(2), annotation_layer.get_color(2))
    np.testing.assert_array_equal(viewer.layers["image"].data, image)

    # Predict again: the same layer is updated, not a new one added.
    n_layers = len(viewer.layers)
    assert widget.predict()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_layers

    # Copy the viewed slice (z = 6, unpainted) into the annotation; Ctrl+Z restores it.
    before = annotation_layer.data.copy()
    viewer.dims.set_current_step(0, 6)
    changed = widget.copy_slice()
    assert changed == 32 * 32
    expected = np.where(prediction.data[6] == 0, 1, prediction.data[6])
    np.testing.assert_array_equal(annotation_layer.data[6], expected)
    np.testing.assert_array_equal(np.delete(annotation_layer.data, 6, axis=0), np.delete(before, 6, axis=0))
    annotation_layer.undo()
    np.testing.assert_array_equal(annotation_layer.data, before)

    # Save and load through the (replaced) file dialogs.
    path = tmp_path / "tiny.pt"
    monkeypatch.setattr(widget.model_panel, "ask_save_path", lambda: str(path))
    assert widget.model_panel.save_model() == str(path) and path.is_file()
    classes = widget.model.class_values
    widget.model = None
    monkeypatch.setattr(widget.model_panel, "ask_open_path", lambda: str(path))
    loaded = widget.model_panel.load_model()
    assert loaded is not None and loaded.class_values == classes
    assert "classes" in widget.model_panel.model_label.text() and "patch 8×16×16" in widget.model_panel.model_label.text()

    # Train more fine-tunes the loaded model: the step count continues.
    steps = widget.model.history["steps"]
    assert widget.train()
    wait_idle(qtbot, widget)
    assert widget.model.history["steps"] == steps + 4

    # With a loaded model, Predict needs no annotation at all.
    viewer.layers.remove(annotation_layer)
    viewer.layers.remove(prediction)
    assert widget.annotation_layer is None and widget.prediction.predict_button.isEnabled()
    assert widget.predict()
    wait_idle(qtbot, widget)
    assert "prediction" in viewer.layers


def test_worker_failure_is_notified_and_buttons_return(viewer_widget, qtbot):
    _, widget = viewer_widget
    configure_tiny(widget)
    widget.training.patch_edit.setText("5,16,16")  # not a multiple of the network's down-sampling: refused in the worker
    before = len(_notifications())
    assert widget.train()
    wait_idle(qtbot, widget)
    errors = _errors_since(before)
    assert errors and "patch size" in errors[-1]
    assert "failed" in widget.progress.status_label.text()
    assert widget.training.train_button.isEnabled() and not widget.training.stop_button.isEnabled()


def test_one_job_at_a_time_through_one_runner(viewer_widget, qtbot):
    _, widget = viewer_widget
    configure_tiny(widget, steps=500)
    assert widget.train()
    # Refused at once, also while the job's start is still being staged.
    assert widget.busy and not widget.train() and not widget.predict()
    assert not widget.runner.start(object(), yielded=print, returned=print, failed=print, aborted=print)
    for button in (widget.training.train_button, widget.prediction.predict_button, widget.model_panel.export_button):
        assert not button.isEnabled()
    wait_for_step(qtbot, widget, 1)
    widget.runner.stop()
    wait_idle(qtbot, widget)
    assert widget.training.train_button.isEnabled() and widget.model is not None


def test_a_runtime_error_in_a_job_reaches_the_user_and_frees_the_widget(viewer_widget, qtbot):
    # superqt's generator worker only warns about a RuntimeError (torch's out-of-memory and shape
    # errors) and never reports the job finished: the runner must turn it into a failure.
    from napari_sparse_unet.jobs import Job

    class Failing(Job):
        def _work(self):
            yield "started"
            raise RuntimeError("out of memory")

    _, widget = viewer_widget
    failures = []
    assert widget.runner.start(Failing(), yielded=lambda _: None, returned=lambda _: None, failed=failures.append,
                               aborted=lambda: None)
    wait_idle(qtbot, widget)
    assert failures == ["RuntimeError: out of memory"]
    assert widget.training.train_button.isEnabled()


def test_bad_input_is_refused_on_the_main_thread(viewer_widget):
    viewer, widget = viewer_widget
    before = len(_notifications())
    assert not widget.predict()  # no model yet
    viewer.add_labels(np.zeros((12, 16, 16), np.uint8), name="small")
    widget.data.set_annotation_layer(viewer.layers["small"])
    assert not widget.train()
    widget.training.patch_edit.setText("big")
    widget.data.set_annotation_layer(viewer.layers["annotation"])
    assert not widget.train()
    errors = _errors_since(before)
    assert any("Train or load a model" in m for m in errors)
    assert any("'small' has shape" in m for m in errors)
    assert any("patch size 'big'" in m for m in errors)
    assert not widget.busy


def test_removing_the_widget_stops_training(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    configure_tiny(widget, steps=100_000)
    assert widget.train()
    # The voxel head's first steps take milliseconds: any step past the first shows training is under way.
    wait_for_step(qtbot, widget, 2)
    job, worker = widget.runner.job, widget.runner.worker
    viewer.window.remove_dock_widget(widget)  # the dock's close button does this
    assert job.done.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=5000)


def test_preview_covers_the_visible_region_when_zoomed(make_napari_viewer, qtbot, tiny_volume):
    from napari_sparse_unet._layers import PREDICTION_KEY
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    image, _, annotation = tiny_volume
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="image", scale=(2.0, 1.0, 1.0))
    viewer.add_labels(annotation, name="annotation", scale=(2.0, 1.0, 1.0))
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 6)
    viewer.camera.center = (12, 4, 4)
    viewer.camera.zoom = viewer.camera.zoom * 6  # only the top-left corner is on screen

    def zoomed_in():
        box = widget.view.viewed.snapshot()[1]
        return box is not None and box[1][1] < 24 and box[2][1] < 24

    qtbot.waitUntil(zoomed_in, timeout=5000)
    box = widget.view.viewed.snapshot()[1]
    assert box[0] == (0, 12) and box[1][0] <= 4 and box[2][0] <= 4

    configure_tiny(widget, steps=40, preview=0.1)  # enough steps for a model that predicts foreground
    assert widget.train()
    wait_idle(qtbot, widget)
    previews = [layer for layer in viewer.layers if PREDICTION_KEY in layer.metadata]
    assert len(previews) == 1 and previews[0].name == "prediction"
    preview = previews[0]
    assert preview.data.shape == (12, 32, 32) and set(np.unique(preview.data)) <= {0, 2, 3}
    np.testing.assert_allclose(preview.scale, (2, 1, 1))
    # Written: a slab one patch (8 slices) deep around slice 6, over the visible
    # corner plus half a patch (8 voxels) of context; not the far corner.
    written = np.flatnonzero(preview.data.reshape(12, -1).any(axis=1))
    assert written.size and written.min() >= 2 and written.max() <= 9
    assert preview.data[2:10, :box[1][1] + 8, :box[2][1] + 8].any()  # the corner and its context (objects may lie off-corner)
    assert not preview.data[:, 24:, 24:].any()
    widget.shutdown()


def test_worker_quit_closes_the_job_and_keeps_the_best_model(viewer_widget, qtbot):
    # napari's activity dock (and closing the window) cancel workers with worker.quit().
    _, widget = viewer_widget
    configure_tiny(widget, steps=100_000)
    assert widget.train()
    wait_for_step(qtbot, widget, 2)
    job = widget.runner.job
    widget.runner.worker.quit()
    wait_idle(qtbot, widget, timeout=10_000)
    assert job.done.is_set()  # the job's generator was closed, so the trainer ended cleanly
    assert widget.model is not None and widget.progress.status_label.text() == "Stopped."


def test_a_lazy_image_gets_a_lazy_prediction_equal_to_the_eager_one(trained, qtbot, tmp_path, monkeypatch):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    from qtpy.QtCore import Qt

    from napari_sparse_unet._layers import find_prediction_layer
    from napari_sparse_unet._qt import prediction_flow as flow_module
    from napari_sparse_unet.core.prediction.predict import predict

    viewer, widget = trained
    image = viewer.layers["image"].data
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(6, 16, 16), dtype=image.dtype)[:] = image
    lazy_image = viewer.add_image(da.from_zarr(str(tmp_path / "image.zarr")), name="lazy", scale=(2.0, 1.0, 1.0))
    widget.data.image_picker.value = lazy_image
    monkeypatch.setattr(flow_module, "LAZY_BLOCK_VOXELS", 6 * 16 * 16)  # 8 blocks of the tiny volume
    qtbot.mouseClick(widget.prediction.predict_button, Qt.MouseButton.LeftButton)
    assert not widget.busy  # nothing to wait for: the layer is there at once
    prediction = find_prediction_layer(viewer, "lazy", image.shape)
    assert isinstance(prediction.data, da.Array) and prediction.data.chunksize == (6, 16, 16)
    assert isinstance(lazy_image.data, da.Array) and not prediction.editable
    assert "is lazy" in widget.progress.status_label.text()
    eager = predict(widget.model, image, widget.predict_config())
    np.testing.assert_array_equal(prediction.data[5:7].compute(), eager[5:7])  # a slab across two blocks' border
    assert (np.asarray(prediction.data) == eager).mean() >= 0.999


def test_the_preview_layer_gets_its_painting_overlays_back(viewer_widget, qtbot):
    # The Train click adds the prediction layer without napari's painting overlays (half
    # the cost of adding it) and gives them back in a later event-loop turn.
    from napari_sparse_unet._layers import PAINT_OVERLAYS, find_prediction_layer

    viewer, widget = viewer_widget
    configure_tiny(widget, steps=3, preview=0.1)
    assert widget.train()
    wait_idle(qtbot, widget)
    layer = find_prediction_layer(viewer, "image", (12, 32, 32))
    assert layer is not None and set(PAINT_OVERLAYS) <= set(layer._overlays)
    viewer.layers.selection.active = layer
    for mode in ("polygon", "paint"):  # napari switches the overlays on and off here
        layer.mode = mode
    layer.paint((6, 10, 10), 3)
    assert layer.data[6, 10, 10] == 3


def test_a_start_stopped_while_the_preview_layer_is_added_leaves_it_paintable(viewer_widget, qtbot, monkeypatch):
    from napari_sparse_unet._layers import PAINT_OVERLAYS, find_prediction_layer
    from napari_sparse_unet._qt import runner

    monkeypatch.setattr(runner, "START_STEP_MS", 300)  # time to stop between the start's steps
    viewer, widget = viewer_widget
    configure_tiny(widget, steps=3, preview=0.1)
    assert widget.train()
    qtbot.waitUntil(lambda: find_prediction_layer(viewer, "image", (12, 32, 32)) is not None, timeout=5000)
    layer = find_prediction_layer(viewer, "image", (12, 32, 32))
    assert not set(PAINT_OVERLAYS) & set(layer._overlays)  # added, overlays still held
    widget.shutdown()
    assert not widget.busy and widget.runner.job is None  # the job never started
    assert set(PAINT_OVERLAYS) <= set(layer._overlays)


def test_the_dock_scrolls_instead_of_growing_napari(make_napari_viewer, qtbot):
    # Without a scroll area, the training plot appearing on the Train click made napari's
    # window taller than a laptop screen and resized (and redrew) the canvas.
    from qtpy.QtWidgets import QScrollArea

    from napari_sparse_unet._qt.widget import SparseUNetWidget
    from napari_sparse_unet.core.training.curves import TrainingCurves

    viewer = make_napari_viewer(show=True)
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse U-Net")
    window = viewer.window._qt_window
    window.resize(1200, 600)
    qtbot.wait(100)
    size = window.size()
    widget.curves.follow(TrainingCurves())
    qtbot.wait(100)
    assert window.size() == size
    scroll = widget.findChild(QScrollArea)
    content = scroll.widget()
    assert content.height() > scroll.viewport().height()  # the rest is a scroll away
    assert scroll.viewport().width() >= content.minimumSizeHint().width()  # nothing cut off at the side
    widget.shutdown()
