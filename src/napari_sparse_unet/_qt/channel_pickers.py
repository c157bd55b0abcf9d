"""Extra channel pickers: more image layers stacked, in order, after the Image picker's layer.

MRI sequences (FLAIR, T1c, ...) come as separate image layers; each row here
is a magicgui layer combo box (it follows the viewer's layers by itself) with a
button that removes the row.  The rule that the layers fit together lives in
``core.rules.channels_problem``; this widget only collects the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from magicgui.widgets import ComboBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .. import _layers


class ChannelPickers(QWidget):
    """Rows "channel 2", "channel 3", ...: each picks one image layer.  ``changed`` follows any edit."""

    changed = Signal()

    def __init__(self, viewer: Any, parent: Any = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.pickers: list[ComboBox] = []
        self._rows: list[QWidget] = []
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.setVisible(False)

    def layers(self) -> list[Any]:
        """The picked layers that are still in the viewer, in row order."""
        return [p.value for p in self.pickers if _layers.in_viewer(self.viewer, p.value)]

    def add(self, layer: Any = None) -> ComboBox:
        """Add a row picking ``layer`` (else the combo box's first choice)."""
        picker = ComboBox(choices=lambda _: _layers.named_choices(_layers.image_layers(self.viewer)),
                          tooltip="Another channel of the same image: a layer of the same shape, co-registered")
        row = QWidget()
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        label = QLabel()
        remove = QPushButton("−")
        remove.setToolTip("Remove this channel")
        remove.setFixedWidth(remove.sizeHint().height())
        line.addWidget(label)
        line.addWidget(picker.native, 1)
        line.addWidget(remove)
        self._layout.addWidget(row)
        self.pickers.append(picker)
        self._rows.append(row)
        self._relabel()
        if layer is not None:
            picker.value = layer
        picker.changed.connect(self.changed.emit)
        remove.clicked.connect(lambda: self.remove(picker))
        self.setVisible(True)
        self.changed.emit()
        return picker

    def remove(self, picker: ComboBox) -> None:
        index = self.pickers.index(picker)
        del self.pickers[index]
        row = self._rows.pop(index)
        self._layout.removeWidget(row)
        row.deleteLater()
        self._relabel()
        self.setVisible(bool(self.pickers))
        self.changed.emit()

    def set_layers(self, layers: Sequence[Any]) -> None:
        """Exactly these layers, one row each."""
        while self.pickers:
            self.remove(self.pickers[-1])
        for layer in layers:
            self.add(layer)

    def reset_choices(self) -> None:
        """Follow the viewer's layers: a row keeps its layer while it exists and goes with it."""
        for picker in list(self.pickers):
            kept = picker.value if _layers.in_viewer(self.viewer, picker.value) else None
            if kept is None:
                self.remove(picker)
                continue
            picker.reset_choices()
            picker.value = kept

    def set_enabled(self, enabled: bool) -> None:
        for row in self._rows:
            row.setEnabled(enabled)

    def _relabel(self) -> None:
        for number, row in enumerate(self._rows, start=2):
            row.findChild(QLabel).setText(f"channel {number}")
