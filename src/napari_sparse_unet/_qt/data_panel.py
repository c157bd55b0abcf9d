"""The Data group: which image and annotation layers, and what is painted in the annotation."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from magicgui.widgets import ComboBox
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from .. import _layers
from ..core.annotation import AnnotationStats
from .channel_pickers import ChannelPickers
from .notify import notify

STATS_DELAY_MS = 300  # debounce: recount once the brush pauses, not on every stroke event



class DataPanel(QGroupBox):
    """Layer pickers (magicgui combo boxes over the viewer's layers), New annotation, the painted-voxel table.

    ``changed`` is emitted when the picked layers or the statistics change.
    """

    changed = Signal()

    def __init__(self, viewer: Any, parent: Any = None) -> None:
        super().__init__("Data", parent)
        self.viewer = viewer
        self.model_names: Mapping[int, str] = {}  # names of the current model's classes, when there is one
        self.has_model = False
        self._refreshing = False
        form = QFormLayout(self)
        self.image_picker = ComboBox(
            choices=lambda _: _layers.named_choices(_layers.image_layers(viewer)),
            tooltip="Image to train on or to predict: 3-D (Z, Y, X) or 2-D, single or multi-channel",
        )
        self.add_channel_button = QPushButton("+")
        self.add_channel_button.setToolTip("Add another image layer as a channel of this image (e.g. T1c after FLAIR)")
        self.add_channel_button.setFixedWidth(self.add_channel_button.sizeHint().height())
        row = QHBoxLayout()
        row.addWidget(self.image_picker.native, 1)
        row.addWidget(self.add_channel_button)
        form.addRow("Image", row)
        self.channels = ChannelPickers(viewer)
        form.addRow(self.channels)
        self.annotation_picker = ComboBox(
            choices=lambda _: _layers.named_choices(_layers.annotation_layers(viewer)), nullable=True,
            tooltip="Labels layer with painted slices: 1 = background, 2, 3, … = classes, 0 = not painted",
        )
        self.new_annotation_button = QPushButton("New")
        self.new_annotation_button.setToolTip("Add an empty annotation layer with the image's shape, scale and translate")
        row = QHBoxLayout()
        row.addWidget(self.annotation_picker.native, 1)
        row.addWidget(self.new_annotation_button)
        form.addRow("Annotation", row)
        self.channel_first_check = QCheckBox("first axis of a 3-D image is channels")
        form.addRow(self.channel_first_check)
        self.stats_label = QLabel()
        self.stats_label.setWordWrap(True)
        self.stats_label.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.stats_label)

        self.watcher = _layers.AnnotationWatcher(viewer, self.schedule_stats)
        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_DELAY_MS)
        self._stats_timer.timeout.connect(self.update_stats)
        self.image_picker.changed.connect(self._on_image_changed)
        self.annotation_picker.changed.connect(self._on_annotation_changed)
        self.channel_first_check.toggled.connect(self._on_image_changed)
        self.new_annotation_button.clicked.connect(self.new_annotation)
        self.add_channel_button.clicked.connect(self.add_channel)
        self.channels.changed.connect(self._on_channels_changed)
        self._stop_following = _layers.follow_layer_list(viewer, self.refresh_layers)
        self.refresh_layers()

    # ------------------------------------------------------------------ layers
    @property
    def image_layer(self) -> Any:
        layer = self.image_picker.value
        return layer if _layers.in_viewer(self.viewer, layer) else None

    @property
    def annotation_layer(self) -> Any:
        layer = self.annotation_picker.value
        return layer if _layers.in_viewer(self.viewer, layer) else None

    @property
    def channel_layers(self) -> list[Any]:
        """The picked image layer and the extra channel layers after it, in order ([] without an image)."""
        image = self.image_layer
        return [] if image is None else [image, *self.channels.layers()]

    @property
    def first_axis_is_channel(self) -> bool:
        # With separate channel layers, each layer is one channel.
        return self.channel_first_check.isChecked() and not self.channels.pickers

    def add_channel(self) -> Any:
        """Add a channel row picking the first image layer not picked yet (the top one if all are)."""
        picked = self.channel_layers
        images = _layers.image_layers(self.viewer)
        layer = next((candidate for candidate in images if candidate not in picked), images[0] if images else None)
        return self.channels.add(layer)

    def preselect_channels(self, names: tuple[str, ...]) -> bool:
        """Pick the image layers named ``names`` as the channels, in order, when all exist; returns whether it did."""
        layers = [_layers.image_layer_named(self.viewer, name) for name in names]
        if not layers or any(layer is None for layer in layers):
            return False
        self.image_picker.value = layers[0]
        self.channels.set_layers(layers[1:])
        return True

    def set_busy(self, busy: bool) -> None:
        """While a job runs, the layers it reads stay picked (New stays available)."""
        for widget in (self.image_picker.native, self.annotation_picker.native, self.add_channel_button):
            widget.setEnabled(not busy)
        self.channel_first_check.setEnabled(not busy and not self.channels.pickers)
        self.channels.set_enabled(not busy)
        self.new_annotation_button.setEnabled(self.image_layer is not None)

    def set_annotation_layer(self, layer: Any) -> None:
        self.annotation_picker.value = layer

    def refresh_layers(self, *_: Any) -> None:
        """Follow the viewer's layers, keeping the picked ones and pre-selecting sensible ones otherwise."""
        image, annotation = self.image_layer, self.annotation_layer
        self._refreshing = True
        try:
            self.image_picker.reset_choices()
            self.channels.reset_choices()
            self.annotation_picker.reset_choices()
            image = image if _layers.in_viewer(self.viewer, image) else _layers.preferred_image(self.viewer)
            if image is not None:
                self.image_picker.value = image
            if annotation is None:
                annotation = _layers.guess_annotation(self.viewer, image, self.first_axis_is_channel)
            self.annotation_picker.value = annotation
        finally:
            self._refreshing = False
        self._on_annotation_changed()

    def _on_image_changed(self, *_: Any) -> None:
        if self._refreshing:
            return
        image = self.image_layer
        if image is not None and not _layers.fits_image(self.annotation_layer, image, self.first_axis_is_channel):
            guess = _layers.guess_annotation(self.viewer, image, self.first_axis_is_channel)
            if guess is not None:
                self.set_annotation_layer(guess)
        self._on_annotation_changed()

    def _on_channels_changed(self) -> None:
        self.channel_first_check.setEnabled(not self.channels.pickers)
        self._on_image_changed()

    def _on_annotation_changed(self, *_: Any) -> None:
        if self._refreshing:
            return
        self.watcher.watch(self.annotation_layer)
        self.schedule_stats()
        self.changed.emit()

    def new_annotation(self) -> Any:
        """Add an empty annotation layer for the picked image and pick it."""
        image = self.image_layer
        if image is None:
            notify("error", "Pick an image layer first.")
            return None
        try:
            layer = _layers.add_annotation_layer(self.viewer, image, self.first_axis_is_channel)
        except _layers.LayerError as error:
            notify("error", str(error))
            return None
        self.set_annotation_layer(layer)
        return layer

    # -------------------------------------------------------------- statistics
    def schedule_stats(self) -> None:
        self._stats_timer.start()

    def update_stats(self) -> AnnotationStats | None:
        """Recount what changed in the annotation and show it; returns the statistics."""
        self._stats_timer.stop()
        layer = self.annotation_layer
        stats = self.watcher.stats()
        if layer is None:
            self.stats_label.setText(
                "No annotation layer: Predict uses the loaded model." if self.has_model else
                "Pick an annotation layer, or press <b>New</b> and paint label 1 (background) and 2, 3, … (classes)."
            )
        elif stats is None:
            self.stats_label.setText("Multiscale labels layers are not supported.")
        else:
            names = _layers.class_names_of(layer, stats.class_values, self.model_names)
            colors = [_layers.label_color_hex(layer, value) for value in stats.class_values]
            self.stats_label.setText(stats_html(stats, names, colors))
        self.changed.emit()
        return stats

    def shutdown(self) -> None:
        self._stats_timer.stop()
        self._stop_following()
        self.watcher.watch(None)


def _sentence(text: str) -> str:
    return html.escape(text[0].upper() + text[1:]) + "."


def stats_html(stats: AnnotationStats, names: tuple[str, ...], colors: list[str]) -> str:
    """The painted-voxel table and the line saying what is missing (or that training can start)."""
    rows = []
    for value, name, color in zip(stats.class_values, names, colors):
        slices = f"{stats.slices.get(value, 0)}" if stats.ndim == 3 else ""
        rows.append(
            f"<tr><td><span style='color:{color}'>&#9632;</span> {value}</td><td>{html.escape(name)}</td>"
            f"<td align='right'>{stats.voxels[value]:,}</td><td align='right'>{slices}</td></tr>"
        )
    text = ""
    if rows:
        head = "<th align='right'>slices</th>" if stats.ndim == 3 else "<th></th>"
        text = (
            "<table cellspacing='4'><tr><th align='left'>label</th><th></th><th align='right'>voxels</th>"
            f"{head}</tr>{''.join(rows)}</table>"
        )
        if stats.ndim == 3:
            text += f"{stats.annotated_slices} of {stats.total_slices} Z slices painted.<br>"
    problem, hint = stats.problem(), stats.hint()
    if problem:
        return text + f"<span style='color:#e8a33d'>{_sentence(problem)}</span>"
    if hint:
        return text + f"<span style='color:#9a9a9a'>{_sentence(hint)}</span>"
    return text + "<span style='color:#6cc070'>Ready to train.</span>"
