"""The dock widget's training-curve plot and its channels picked from separate image layers.

Curves: the tiny (12, 32, 32) volume of conftest.  Channels: the BRATS FLAIR and
T1c volumes cropped to (16, 64, 64), each its own image layer, painted on two
Z slices (1 = background, 2 = tumour); see ``test_channels.brats_crop``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_channels import brats_crop  # noqa: E402
from test_widget import TIMEOUT_MS, _errors_since, _notifications, configure_tiny, wait_idle  # noqa: E402

pytestmark = pytest.mark.gui


def _dock(viewer, qtbot):
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse U-Net")
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=TIMEOUT_MS)
    return widget


def test_curve_plot_is_live_and_comes_back_with_a_loaded_model(make_napari_viewer, qtbot, tiny_volume, tmp_path, monkeypatch):
    image, _, annotation = tiny_volume
    viewer = make_napari_viewer()
    viewer.add_image(image, name="image")
    viewer.add_labels(annotation, name="annotation")
    widget = _dock(viewer, qtbot)
    try:
        assert widget.curves.isHidden()  # nothing to show before training
        configure_tiny(widget, steps=100_000)
        assert widget.train()
        # Points arrive while training still runs (the plot redraws on a timer, not per step).
        qtbot.waitUntil(lambda: widget.curves.points().get("loss", 0) >= 2, timeout=TIMEOUT_MS)
        assert widget.busy and not widget.curves.isHidden()
        widget.training.stop_button.click()
        wait_idle(qtbot, widget)
        drawn = widget.curves.points()
        assert drawn["loss"] == len(widget.model.curves["step"]) >= 2
        assert drawn["fit_dice"] >= 1 and drawn["val_dice"] == 0  # no validation: no points, not zeros

        path = tmp_path / "m.pt"
        monkeypatch.setattr(widget.model_panel, "ask_save_path", lambda: str(path))
        monkeypatch.setattr(widget.model_panel, "ask_open_path", lambda: str(path))
        assert widget.model_panel.save_model() == str(path)
        widget.curves.show_curves(None)
        assert widget.curves.isHidden()
        assert widget.model_panel.load_model() is not None
        assert not widget.curves.isHidden() and widget.curves.points()["loss"] == drawn["loss"]
    finally:
        widget.shutdown()


def test_two_channel_layers_train_predict_and_are_asked_for_again(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    flair, t1c, annotation = brats_crop()
    viewer = make_napari_viewer()
    flair_layer = viewer.add_image(flair, name="FLAIR")
    t1c_layer = viewer.add_image(t1c, name="T1c")
    viewer.add_labels(annotation, name="annotation")
    widget = _dock(viewer, qtbot)
    try:
        widget.data.image_picker.value = flair_layer
        widget.data.add_channel()  # picks the first image layer not picked yet
        assert widget.data.channel_layers == [flair_layer, t1c_layer]
        configure_tiny(widget, steps=3)
        assert widget.train()
        wait_idle(qtbot, widget)
        model = widget.model
        assert model.in_channels == 2 and model.channel_names == ("FLAIR", "T1c")

        assert widget.predict()
        wait_idle(qtbot, widget)
        prediction = viewer.layers["prediction"].data
        assert prediction.shape == flair.shape and set(np.unique(prediction)) <= {0, 2}
        np.testing.assert_array_equal(flair_layer.data, flair)  # the user's layers are only read

        # A channel layer of another shape is refused with the rule's message; so is one channel too few.
        small = viewer.add_image(t1c[:, :32], name="small")
        widget.data.channels.pickers[0].value = small
        before = len(_notifications())
        assert not widget.train()
        widget.data.channels.set_layers([])
        assert not widget.predict()
        errors = _errors_since(before)
        assert any("channel 'small' has shape (16, 32, 64) but 'FLAIR' has (16, 64, 64)" in m for m in errors), errors
        assert any("pick the layers of its channels in order (FLAIR, T1c)" in m for m in errors), errors

        # A loaded model asks for its channels again: the layers with its channel names are preselected.
        path = tmp_path / "brats.pt"
        monkeypatch.setattr(widget.model_panel, "ask_save_path", lambda: str(path))
        monkeypatch.setattr(widget.model_panel, "ask_open_path", lambda: str(path))
        assert widget.model_panel.save_model() == str(path)
        widget.data.image_picker.value = small
        assert widget.model_panel.load_model() is not None
        assert widget.data.channel_layers == [flair_layer, t1c_layer]
        assert not widget.data.channel_first_check.isEnabled()  # separate layers: each is one channel
        viewer.layers.remove(t1c_layer)  # its row goes with it; no other layer slips into its place
        assert widget.data.channel_layers == [flair_layer] and not widget.data.channels.pickers
    finally:
        widget.shutdown()
