"""Corrections painted while training runs: edited slices are copied and handed to the job, once a second.

The annotation watcher (``_layers.AnnotationWatcher``) marks the slices each
paint event touched; a timer copies only those rows of the layer, on the main
thread, and hands them to the running ``TrainJob``, which takes them into its
training data between two steps.  A stroke costs one slice's copy, not the
whole volume's, however often the user paints.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, QTimer

from .. import _layers
from ..core.annotation import ChangedRows

# How often edits are handed to the training job, milliseconds.
HAND_OVER_MS = 1000


class CorrectionFeed(QObject):
    """Feeds edits of the watched annotation layer to one running training job."""

    def __init__(self, watcher: _layers.AnnotationWatcher, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.watcher = watcher
        self.edits = ChangedRows()
        self._job: Any = None
        self._layer: Any = None
        self._timer = QTimer(self)
        self._timer.setInterval(HAND_OVER_MS)
        self._timer.timeout.connect(self.hand_over)

    def follow(self, job: Any, layer: Any) -> None:
        """Hand edits of ``layer`` (the annotation ``job`` was started with) to ``job`` until :meth:`stop`."""
        self.stop()
        self._job, self._layer = job, layer
        self.edits.take(0)  # what was painted before the start is in the job's copy already
        self.watcher.listeners.append(self.edits)
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        if self.edits in self.watcher.listeners:
            self.watcher.listeners.remove(self.edits)
        self._job = self._layer = None

    def hand_over(self) -> None:
        """Copy the rows edited since the last call and give them to the job."""
        job, layer = self._job, self._layer
        if job is None or layer is None or not self.edits.pending or self.watcher.layer is not layer:
            return
        for start, stop in self.edits.take(int(layer.data.shape[0])):
            job.correct(start, _layers.annotation_rows(layer, start, stop))
