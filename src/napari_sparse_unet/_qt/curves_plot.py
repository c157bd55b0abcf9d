"""The training-curve plot: loss above, Dice below, against the training step.

pyqtgraph (a Qt plotting widget that redraws thousands of points in a few ms)
is imported when the plot is first shown, so starting napari does not pay for
it.  While training, the plot reads the job's ``TrainingCurves`` on a timer,
at most twice a second, instead of on every step: the GUI thread does a
bounded amount of drawing however fast the steps come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..core.training.curves import TrainingCurves

REDRAW_MS = 500
HEIGHT = 220

# Column -> (legend name, colour); fit_dice and val_dice share the lower plot.
LOSS = {"loss": ("loss", "#e8a33d")}
DICE = {"fit_dice": ("Dice on painted voxels", "#6cc070"), "val_dice": ("validation Dice", "#5ab0f0")}


class CurvesPlot(QWidget):
    """Loss and Dice against the step, live while training and for a loaded model's saved curves."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._curves = TrainingCurves()
        self._items: dict[str, Any] = {}
        self._plot: Any = None
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self.setVisible(False)

    # ------------------------------------------------------------------ use
    def follow(self, curves: TrainingCurves) -> None:
        """Show ``curves`` (being filled by a training thread), redrawn every :data:`REDRAW_MS` ms."""
        self._curves = curves
        self._show()
        self._timer.start()

    def prepare(self) -> None:
        """Build the (hidden) plot now, so that showing it later is quick."""
        if self._plot is None:
            self._build()

    def stop(self) -> None:
        """Stop following; draw the final curve (or hide the plot when training made no step)."""
        if self._timer.isActive():
            self._timer.stop()
            self.redraw()
            self.setVisible(len(self._curves) > 0)

    def show_curves(self, columns: Mapping[str, Sequence[float]] | None) -> None:
        """Show a saved curve (a model's ``curves``); hide the plot when there is none."""
        self._timer.stop()
        self._curves = TrainingCurves.from_dict(columns)
        if len(self._curves):
            self._show()
        else:
            self.setVisible(False)

    def points(self) -> dict[str, int]:
        """Points given to each curve (before pyqtgraph thins them for the screen)."""
        counts = {}
        for name, item in self._items.items():
            x = item.xData  # the data set, not the on-screen reduction that getData() returns
            counts[name] = 0 if x is None else len(x)
        return counts

    # -------------------------------------------------------------- drawing
    def _show(self) -> None:
        if self._plot is None:
            self._build()
        self.setVisible(True)
        self.redraw()

    def _build(self) -> None:
        try:
            import pyqtgraph as pg
        except ImportError:  # a base dependency; a broken install still gets a working widget
            self._plot = QLabel("Install pyqtgraph to see the training curves.")
            self._layout.addWidget(self._plot)
            return
        self._plot = pg.GraphicsLayoutWidget()
        self._plot.setFixedHeight(HEIGHT)
        upper = self._plot.addPlot(row=0, col=0)
        lower = self._plot.addPlot(row=1, col=0)
        lower.setXLink(upper)
        upper.setLabel("left", "loss")
        lower.setLabel("left", "Dice")
        lower.setLabel("bottom", "step")
        lower.setYRange(0.0, 1.0, padding=0.02)
        lower.enableAutoRange(axis="y", enable=False)
        for plot, curves in ((upper, LOSS), (lower, DICE)):
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setDownsampling(auto=True, mode="peak")  # thousands of steps drawn as about a pixel's worth
            plot.setClipToView(True)
            legend = plot.addLegend(offset=(-5, 5))
            legend.setLabelTextSize("7pt")
            for column, (name, colour) in curves.items():
                symbol = "o" if column == "val_dice" else None  # measured every few dozen steps: show the points
                self._items[column] = plot.plot(name=name, pen=pg.mkPen(colour, width=1.5), symbol=symbol,
                                                symbolSize=5, symbolBrush=colour, symbolPen=None)
        self._layout.addWidget(self._plot)

    def redraw(self) -> None:
        if not self._items:
            return
        columns = self._curves.columns()
        step = columns["step"]
        for column, item in self._items.items():
            values = columns[column]
            finite = np.isfinite(values)
            item.setData(step[finite], values[finite])
