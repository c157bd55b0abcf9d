"""The Training group: a preset and the settings it fills in, Train and Stop."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..core.config import PRESETS, PredictConfig, TrainConfig
from ..core.presets import default_preset
from ..core.rules import DEVICE_NAMES, parse_patch_size

# Preset key in core.config.PRESETS -> what the user sees.
PRESET_LABELS = {"cpu": "CPU quick", "gpu-small": "GPU", "gpu-large": "GPU large"}


def _spin(kind: type, low: float, high: float, tooltip: str = "", **settings: Any) -> Any:
    spin = kind()
    spin.setRange(low, high)
    spin.setToolTip(tooltip)
    for name, value in settings.items():
        getattr(spin, f"set{name[0].upper()}{name[1:]}")(value)
    return spin


class TrainingPanel(QGroupBox):
    """Maps the preset and the fields to a TrainConfig (and the shared prediction settings)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__("Training", parent)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)
        self.preset_combo = QComboBox()
        for key in PRESETS:
            self.preset_combo.addItem(PRESET_LABELS.get(key, key), key)
        form.addRow("Preset", self.preset_combo)
        self.time_spin = _spin(QSpinBox, 0, 24 * 3600, "Training stops after this time or the number of steps, "
                               "whichever comes first", suffix=" s", specialValueText="no limit")
        form.addRow("Time limit", self.time_spin)
        self.steps_spin = _spin(QSpinBox, 1, 1_000_000)
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
        self.batch_spin = _spin(QSpinBox, 1, 64)
        adv.addRow("Batch size", self.batch_spin)
        self.lr_spin = _spin(QDoubleSpinBox, 1e-5, 1.0, decimals=5, singleStep=1e-4)
        adv.addRow("Learning rate", self.lr_spin)
        self.channels_spin = _spin(QSpinBox, 2, 128, "Feature maps of the first U-Net level (new models only)")
        adv.addRow("Base channels", self.channels_spin)
        self.depth_spin = _spin(QSpinBox, 1, 6, "Number of down-sampling levels (new models only)")
        adv.addRow("Depth", self.depth_spin)
        self.augment_check = QCheckBox("flips, rotations, intensity")
        adv.addRow("Augmentation", self.augment_check)
        self.validation_check = QCheckBox("hold out one painted slice (6+ slices)")
        adv.addRow("Validation", self.validation_check)
        self.amp_check = QCheckBox("GPU; CPU prediction with bfloat16 units")
        self.amp_check.setToolTip("float16/bfloat16 where the device is fast and safe at it; float32 elsewhere")
        adv.addRow("Mixed precision", self.amp_check)
        self.preview_spin = _spin(QDoubleSpinBox, 0.0, 600.0, "While training, predict the viewed slice this often",
                                  decimals=1, value=5.0, suffix=" s", specialValueText="off")
        adv.addRow("Preview every", self.preview_spin)
        self.finetune_check = QCheckBox("continue from the current model")
        self.finetune_check.setChecked(True)
        adv.addRow("Train again", self.finetune_check)
        self.overlap_spin = _spin(QDoubleSpinBox, 0.0, 0.9, singleStep=0.05, value=0.25)
        adv.addRow("Tile overlap", self.overlap_spin)
        self.advanced.addWidget(advanced)
        layout.addWidget(self.advanced)

        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop training (the best model so far is kept) or prediction")
        row.addWidget(self.train_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.preset_combo.currentIndexChanged.connect(self.apply_preset)
        self.apply_preset()

    def apply_preset(self, *_: Any) -> None:
        """Fill the fields from the chosen preset."""
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

    def train_config(self, spatial_dims: int = 3) -> TrainConfig:
        """The preset with the user's changes; ConfigError for a bad field (e.g. the patch size)."""
        return dataclasses.replace(
            PRESETS[self.preset_combo.currentData()],
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

    def predict_config(self, tta: bool) -> PredictConfig:
        """Prediction settings: the device, precision and overlap chosen here, with ``tta``."""
        return PredictConfig(
            overlap=self.overlap_spin.value(), tta=tta, device=self.device_combo.currentData(),
            mixed_precision=self.amp_check.isChecked(),
        )

    def set_devices(self, devices: Sequence[str], may_change_preset: bool) -> None:
        """Offer the usable devices (best first); on a GPU machine switch the CPU preset to the GPU one."""
        current = self.device_combo.currentData()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem(f"auto ({devices[0]})", "auto")
        for name in DEVICE_NAMES[1:]:
            if name in devices:
                self.device_combo.addItem(name, name)
        self.device_combo.setCurrentIndex(max(self.device_combo.findData(current), 0))
        self.device_combo.blockSignals(False)
        preset = default_preset(devices[0])
        if may_change_preset and self.preset_combo.currentData() == "cpu" and preset != "cpu":
            self.preset_combo.setCurrentIndex(max(self.preset_combo.findData(preset), 0))

    def set_busy(self, busy: bool) -> None:
        self.stop_button.setEnabled(busy)
        self.preset_combo.setEnabled(not busy)
