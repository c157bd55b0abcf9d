"""One rule, one message: the same bad input gets the same words from the CLI, the Python API and the widget.

Each case feeds one mistake to all three front ends: the Python API raises a
UserInputError, the command line prints ``error: <message>`` and exits with 2,
the widget shows a napari error notification.  The message is the rule's own
(``core.rules``), word for word, in all three.  Arrays are (Z, Y, X) or (C, Z, Y, X).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_sparse_unet import io
from napari_sparse_unet.api import PRESETS, PredictConfig, TrainConfig, Trainer, UserInputError, predict, train
from napari_sparse_unet.cli import main
from napari_sparse_unet.core.rules import annotation_problem, model_image_problem

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

TINY = TrainConfig(max_steps=1, patch_size=(8, 16, 16), base_channels=4, depth=2, validation=False, device="cpu")


def _cli_error(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: "), err
    return err.removeprefix("error: ")


def _widget_errors(widget, action) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    before = len(notification_manager.records)
    action()
    return [n.message for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]


@pytest.fixture
def widget_on(make_napari_viewer, qtbot):
    """A function making a viewer with the given layers and the widget docked in it."""
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    made = []

    def make(image, annotation=None):
        viewer = make_napari_viewer()
        viewer.add_image(image, name="image")
        if annotation is not None:
            viewer.add_labels(annotation, name="annotation")
        widget = SparseUNetWidget(viewer)
        viewer.window.add_dock_widget(widget)
        qtbot.waitUntil(lambda: widget.devices is not None, timeout=180_000)
        made.append(widget)
        return widget

    yield make
    for widget in made:
        widget.shutdown()


def test_only_background_painted(tmp_path, capsys, tiny_volume, widget_on):
    image, _, annotation = tiny_volume
    only_background = np.where(annotation > 0, 1, 0).astype(np.uint8)
    message = annotation_problem({1: int((only_background == 1).sum())})

    with pytest.raises(UserInputError) as api:
        Trainer([image], [only_background], TINY)
    io.write_volume(tmp_path / "image.tif", image)
    io.write_volume(tmp_path / "labels.tif", only_background)
    cli = _cli_error(["train", "--image", tmp_path / "image.tif", "--labels", tmp_path / "labels.tif",
                      "--model", tmp_path / "m.pt", "--device", "cpu", "-q"], capsys)
    widget = widget_on(image, only_background)
    gui = _widget_errors(widget, widget.train)

    assert str(api.value) == message and cli == message
    assert gui == [f"Cannot train on 'annotation': {message}."]


def test_image_with_more_channels_than_the_model(tmp_path, capsys, tiny_volume, widget_on):
    image, _, annotation = tiny_volume
    model = train([image], [annotation], TINY)
    model.save(tmp_path / "model.pt")
    two_channels = np.stack([image, image])
    message = model_image_problem(two_channels.shape, 3, 1)

    with pytest.raises(UserInputError) as api:
        predict(model, two_channels, PredictConfig(device="cpu"))
    io.write_volume(tmp_path / "two.tif", two_channels)
    cli = _cli_error(["predict", "--model", tmp_path / "model.pt", "--image", tmp_path / "two.tif",
                      "--out", tmp_path / "out.tif", "--device", "cpu", "-q"], capsys)
    widget = widget_on(two_channels)
    widget.set_model(model)
    gui = _widget_errors(widget, widget.predict)

    assert str(api.value) == message and cli == message
    assert gui == [f"'image': {message}"]


def test_patch_size_the_network_cannot_take(tmp_path, capsys, tiny_volume, widget_on, qtbot):
    image, _, annotation = tiny_volume
    with pytest.raises(UserInputError) as api:
        Trainer([image], [annotation], dataclasses.replace(PRESETS["cpu"], patch_size=(5, 16, 16), device="cpu"))
    message = str(api.value)
    assert "patch size (5, 16, 16)" in message

    io.write_volume(tmp_path / "image.tif", image)
    io.write_volume(tmp_path / "labels.tif", annotation)
    cli = _cli_error(["train", "--image", tmp_path / "image.tif", "--labels", tmp_path / "labels.tif",
                      "--model", tmp_path / "m.pt", "--device", "cpu", "--patch-size", "5", "16", "16",
                      "--preset", "cpu", "-q"], capsys)
    widget = widget_on(image, annotation)
    training = widget.training
    training.preset_combo.setCurrentIndex(training.preset_combo.findData("cpu"))
    training.patch_edit.setText("5,16,16")
    training.device_combo.setCurrentIndex(training.device_combo.findData("cpu"))

    def train_and_wait():
        assert widget.train()
        qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)

    gui = _widget_errors(widget, train_and_wait)
    assert cli == message
    assert gui == [f"Training failed: {message}"]


def test_channel_layers_of_different_shapes(tmp_path, capsys, tiny_volume, widget_on):
    from napari_sparse_unet.core.rules import channels_problem, stack_channels

    image, _, annotation = tiny_volume
    short = image[:-1]
    message = channels_problem(["image", "short"], [image.shape, short.shape])

    with pytest.raises(UserInputError) as api:
        stack_channels([image, short], ["image", "short"])
    io.write_volume(tmp_path / "image.tif", image)
    io.write_volume(tmp_path / "short.tif", short)
    io.write_volume(tmp_path / "labels.tif", annotation)
    cli = _cli_error(["train", "--image", f"{tmp_path / 'image.tif'},{tmp_path / 'short.tif'}",
                      "--labels", tmp_path / "labels.tif", "--model", tmp_path / "m.pt", "--device", "cpu", "-q"], capsys)
    widget = widget_on(image, annotation)
    widget.data.channels.set_layers([widget.viewer.add_image(short, name="short")])
    assert [layer.name for layer in widget.data.channel_layers] == ["image", "short"]
    gui = _widget_errors(widget, widget.train)

    assert str(api.value) == message and cli == message
    assert gui == [message]
