"""Two small groups of the dock widget: instances of a class, and where to paint next.

``InstancesPanel`` turns its controls into an :class:`~..core.analysis.instances.InstanceConfig`
(or None when unchecked); ``NextSlicePanel`` asks for an uncertainty layer and
shows the ranking of slices where the model is least sure, emitting
``slice_chosen(axis, index)`` when one is clicked.  Neither touches layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
)

from ..core.analysis.uncertainty import UNCERTAINTY_MEASURES

# Label in the method box -> (method, landscape).
INSTANCE_CHOICES = {
    "watershed on distance": ("watershed", "distance"),
    "watershed on probability": ("watershed", "probability"),
    "connected components": ("components", "distance"),
}
AXES = "ZYX"


class InstancesPanel(QGroupBox):
    """Instances of one class after each prediction: class, method, minimum size."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__("Instances", parent)
        form = QFormLayout(self)
        row = QHBoxLayout()
        self.instances_check = QCheckBox("one label per object of")
        self.instances_check.setToolTip("After Predict, add an 'instances' Labels layer: one value per object of the class")
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("The class to split into objects (train or load a model to list its classes)")
        row.addWidget(self.instances_check)
        row.addWidget(self.class_combo, 1)
        form.addRow(row)
        row = QHBoxLayout()
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(INSTANCE_CHOICES))
        self.method_combo.setToolTip(
            "Watershed splits touching objects (seeded by the distance to the border or by the class probability); "
            "connected components keeps touching objects together"
        )
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setValue(20)
        self.min_size_spin.setSuffix(" vox min")
        self.min_size_spin.setToolTip("Objects smaller than this many voxels are dropped")
        row.addWidget(self.method_combo, 1)
        row.addWidget(self.min_size_spin)
        form.addRow(row)

    def set_classes(self, values: Sequence[int], names: Sequence[str] = ()) -> None:
        """List the model's foreground classes (values 2..), keeping the chosen one when it is still there."""
        chosen = self.class_combo.currentData()
        self.class_combo.clear()
        for i, value in enumerate(values):
            if value < 2:
                continue
            name = names[i] if i < len(names) and names[i] else f"class {value}"
            self.class_combo.addItem(f"{value}: {name}", int(value))
        index = self.class_combo.findData(chosen)
        if index >= 0:
            self.class_combo.setCurrentIndex(index)

    def settings(self) -> Any:
        """The InstanceConfig asked for, or None when unchecked (raises UserInputError for bad settings)."""
        if not self.instances_check.isChecked():
            return None
        from ..core.errors import UserInputError
        from ..core.analysis.instances import InstanceConfig

        value = self.class_combo.currentData()
        if value is None:
            raise UserInputError("Instances: the model has no class to split (train or load a model with a class 2 or more).")
        method, landscape = INSTANCE_CHOICES[self.method_combo.currentText()]
        return InstanceConfig(int(value), method=method, landscape=landscape, min_size=self.min_size_spin.value())


class NextSlicePanel(QGroupBox):
    """An uncertainty layer after each prediction and the slices where the model is least sure."""

    slice_chosen = Signal(int, int)  # spatial axis, index

    def __init__(self, parent: Any = None, rows: int = 8) -> None:
        super().__init__("Where to paint next", parent)
        self.rows = rows
        form = QFormLayout(self)
        row = QHBoxLayout()
        self.uncertainty_check = QCheckBox("uncertainty")
        self.uncertainty_check.setToolTip(
            "After Predict, add an 'uncertainty' layer (0 sure .. 255 unsure) and rank the unpainted slices "
            "along the axis you scroll, least sure first"
        )
        self.measure_combo = QComboBox()
        self.measure_combo.addItems(list(UNCERTAINTY_MEASURES))
        self.measure_combo.setToolTip("entropy of the class probabilities, or 1 - margin between the two best classes")
        row.addWidget(self.uncertainty_check)
        row.addWidget(self.measure_combo, 1)
        form.addRow(row)
        self.ranking_list = QListWidget()
        self.ranking_list.setToolTip("Click a slice to go there")
        self.ranking_list.setMaximumHeight(self.fontMetrics().lineSpacing() * (rows + 1))
        self.ranking_list.setVisible(False)
        form.addRow(self.ranking_list)
        self.ranking_list.itemClicked.connect(self._on_clicked)

    def measure(self) -> str | None:
        return self.measure_combo.currentText() if self.uncertainty_check.isChecked() else None

    def show_ranking(self, ranking: Sequence[Any], spatial_dims: int = 3) -> None:
        """List the first slices of ``ranking`` (SliceScore items)."""
        self.ranking_list.clear()
        names = AXES[3 - spatial_dims :]
        for score in ranking[: self.rows]:
            item = QListWidgetItem(f"{names[score.axis]} = {score.index}   ({score.score:.3f})")
            item.setData(Qt.ItemDataRole.UserRole, (int(score.axis), int(score.index)))
            self.ranking_list.addItem(item)
        self.ranking_list.setVisible(bool(ranking))

    def _on_clicked(self, item: QListWidgetItem) -> None:
        axis, index = item.data(Qt.ItemDataRole.UserRole)
        self.slice_chosen.emit(int(axis), int(index))
