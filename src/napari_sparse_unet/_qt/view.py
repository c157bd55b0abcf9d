"""Following what the user looks at, for the training previews."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer

from .. import _layers
from ..jobs import ViewedSlice

VIEW_DELAY_MS = 150  # the visible region is read after napari has redrawn the moved camera


class ViewFollower(QObject):
    """Keeps :attr:`viewed` (read by the training worker) on the slice and region shown of an image layer.

    ``image`` returns the layer to follow and whether its first axis is channels, or None.
    """

    def __init__(self, viewer: Any, image: Callable[[], tuple[Any, bool] | None], parent: QObject) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.image = image
        self.viewed = ViewedSlice()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(VIEW_DELAY_MS)
        self._timer.timeout.connect(self.update)
        dims, camera = viewer.dims.events, viewer.camera.events
        self._connections = [(dims.current_step, self.update), (dims.order, self.update), (dims.ndisplay, self.update),
                             (camera.center, self.schedule), (camera.zoom, self.schedule)]
        for event, slot in self._connections:
            event.connect(slot)

    def schedule(self, *_: Any) -> None:
        self._timer.start()

    def update(self, *_: Any) -> None:
        followed = self.image()
        if followed is None:
            self.viewed.set(None)
            return
        layer, first_axis_is_channel = followed
        axis = _layers.image_channel_axis(layer, first_axis_is_channel)
        try:
            self.viewed.set(_layers.viewed_slice(self.viewer, layer, axis), _layers.visible_box(self.viewer, layer, axis))
        except Exception:  # the layer may be mid-removal; the preview keeps the last slice
            pass

    def disconnect_viewer(self) -> None:
        self._timer.stop()
        for event, slot in self._connections:
            event.disconnect(slot)
