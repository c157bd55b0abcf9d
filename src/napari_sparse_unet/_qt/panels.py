"""The small groups of the dock widget: Prediction, Model, and the progress lines."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import UserInputError
from ..core.presets import preset_of
from .notify import notify
from .training_panel import PRESET_LABELS

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel

MODEL_FILTER = "Sparse U-Net model (*.pt);;All files (*)"
# A bioimage.io package written by 'napari-sparse-unet export' loads like a .pt file.
OPEN_MODEL_FILTER = "Sparse U-Net model or bioimage.io package (*.pt *.zip);;All files (*)"
PACKAGE_FILTER = "bioimage.io model package (*.zip)"
NO_IMAGE_TO_EXPORT = "Pick an image layer: the package's test input is taken from it."



class PredictionPanel(QGroupBox):
    """Predict the whole image (optionally with probabilities and flip TTA); copy a predicted slice into the annotation."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__("Prediction", parent)
        form = QFormLayout(self)
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


class ModelPanel(QGroupBox):
    """Save, load and export the model (``loaded`` is emitted with a loaded model); a few lines describing it.

    ``image`` returns the selected image as (C, *spatial), or raises a
    ``UserInputError``; an export takes its test input from it.
    """

    loaded = Signal(object)
    status_changed = Signal(str)
    export_requested = Signal(object)  # an ExportJob, for the widget's job runner

    def __init__(self, model: Callable[[], Any], image: Callable[[], Any] | None = None, parent: Any = None) -> None:
        super().__init__("Model", parent)
        self.model = model  # the widget's current model, or None
        self.image = image
        form = QFormLayout(self)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save…")
        self.load_button = QPushButton("Load…")
        self.export_button = QPushButton("Export to bioimage.io…")
        self.export_button.setToolTip("Write a bioimage.io model package (.zip); its test input is the centre of the selected image")
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        row.addWidget(self.export_button)
        form.addRow(row)
        self.model_label = QLabel("No model yet: paint, then Train, or Load a model.")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        self.save_button.clicked.connect(self.save_model)
        self.load_button.clicked.connect(self.load_model)
        self.export_button.clicked.connect(self.export_model)

    def ask_save_path(self) -> str:
        """File dialog for saving; tests replace it."""
        return QFileDialog.getSaveFileName(self, "Save Sparse U-Net model", "model.pt", MODEL_FILTER)[0]

    def ask_open_path(self) -> str:
        """File dialog for loading; tests replace it."""
        return QFileDialog.getOpenFileName(self, "Load Sparse U-Net model", "", OPEN_MODEL_FILTER)[0]

    def ask_export_path(self) -> str:
        """File dialog for the bioimage.io package; tests replace it."""
        return QFileDialog.getSaveFileName(self, "Export to bioimage.io", "model.zip", PACKAGE_FILTER)[0]

    def export_model(self) -> bool:
        """Ask for a path and request the export (tracing and validating take seconds); False when refused."""
        model = self.model()
        try:
            if model is None:
                raise UserInputError("There is no model to export yet.")
            if self.image is None:
                raise UserInputError(NO_IMAGE_TO_EXPORT)
            image = self.image()
        except UserInputError as error:
            notify("error", str(error))
            return False
        path = self.ask_export_path()
        if not path:
            return False
        from ..jobs import ExportJob

        self.export_requested.emit(ExportJob(model, path, image))
        return True

    def save_model(self) -> str | None:
        model = self.model()
        if model is None:
            notify("error", "There is no model to save yet.")
            return None
        path = self.ask_save_path()
        if not path:
            return None
        try:
            model.save(path)
        except OSError as error:
            notify("error", f"Could not save the model: {error}")
            return None
        self.status_changed.emit(f"Model saved to {path}.")
        return path

    def load_model(self) -> Any:
        path = self.ask_open_path()
        if not path:
            return None
        from ..core.checkpoint import SegmentationModel

        try:
            model = SegmentationModel.load(path)
        except (UserInputError, OSError) as error:
            notify("error", str(error))
            return None
        self.loaded.emit(model)
        self.status_changed.emit(f"Loaded {path}. Predict works now; painting and Train more fine-tune it.")
        return model

    def show_model(self, model: SegmentationModel) -> None:
        if model is None:
            self.model_label.setText("No model yet.")
            return
        config = model.train_config
        preset = preset_of(config)
        budget = f"{config.max_steps} steps" + (f" / {config.max_time:.0f} s" if config.max_time else "")
        lines = model.describe().splitlines()
        lines.append(f"settings: {PRESET_LABELS.get(preset, preset) if preset else 'custom'}, budget {budget}, "
                     f"batch {config.batch_size}, device {config.device}")
        self.model_label.setText("<br>".join(html.escape(line) for line in lines))
        self.model_label.setToolTip(config.to_json())


class ProgressPanel(QWidget):
    """The status line, the progress bar and the step line (loss, Dice, tiles)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        layout.addWidget(self.progress_bar)
        self.loss_label = QLabel("")
        layout.addWidget(self.loss_label)
        # Room for two status lines and one step line from the start: a label that grows
        # re-lays out the window, and napari redraws its canvas for it (a stall while training).
        line = self.fontMetrics().lineSpacing()
        self.status_label.setMinimumHeight(2 * line)
        self.loss_label.setMinimumHeight(line)
        self._val_dice: float | None = None

    def start(self, status: str) -> None:
        self.progress_bar.setValue(0)
        self.loss_label.setText("")
        self._val_dice = None
        self.status_label.setText(status)

    def training_step(self, event: Any) -> None:
        self.progress_bar.setValue(int(1000 * event.progress))
        if event.val_dice is not None:
            self._val_dice = event.val_dice
        text = f"step {event.step}/{event.max_steps} · loss {event.loss:.3f}"
        if self._val_dice is not None:
            text += f" · val Dice {self._val_dice:.3f}"
        self.loss_label.setText(text + f" · {event.elapsed:.0f} s")

    def prediction_step(self, event: Any) -> None:
        self.progress_bar.setValue(int(1000 * event.tiles_done / max(int(event.tiles_total), 1)))
        self.loss_label.setText(f"tile {event.tiles_done}/{event.tiles_total} · {event.elapsed:.0f} s")
