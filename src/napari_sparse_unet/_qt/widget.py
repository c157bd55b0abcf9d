"""The Sparse U-Net dock widget: pick layers, train, predict, correct, save.

The widget only wires layers, workers and buttons.  Layer data is copied in
``_layers`` on the main thread, the work runs in ``_jobs`` generators inside
napari's thread workers, and results come back through the workers' signals,
whose handlers run on the main thread.  torch and the core are imported only
inside methods, so importing this module (and starting napari) stays fast.
"""

from __future__ import annotations

import dataclasses
import html
import time
import weakref
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .. import _layers
from ..core.annotation import AnnotationCounter, AnnotationStats
from ..core.jobs import PredictJob, PredictResult, Preview, TrainJob, ViewedSlice
from ..core.rules import parse_patch_size

if TYPE_CHECKING:
    import napari

    from ..core.checkpoint import SegmentationModel

# Preset key in core.config.PRESETS -> what the user sees.
PRESET_LABELS = {"cpu": "CPU quick", "gpu-small": "GPU", "gpu-large": "GPU large"}
DEVICES = ("auto", "cpu", "cuda", "mps")
MODEL_FILTER = "Sparse U-Net model (*.pt);;All files (*)"
STATS_DELAY_MS = 300  # debounce: recount once the brush pauses, not on every stroke event


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


class SparseUNetWidget(QWidget):
    """Dock widget: train a 3D U-Net on a few painted slices and predict whole volumes."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SegmentationModel | None = None
        self.devices: tuple[str, ...] | None = None  # known once torch has been imported in the background
        self._worker: Any = None
        self._generator: Any = None  # the job's generator the worker drives
        self._job: TrainJob | PredictJob | None = None
        self._job_image: _layers.ImageSnapshot | None = None
        self._job_annotation: Any = None
        self._val_dice: float | None = None
        self._view = ViewedSlice()
        self._counter = AnnotationCounter()
        self._stats: AnnotationStats | None = None
        self._watched: Any = None  # the annotation layer whose events feed the counter
        self._filtered_window: weakref.ref[QObject] | None = None
        self._shut_down = False

        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_DELAY_MS)
        self._stats_timer.timeout.connect(self.update_stats)
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(150)
        self._view_timer.timeout.connect(self._on_dims)

        self._build_ui()
        self._connect_viewer()
        self.refresh_layers()
        self._apply_preset()
        self._update_buttons()
        self._detect_devices()

    # ================================================================== layout
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)

        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image to train on or to predict: 3-D (Z, Y, X) or 2-D, single or multi-channel")
        form.addRow("Image", self.image_combo)
        self.annotation_combo = QComboBox()
        self.annotation_combo.setToolTip("Labels layer with painted slices: 1 = background, 2, 3, … = classes, 0 = not painted")
        self.new_annotation_button = QPushButton("New")
        self.new_annotation_button.setToolTip("Add an empty annotation layer with the image's shape, scale and translate")
        row = QHBoxLayout()
        row.addWidget(self.annotation_combo, 1)
        row.addWidget(self.new_annotation_button)
        form.addRow("Annotation", row)
        self.stats_label = QLabel()
        self.stats_label.setWordWrap(True)
        self.stats_label.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.stats_label)
        layout.addWidget(data)

        training = QGroupBox("Training")
        training_layout = QVBoxLayout(training)
        form = QFormLayout()
        training_layout.addLayout(form)
        self.preset_combo = QComboBox()
        from ..core.config import PRESETS  # numpy-free dataclasses: cheap, no torch

        for key in PRESETS:
            self.preset_combo.addItem(PRESET_LABELS.get(key, key), key)
        form.addRow("Preset", self.preset_combo)
        self.time_spin = QSpinBox()
        self.time_spin.setRange(0, 24 * 3600)
        self.time_spin.setSuffix(" s")
        self.time_spin.setSpecialValueText("no limit")
        self.time_spin.setToolTip("Training stops after this time or the number of steps, whichever comes first")
        form.addRow("Time limit", self.time_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        form.addRow("Max steps", self.steps_spin)
        self.patch_edit = QLineEdit()
        self.patch_edit.setPlaceholderText("auto")
        self.patch_edit.setToolTip("Training patch, 'auto' or Z,Y,X (e.g. 16,64,64); each a multiple of the network's down-sampling")
        form.addRow("Patch size", self.patch_edit)
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto (detecting…)", "auto")
        self.device_combo.setToolTip("Where the network runs; auto picks CUDA, then Apple MPS, then the CPU")
        form.addRow("Device", self.device_combo)

        self.advanced = QCollapsible("Advanced")
        advanced = QWidget()
        adv = QFormLayout(advanced)
        adv.setContentsMargins(0, 0, 0, 0)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 64)
        adv.addRow("Batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        adv.addRow("Learning rate", self.lr_spin)
        self.channels_spin = QSpinBox()
        self.channels_spin.setRange(2, 128)
        self.channels_spin.setToolTip("Feature maps of the first U-Net level (new models only)")
        adv.addRow("Base channels", self.channels_spin)
        self.depth_spin = QSpinBox()
        self.depth_spin.setRange(1, 6)
        self.depth_spin.setToolTip("Number of down-sampling levels (new models only)")
        adv.addRow("Depth", self.depth_spin)
        self.augment_check = QCheckBox("flips, rotations, intensity")
        adv.addRow("Augmentation", self.augment_check)
        self.validation_check = QCheckBox("hold out one painted slice (6+ slices)")
        adv.addRow("Validation", self.validation_check)
        self.amp_check = QCheckBox("GPU; CPU prediction with bfloat16 units")
        self.amp_check.setToolTip("float16/bfloat16 where the device is fast and safe at it; float32 elsewhere")
        adv.addRow("Mixed precision", self.amp_check)
        self.preview_spin = QDoubleSpinBox()
        self.preview_spin.setRange(0.0, 600.0)
        self.preview_spin.setDecimals(1)
        self.preview_spin.setValue(5.0)
        self.preview_spin.setSuffix(" s")
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setToolTip("While training, predict the viewed slice this often")
        adv.addRow("Preview every", self.preview_spin)
        self.finetune_check = QCheckBox("continue from the current model")
        self.finetune_check.setChecked(True)
        adv.addRow("Train again", self.finetune_check)
        self.channel_first_check = QCheckBox("first axis of a 3-D image is channels")
        adv.addRow("2-D + channels", self.channel_first_check)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.9)
        self.overlap_spin.setSingleStep(0.05)
        self.overlap_spin.setValue(0.25)
        adv.addRow("Tile overlap", self.overlap_spin)
        self.advanced.addWidget(advanced)
        training_layout.addWidget(self.advanced)

        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop training (the best model so far is kept) or prediction")
        row.addWidget(self.train_button)
        row.addWidget(self.stop_button)
        training_layout.addLayout(row)
        layout.addWidget(training)

        prediction = QGroupBox("Prediction")
        form = QFormLayout(prediction)
        row = QHBoxLayout()
        self.probabilities_check = QCheckBox("probabilities")
        self.probabilities_check.setToolTip("Also add one probability image per class (float32, memory-hungry)")
        self.tta_check = QCheckBox("flip TTA")
        self.tta_check.setToolTip("Average the prediction over flips: smoother, slower")
        row.addWidget(self.probabilities_check)
        row.addWidget(self.tta_check)
        row.addStretch(1)
        form.addRow(row)
        row = QHBoxLayout()
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip("Predict the whole selected image into the 'prediction' layer")
        self.copy_button = QPushButton("Copy slice to annotation")
        self.copy_button.setToolTip(
            "Copy the prediction of the viewed slice into its unpainted annotation voxels "
            "(background becomes 1), then fix the errors and train again. Ctrl+Z undoes."
        )
        row.addWidget(self.predict_button)
        row.addWidget(self.copy_button)
        form.addRow(row)
        layout.addWidget(prediction)

        model = QGroupBox("Model")
        form = QFormLayout(model)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save…")
        self.load_button = QPushButton("Load…")
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        form.addRow(row)
        self.model_label = QLabel("No model yet: paint, then Train, or Load a model.")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        layout.addWidget(model)

        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        layout.addWidget(self.progress_bar)
        self.loss_label = QLabel("")
        layout.addWidget(self.loss_label)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.annotation_combo.currentIndexChanged.connect(self._on_annotation_changed)
        self.new_annotation_button.clicked.connect(self.new_annotation)
        self.preset_combo.currentIndexChanged.connect(self._apply_preset)
        self.channel_first_check.toggled.connect(self._on_image_changed)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.predict_button.clicked.connect(self.predict)
        self.copy_button.clicked.connect(self.copy_slice)
        self.save_button.clicked.connect(self.save_model)
        self.load_button.clicked.connect(self.load_model)

    # ================================================================ viewer
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self.refresh_layers)
        layers.events.moved.connect(self.refresh_layers)
        for layer in layers:
            layer.events.name.connect(self.refresh_layers)
        dims = self.viewer.dims.events
        for event in (dims.current_step, dims.order, dims.ndisplay):
            event.connect(self._on_dims)
        # The visible region (for previews) is read after napari redraws the moved camera.
        camera = self.viewer.camera.events
        for event in (camera.center, camera.zoom):
            event.connect(self._schedule_view)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        # Last resort when the widget is deleted without a close: stop the job
        # from a closure that does not keep the widget alive.
        holder = weakref.WeakValueDictionary()  # type: ignore[var-annotated]
        self._job_holder = holder
        self.destroyed.connect(lambda *_: [job.stop() for job in list(holder.values())])

    def _disconnect_viewer(self) -> None:
        layers = self.viewer.layers
        for event, slot in (
            (layers.events.inserted, self._on_layer_inserted),
            (layers.events.removed, self.refresh_layers),
            (layers.events.moved, self.refresh_layers),
        ):
            event.disconnect(slot)
        for layer in layers:
            layer.events.name.disconnect(self.refresh_layers)
        dims = self.viewer.dims.events
        for event in (dims.current_step, dims.order, dims.ndisplay):
            event.disconnect(self._on_dims)
        camera = self.viewer.camera.events
        for event in (camera.center, camera.zoom):
            event.disconnect(self._schedule_view)
        self._watch_annotation(None)

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh_layers)
        self.refresh_layers()

    def _layers_of(self, kind: str) -> list[Any]:
        from napari.layers import Image, Labels

        if kind == "image":
            return [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and _layers.PREDICTION_KEY not in layer.metadata
        ]

    def refresh_layers(self, *_: Any) -> None:
        """Refill the pickers, keeping the current choices and pre-selecting sensible ones."""
        images = self._layers_of("image")
        labels = self._layers_of("labels")
        image = self.image_layer
        if image not in images:
            active = self.viewer.layers.selection.active
            image = active if active in images else (images[-1] if images else None)
        self._fill(self.image_combo, images, image, none_text="(no image layer)")
        annotation = self.annotation_layer
        if annotation not in labels:
            annotation = self._guess_annotation(labels)
        self._fill(self.annotation_combo, labels, annotation, none_text="(none)", always_none=True)
        self._on_annotation_changed()
        self._update_buttons()

    def _guess_annotation(self, labels: list[Any]) -> Any:
        image = self.image_layer
        shape = self._spatial_shape(image) if image is not None else None
        fitting = [layer for layer in labels if shape is None or tuple(layer.data.shape) == shape]
        named = [layer for layer in fitting if "annot" in layer.name.lower()]
        return (named or fitting or [None])[-1]

    @staticmethod
    def _fill(combo: QComboBox, layers: list[Any], current: Any, none_text: str, always_none: bool = False) -> None:
        combo.blockSignals(True)
        combo.clear()
        if not layers or always_none:
            combo.addItem(none_text, None)
        for layer in layers:
            combo.addItem(layer.name, layer)
        index = _find(combo, current) if current is not None else -1
        combo.setCurrentIndex(max(index, 0) if current is not None or not always_none else 0)
        combo.blockSignals(False)

    @property
    def image_layer(self) -> Any:
        layer = self.image_combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def annotation_layer(self) -> Any:
        layer = self.annotation_combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    def set_image_layer(self, layer: Any) -> None:
        self.image_combo.setCurrentIndex(max(_find(self.image_combo, layer), 0))

    def set_annotation_layer(self, layer: Any) -> None:
        self.annotation_combo.setCurrentIndex(max(_find(self.annotation_combo, layer), 0))

    def _spatial_shape(self, layer: Any) -> tuple[int, ...]:
        return _layers.spatial_shape_of(layer, self.channel_first_check.isChecked())

    def _on_image_changed(self, *_: Any) -> None:
        annotation = self.annotation_layer
        image = self.image_layer
        if image is not None and (annotation is None or tuple(annotation.data.shape) != self._spatial_shape(image)):
            guess = self._guess_annotation(self._layers_of("labels"))
            if guess is not None:
                self.set_annotation_layer(guess)
        self._on_annotation_changed()
        self._on_dims()
        self._update_buttons()

    # ======================================================= annotation stats
    def _on_annotation_changed(self, *_: Any) -> None:
        layer = self.annotation_layer
        if layer is not self._watched:
            self._watch_annotation(layer)
        self._schedule_stats()

    def _watch_annotation(self, layer: Any) -> None:
        old = self._watched
        if old is not None:
            for event, slot in self._annotation_slots(old):
                event.disconnect(slot)
        self._watched = layer
        self._counter = AnnotationCounter()
        if layer is not None:
            for event, slot in self._annotation_slots(layer):
                event.connect(slot)

    def _annotation_slots(self, layer: Any) -> list[tuple[Any, Any]]:
        return [
            (layer.events.paint, self._on_paint),
            (layer.events.data, self._on_annotation_data),
            (layer.events.set_data, self._on_annotation_refresh),
        ]

    def _on_paint(self, event: Any) -> None:
        ranges, unknown = _layers.dirty_slices_of_paint(getattr(event, "value", None))
        if unknown:
            self._counter.mark_all()
        for start, stop in ranges:
            self._counter.mark_range(start, stop)
        self._schedule_stats()

    def _on_annotation_data(self, *_: Any) -> None:
        self._counter.mark_all()
        self._schedule_stats()

    def _on_annotation_refresh(self, *_: Any) -> None:
        # A refresh follows undo/redo and slicing; the visible slice is the one
        # that can have changed, so only it is recounted.
        layer = self._watched
        if layer is None:
            return
        if layer.data.ndim == 2:
            self._counter.mark_all()
        else:
            view = _layers.viewed_slice(self.viewer, layer)
            if view is None or view[0] != 0:
                self._counter.mark_all()
            else:
                self._counter.mark_slices([view[1]])
        self._schedule_stats()

    def _schedule_stats(self) -> None:
        self._stats_timer.start()

    def update_stats(self) -> AnnotationStats | None:
        """Recount what changed in the annotation and show it; returns the statistics."""
        self._stats_timer.stop()
        layer = self.annotation_layer
        if layer is None:
            self._stats = None
            if self.model is not None:
                self.stats_label.setText("No annotation layer: Predict uses the loaded model.")
            else:
                self.stats_label.setText("Pick an annotation layer, or press <b>New</b> and paint label 1 (background) and 2, 3, … (classes).")
            self._update_buttons()
            return None
        if getattr(layer, "multiscale", False):
            self._stats = None
            self.stats_label.setText("Multiscale labels layers are not supported.")
            return None
        if self._counter.pending or self._stats is None:
            self._stats = self._counter.update(layer.data)
        self.stats_label.setText(self._stats_html(self._stats, layer))
        self._update_buttons()
        return self._stats

    def _stats_html(self, stats: AnnotationStats, layer: Any) -> str:
        names = dict(zip(stats.class_values, _layers.class_names_of(layer, stats.class_values)))
        if self.model is not None and not layer.metadata.get("class_names"):
            names.update(zip(self.model.class_values, self.model.class_names))
        rows = []
        for value in stats.class_values:
            name = names[value]
            slices = f"{stats.slices.get(value, 0)}" if stats.ndim == 3 else ""
            color = _layers.label_color_hex(layer, value)
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
                total = int(layer.data.shape[0])
                text += f"{stats.annotated_slices} of {total} Z slices painted.<br>"
        problem = stats.problem()
        if problem:
            text += f"<span style='color:#e8a33d'>{html.escape(problem[0].upper() + problem[1:])}.</span>"
        elif stats.hint():
            hint = stats.hint() or ""
            text += f"<span style='color:#9a9a9a'>{html.escape(hint[0].upper() + hint[1:])}.</span>"
        else:
            text += "<span style='color:#6cc070'>Ready to train.</span>"
        return text

    # ================================================================== dims
    def _on_dims(self, *_: Any) -> None:
        image = self._job_layer() or self.image_layer
        if image is None:
            self._view.set(None)
            return
        axis = _layers.image_channel_axis(image, self.channel_first_check.isChecked())
        try:
            self._view.set(_layers.viewed_slice(self.viewer, image, axis), _layers.visible_box(self.viewer, image, axis))
        except Exception:  # the layer may be mid-removal; the preview just keeps the last slice
            pass

    def _schedule_view(self, *_: Any) -> None:
        self._view_timer.start()

    def _job_layer(self) -> Any:
        if self._job_image is None:
            return None
        for layer in self._layers_of("image"):
            if layer.name == self._job_image.name:
                return layer
        return None

    # ============================================================== settings
    def _apply_preset(self, *_: Any) -> None:
        from ..core.config import PRESETS

        config = PRESETS[self.preset_combo.currentData()]
        self.time_spin.setValue(int(config.max_time or 0))
        self.steps_spin.setValue(config.max_steps)
        self.patch_edit.setText("auto" if config.patch_size is None else ",".join(map(str, config.patch_size)))
        self.batch_spin.setValue(config.batch_size)
        self.lr_spin.setValue(config.learning_rate)
        self.channels_spin.setValue(config.base_channels)
        self.depth_spin.setValue(config.depth)
        self.augment_check.setChecked(config.augment)
        self.validation_check.setChecked(config.validation)
        self.amp_check.setChecked(config.mixed_precision)

    def train_config(self, spatial_dims: int = 3) -> Any:
        """The TrainConfig the fields describe (the preset, with the user's changes)."""
        from ..core.config import PRESETS

        base = PRESETS[self.preset_combo.currentData()]
        return dataclasses.replace(
            base,
            max_time=float(self.time_spin.value()) or None,
            max_steps=self.steps_spin.value(),
            patch_size=parse_patch_size(self.patch_edit.text(), spatial_dims),
            batch_size=self.batch_spin.value(),
            learning_rate=self.lr_spin.value(),
            base_channels=self.channels_spin.value(),
            depth=self.depth_spin.value(),
            augment=self.augment_check.isChecked(),
            validation=self.validation_check.isChecked(),
            mixed_precision=self.amp_check.isChecked(),
            device=self.device_combo.currentData(),
        )

    def predict_config(self) -> Any:
        from ..core.config import PredictConfig

        return PredictConfig(
            overlap=self.overlap_spin.value(),
            tta=self.tta_check.isChecked(),
            device=self.device_combo.currentData(),
            mixed_precision=self.amp_check.isChecked(),
        )

    def _detect_devices(self) -> None:
        # Importing torch takes seconds: do it off the main thread.
        from napari.qt.threading import create_worker

        create_worker(_available_devices, _connect={"returned": self._on_devices, "errored": self._on_devices_failed})

    def _on_devices_failed(self, error: BaseException) -> None:
        self._on_devices(("cpu",))

    def _on_devices(self, devices: Any) -> None:
        self.devices = tuple(devices)
        current = self.device_combo.currentData()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem(f"auto ({self.devices[0]})", "auto")
        for name in DEVICES[1:]:
            if name in self.devices:
                self.device_combo.addItem(name, name)
        self.device_combo.setCurrentIndex(max(self.device_combo.findData(current), 0))
        self.device_combo.blockSignals(False)
        if self.devices[0] != "cpu" and self.preset_combo.currentData() == "cpu" and self._worker is None:
            self.preset_combo.setCurrentIndex(max(self.preset_combo.findData("gpu-small"), 0))

    # ============================================================ actions
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _update_buttons(self) -> None:
        busy = self.busy
        image = self.image_layer is not None
        self.train_button.setEnabled(not busy and image and self.annotation_layer is not None)
        self.train_button.setText("Train more" if self.model is not None and self.finetune_check.isChecked() else "Train")
        self.stop_button.setEnabled(busy)
        self.predict_button.setEnabled(not busy and image and self.model is not None)
        self.copy_button.setEnabled(not busy and self.annotation_layer is not None and image)
        self.save_button.setEnabled(not busy and self.model is not None)
        self.load_button.setEnabled(not busy)
        self.new_annotation_button.setEnabled(image)
        for widget in (self.image_combo, self.annotation_combo, self.preset_combo, self.channel_first_check):
            widget.setEnabled(not busy)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def new_annotation(self) -> Any:
        """Add an empty annotation layer for the selected image and pick it."""
        image = self.image_layer
        if image is None:
            _notify("error", "Pick an image layer first.")
            return None
        try:
            layer = _layers.add_annotation_layer(self.viewer, image, self.channel_first_check.isChecked())
        except _layers.LayerError as error:
            _notify("error", str(error))
            return None
        self.set_annotation_layer(layer)
        self._set_status(f"Paint label 1 (background) and 2, 3, … (classes) on a few slices of '{layer.name}'.")
        return layer

    def train(self) -> bool:
        """Start training (or fine-tuning) in a worker; returns False when the input is refused."""
        if self.busy:
            return False
        image_layer, annotation_layer = self.image_layer, self.annotation_layer
        if image_layer is None or annotation_layer is None:
            _notify("error", "Pick an image layer and an annotation layer to train.")
            return False
        try:
            image = _layers.image_snapshot(image_layer, self.channel_first_check.isChecked())
            annotation = _layers.annotation_copy(annotation_layer, image.spatial_shape)
            config = self.train_config(image.spatial_dims)
        except ValueError as error:  # LayerError, ConfigError, patch size
            _notify("error", str(error))
            return False
        self._counter.mark_all()  # exact numbers for the check below
        stats = self._counter.update(annotation)
        self._stats = stats
        problem = stats.problem()
        if problem:
            _notify("error", f"Cannot train on '{annotation_layer.name}': {problem}.")
            self.update_stats()
            return False
        initial = None
        if self.model is not None and self.finetune_check.isChecked():
            reason = self._cannot_finetune(image, stats)
            if reason:
                _notify("info", f"Training a new model: {reason}.")
            else:
                initial = self.model
        self._val_dice = None
        job = TrainJob(
            [image.data], [annotation], config,
            spacing=image.scale,
            initial=initial, view=self._view, preview_interval=self.preview_spin.value(),
            class_names=_layers.class_names_of(annotation_layer, stats.class_values),
        )
        self._job_image, self._job_annotation = image, annotation_layer
        self._on_dims()
        what = "Fine-tuning the current model" if initial is not None else "Training a new model"
        self._start(job, f"{what} on '{image.name}' with '{annotation_layer.name}'…",
                    yielded=self._on_train_yielded, returned=self._on_train_returned)
        return True

    def _cannot_finetune(self, image: _layers.ImageSnapshot, stats: AnnotationStats) -> str | None:
        model = self.model
        assert model is not None
        if model.spatial_dims != image.spatial_dims or model.in_channels != image.channels:
            return (f"the model is for {model.spatial_dims}-D images with {model.in_channels} channel(s), "
                    f"the image is {image.spatial_dims}-D with {image.channels}")
        unknown = sorted(set(stats.class_values) - set(model.class_values))
        if unknown:
            return f"labels {unknown} are new to the model (it knows {list(model.class_values)})"
        return None

    def predict(self) -> bool:
        """Predict the whole selected image in a worker; returns False when refused."""
        if self.busy:
            return False
        if self.model is None:
            _notify("error", "Train or load a model before predicting.")
            return False
        image_layer = self.image_layer
        if image_layer is None:
            _notify("error", "Pick an image layer to predict.")
            return False
        try:
            image = _layers.image_snapshot(image_layer, self.channel_first_check.isChecked())
            config = self.predict_config()
        except ValueError as error:
            _notify("error", str(error))
            return False
        model = self.model
        if model.spatial_dims != image.spatial_dims or model.in_channels != image.channels:
            _notify("error", f"The model expects {model.spatial_dims}-D images with {model.in_channels} channel(s), "
                             f"but '{image.name}' is {image.spatial_dims}-D with {image.channels} channel(s).")
            return False
        job = PredictJob(model, image.data, config, probabilities=self.probabilities_check.isChecked())
        self._job_image, self._job_annotation = image, self.annotation_layer
        self._start(job, f"Predicting '{image.name}'…", yielded=self._on_predict_yielded, returned=self._on_predict_returned)
        return True

    def _start(self, job: TrainJob | PredictJob, status: str, *, yielded: Any, returned: Any) -> None:
        from napari.qt.threading import create_worker

        self._job = job
        self._job_holder[id(job)] = job
        self.progress_bar.setValue(0)
        self.loss_label.setText("")
        self._set_status(status)
        generator = job.run()
        self._generator = generator
        worker = create_worker(
            _drive,
            generator,
            _connect={
                "yielded": yielded,
                "returned": returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
            _start_thread=False,
        )
        self._worker = worker
        self._update_buttons()
        worker.start()

    def stop(self) -> None:
        """Stop the running job at its next step; a stopped training keeps its best model."""
        if self._job is not None:
            self._job.stop()
            self._set_status("Stopping…")

    # ------------------------------------------------------- worker signals
    def _on_train_yielded(self, item: Any) -> None:
        if isinstance(item, Preview):
            self._show_preview(item)
            return
        self.progress_bar.setValue(int(1000 * item.progress))
        if item.val_dice is not None:
            self._val_dice = item.val_dice
        text = f"step {item.step}/{item.max_steps} · loss {item.loss:.3f}"
        if self._val_dice is not None:
            text += f" · val Dice {self._val_dice:.3f}"
        text += f" · {item.elapsed:.0f} s"
        self.loss_label.setText(text)

    def _show_preview(self, preview: Preview) -> None:
        image = self._job_image
        if image is None:
            return
        try:
            layer = _layers.ensure_prediction_layer(self.viewer, image, preview.labels.dtype, self._job_annotation)
            _layers.write_preview(layer, preview.region, preview.labels)
        except Exception as error:  # a preview is a courtesy: never let it stop training
            self._set_status(f"Preview skipped: {error}")
            return
        self._set_status(f"Training… preview at step {preview.step} ({preview.seconds:.1f} s)")

    def _on_train_returned(self, model: Any) -> None:
        if model is None:
            self._set_status("Training stopped before the first step; the model is unchanged.")
            return
        self.model = model
        stopped = self._job is not None and self._job.stopped
        steps = model.history.get("steps", "?")
        text = f"Training {'stopped' if stopped else 'finished'}: {steps} steps"
        dice = model.history.get("val_dice")
        if dice is not None and dice == dice:
            text += f", validation Dice {dice:.3f}"
        self._set_status(text + ". Predict, or correct and train more.")
        self._show_model()

    def _on_predict_yielded(self, event: Any) -> None:
        total = max(int(event.tiles_total), 1)
        self.progress_bar.setValue(int(1000 * event.tiles_done / total))
        self.loss_label.setText(f"tile {event.tiles_done}/{event.tiles_total} · {event.elapsed:.0f} s")

    def _on_predict_returned(self, result: PredictResult | None) -> None:
        image = self._job_image
        if result is None or image is None:
            self._set_status("Prediction stopped.")
            return
        layer = _layers.show_prediction(self.viewer, result.labels, image, self._job_annotation)
        if result.probabilities is not None and self.model is not None:
            _layers.show_probabilities(self.viewer, result.probabilities, image, self.model.class_values, self.model.class_names)
        self.progress_bar.setValue(1000)
        self._set_status(f"Predicted '{image.name}' in {result.seconds:.1f} s into '{layer.name}'.")

    def _on_errored(self, error: BaseException) -> None:
        if isinstance(error, ValueError):  # InputError, ConfigError, CheckpointError: the message says it all
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
        what = "Training" if isinstance(self._job, TrainJob) else "Prediction"
        self._set_status(f"{what} failed: {message}")
        _notify("error", f"{what} failed: {message}")
        if isinstance(self._job, TrainJob):
            best = self._job.best_model
            if best is not None:
                self.model = best
                self._show_model()

    def _on_aborted(self) -> None:
        # worker.quit() (napari's task manager does it when the window closes) leaves
        # the job at a yield: close it, which ends training and keeps the best model.
        generator, job = self._generator, self._job
        if generator is not None:
            try:
                generator.close()
            except ValueError:  # still executing in the worker: it stops at its next step anyway
                if job is not None:
                    job.stop()
        if isinstance(job, TrainJob) and job.best_model is not None:
            self.model = job.best_model
            self._show_model()
        self._set_status("Stopped.")

    def _on_finished(self) -> None:
        job = self._job
        self._worker = None
        self._job = None
        self._generator = None
        if job is not None:
            self._job_holder.pop(id(job), None)
        self._job_image = None
        self._job_annotation = None
        self._update_buttons()
        self._on_dims()

    # ================================================================ copy
    def copy_slice(self) -> int:
        """Copy the prediction of the viewed slice into the annotation; returns voxels changed."""
        image_layer, annotation = self.image_layer, self.annotation_layer
        if image_layer is None or annotation is None:
            _notify("error", "Pick the image and the annotation layer first.")
            return 0
        shape = self._spatial_shape(image_layer)
        prediction = _layers.find_prediction_layer(self.viewer, image_layer.name, shape)
        if prediction is None:
            _notify("error", f"There is no prediction of '{image_layer.name}' yet: press Predict first.")
            return 0
        view = _layers.viewed_slice(self.viewer, prediction)
        axis, index = view if view is not None else (None, 0)
        try:
            changed = _layers.copy_slice_to_annotation(prediction, annotation, axis, index)
        except _layers.LayerError as error:
            _notify("error", str(error))
            return 0
        where = "the image" if axis is None else f"slice {'ZYX'[axis]}={index}"
        self._set_status(
            f"Copied {changed:,} voxels of {where} into '{annotation.name}' (Ctrl+Z undoes). "
            "Fix the errors, then Train more."
        )
        self._schedule_stats()
        return changed

    # =============================================================== model
    def ask_save_path(self) -> str:
        """File dialog for saving; tests replace it."""
        path, _ = QFileDialog.getSaveFileName(self, "Save Sparse U-Net model", "model.pt", MODEL_FILTER)
        return path

    def ask_open_path(self) -> str:
        """File dialog for loading; tests replace it."""
        path, _ = QFileDialog.getOpenFileName(self, "Load Sparse U-Net model", "", MODEL_FILTER)
        return path

    def save_model(self) -> str | None:
        if self.model is None:
            _notify("error", "There is no model to save yet.")
            return None
        path = self.ask_save_path()
        if not path:
            return None
        try:
            self.model.save(path)
        except (OSError, ValueError) as error:
            _notify("error", f"Could not save the model: {error}")
            return None
        self._set_status(f"Model saved to {path}.")
        return path

    def load_model(self) -> Any:
        path = self.ask_open_path()
        if not path:
            return None
        from ..core.checkpoint import CheckpointError, SegmentationModel

        try:
            model = SegmentationModel.load(path)
        except (CheckpointError, OSError) as error:
            _notify("error", str(error))
            return None
        self.model = model
        self._show_model()
        self._set_status(f"Loaded {path}. Predict works now; painting and Train more fine-tune it.")
        self.update_stats()
        return model

    def _show_model(self) -> None:
        model = self.model
        if model is None:
            self.model_label.setText("No model yet.")
            return
        config = model.train_config
        lines = model.describe().splitlines()
        preset = next((PRESET_LABELS.get(k, k) for k, v in _presets().items()
                       if dataclasses.replace(v, max_steps=1, max_time=None) == dataclasses.replace(config, max_steps=1, max_time=None)), None)
        budget = f"{config.max_steps} steps" + (f" / {config.max_time:.0f} s" if config.max_time else "")
        lines.append(f"settings: {preset or 'custom'}, budget {budget}, batch {config.batch_size}, device {config.device}")
        self.model_label.setText("<br>".join(html.escape(line) for line in lines))
        self.model_label.setToolTip(config.to_json())
        self._update_buttons()

    # ============================================================ shutdown
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop a running job and wait for its thread (closing napari or the widget)."""
        self._stats_timer.stop()
        job, worker = self._job, self._worker
        if job is None or worker is None:
            return
        job.stop()
        deadline = time.monotonic() + timeout
        # The job ends at its next step; its thread does not need the main thread to finish.
        while worker.is_running and not job.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not job.done.is_set():
            worker.quit()
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.02)

    def closeEvent(self, event: Any) -> None:
        self._teardown()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        # napari's dock close button re-parents the widget to None: stop there.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.busy:
            self.shutdown()
        return super().event(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        window = self.window()
        previous = self._filtered_window() if self._filtered_window is not None else None
        if window is not self and window is not previous:
            if previous is not None:
                previous.removeEventFilter(self)
            window.installEventFilter(self)
            # weakly: holding napari's main window would keep the whole viewer alive
            self._filtered_window = weakref.ref(window)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        window = self._filtered_window() if self._filtered_window is not None else None
        if obj is window and event.type() == QEvent.Type.Close and self.busy:
            # The close may still be refused (a confirm dialog): stop only once the window is gone.
            QTimer.singleShot(0, self._stop_if_window_closed)
        return False

    def _stop_if_window_closed(self) -> None:
        window = self._filtered_window() if self._filtered_window is not None else None
        if window is not None and not window.isVisible():
            self.shutdown()

    def _teardown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        self.shutdown()
        try:
            self._disconnect_viewer()
        except Exception:  # the viewer may already be closed
            pass


def _find(combo: QComboBox, data: Any) -> int:
    """Index of the item holding ``data`` (by identity: layers are not comparable QVariants)."""
    for i in range(combo.count()):
        if combo.itemData(i) is data:
            return i
    return -1


def _drive(generator: Any) -> Any:
    """Run a job's generator in the worker; the widget keeps the generator to close it on abort."""
    return (yield from generator)


def _presets() -> dict[str, Any]:
    from ..core.config import PRESETS

    return PRESETS


def _available_devices() -> tuple[str, ...]:
    from ..core.device import available_devices

    return tuple(available_devices())
