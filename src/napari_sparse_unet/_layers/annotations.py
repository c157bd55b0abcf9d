"""Annotation layers: copies for training, new empty layers, class names and colours, edits and their statistics, copying a predicted slice in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.annotation import AnnotationCounter, AnnotationStats
from ..core.rules import annotation_shape_problem
from .files import source_geometry
from .images import ImageSnapshot, LayerError, image_channel_axis, spatial_shape_of, spatial_transform
from .view import viewed_slice

if TYPE_CHECKING:  # napari only for type hints: importing this stays cheap
    import napari
    from napari.layers import Image, Labels


def annotation_copy(layer: Labels, image: ImageSnapshot | None = None) -> np.ndarray:
    """Copy of an annotation layer's data (Z, Y, X) or (Y, X), so the user can keep painting.

    Raises:
        LayerError: multiscale data, or a spatial shape different from ``image``'s.
    """
    if getattr(layer, "multiscale", False):
        raise LayerError(f"annotation layer '{layer.name}' is multiscale; pick a single-resolution labels layer")
    if image is not None:
        problem = annotation_shape_problem(
            image.spatial_shape, layer.data.shape, f"image '{image.name}'", f"annotation layer '{layer.name}'"
        )
        if problem:
            raise LayerError(problem)
    return np.array(layer.data, copy=True)


def annotation_rows(layer: Labels, start: int, stop: int) -> np.ndarray:
    """Copy of rows ``start:stop`` along axis 0 of an annotation layer's data (edited slices, for a running training)."""
    return np.array(layer.data[start:stop], copy=True)


def add_annotation_layer(viewer: napari.Viewer, image: Image, first_axis_is_channel: bool = False) -> Labels:
    """Add an empty annotation layer with the image's spatial shape, scale and translate.

    The new layer is selected, in paint mode, with label 1 (background) ready.
    """
    axis = image_channel_axis(image, first_axis_is_channel)
    shape = spatial_shape_of(image, first_axis_is_channel)
    if len(shape) not in (2, 3):
        raise LayerError(f"image layer '{image.name}' has shape {tuple(image.data.shape)}; cannot make an annotation for it")
    scale, translate = spatial_transform(image, axis)
    layer = viewer.add_labels(
        np.zeros(shape, dtype=np.uint8), name="annotation", scale=scale, translate=translate,
        metadata=source_geometry(image.metadata),  # saved as NIfTI, it lands on the scan's voxel grid
    )
    layer.selected_label = 1
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    return layer


def class_names_of(layer: Labels | None, values: Iterable[int], fallback: Mapping[int, str] | None = None) -> tuple[str, ...]:
    """A name per annotation value: from ``layer.metadata["class_names"]`` ({value: name}) when
    present (the sample data sets it), else from ``fallback`` (e.g. a model's names), else
    "background" for 1 and "class v" for others."""
    given = getattr(layer, "metadata", {}).get("class_names", {}) if layer is not None else {}
    if not isinstance(given, dict) or not given:
        given = dict(fallback or {})
    names = []
    for value in values:
        name = given.get(value, given.get(str(value)))
        names.append(str(name) if name else ("background" if value == 1 else f"class {value}"))
    return tuple(names)


def label_color_hex(layer: Labels | None, value: int) -> str:
    """Colour of a label value in a labels layer, as #rrggbb (grey when unknown)."""
    if layer is None:
        return "#808080"
    try:
        rgba = np.asarray(layer.get_color(int(value)), dtype=float)
    except Exception:  # colour lookup is cosmetic: never fail the stats display for it
        return "#808080"
    if rgba is None or rgba.size < 3:
        return "#808080"
    r, g, b = (int(round(255 * float(np.clip(c, 0, 1)))) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


class AnnotationWatcher:
    """Follows one labels layer's edits and keeps its painted-voxel statistics up to date.

    Paint events mark the slices they touched, a new ``data`` marks everything,
    and a refresh (undo/redo) marks the viewed slice; :meth:`stats` then
    recounts only what was marked.  ``on_change`` is called after each edit.
    Objects in :attr:`listeners` (e.g. a ``core.annotation.ChangedRows``) are
    marked alike, as long as the same layer is followed.
    """

    def __init__(self, viewer: napari.Viewer, on_change: Callable[[], None]) -> None:
        self.viewer = viewer
        self.on_change = on_change
        self.layer: Labels | None = None
        self.counter = AnnotationCounter()
        self.listeners: list[Any] = []

    def _marked(self) -> list[Any]:
        return [self.counter, *self.listeners]

    def _slots(self, layer: Labels) -> list[tuple[Any, Callable[..., None]]]:
        events = layer.events
        return [(events.paint, self._on_paint), (events.data, self._on_data), (events.set_data, self._on_refresh)]

    def watch(self, layer: Labels | None) -> None:
        """Follow ``layer`` (None: nothing) instead of the current one."""
        if layer is self.layer:
            return
        if self.layer is not None:
            for event, slot in self._slots(self.layer):
                event.disconnect(slot)
        self.layer = layer
        self.counter = AnnotationCounter()
        for listener in self.listeners:  # edits of another layer: all of it is new to them
            listener.mark_all()
        if layer is not None:
            for event, slot in self._slots(layer):
                event.connect(slot)

    def stats(self) -> AnnotationStats | None:
        """The statistics of the followed layer after recounting what changed (None: no usable layer)."""
        if self.layer is None or getattr(self.layer, "multiscale", False):
            return None
        return self.counter.update(self.layer.data)

    def _on_paint(self, event: Any) -> None:
        ranges, unknown = dirty_slices_of_paint(getattr(event, "value", None))
        for marked in self._marked():
            if unknown:
                marked.mark_all()
            for start, stop in ranges:
                marked.mark_range(start, stop)
        self.on_change()

    def _on_data(self, *_: Any) -> None:
        for marked in self._marked():
            marked.mark_all()
        self.on_change()

    def _on_refresh(self, *_: Any) -> None:
        # A refresh follows undo/redo and slicing; only the viewed slice can have changed.
        view = viewed_slice(self.viewer, self.layer) if self.layer is not None else None
        for marked in self._marked():
            if view is None or view[0] != 0:
                marked.mark_all()
            else:
                marked.mark_slices([view[1]])
        self.on_change()


def dirty_slices_of_paint(event_value: Any) -> tuple[list[tuple[int, int]], bool]:
    """Axis-0 ranges changed by a Labels ``paint`` event.

    Returns (ranges as (start, stop), unknown) where ``unknown`` means some edit
    could not be located and everything must be recounted.
    """
    ranges: list[tuple[int, int]] = []
    unknown = False
    for atom in event_value or ():
        key = getattr(atom, "slice_key", None)
        if key is not None and len(key) and isinstance(key[0], slice):
            first = key[0]
            start = 0 if first.start is None else int(first.start)
            stop = start + 1 if first.stop is None else int(first.stop)
            ranges.append((start, stop))
            continue
        try:  # data_setitem atoms: (indices, old values, new values)
            indices = atom[0]
            first_axis = np.asarray(indices[0])
            if first_axis.size:
                ranges.append((int(first_axis.min()), int(first_axis.max()) + 1))
        except Exception:
            unknown = True
    return ranges, unknown


def copy_slice_to_annotation(prediction: Labels, annotation: Labels, axis: int | None, index: int = 0) -> int:
    """Copy the prediction on one slice into the unpainted voxels of the annotation.

    ``axis`` None copies the whole (2-D) image.

    Background (0 in the prediction) becomes 1; voxels the user already painted are
    kept, since they are the ground truth.  The edit goes through
    ``Labels.data_setitem`` so it is one undoable step (Ctrl+Z).

    Returns:
        The number of annotation voxels changed.
    """
    if tuple(prediction.data.shape) != tuple(annotation.data.shape):
        raise LayerError(
            f"prediction '{prediction.name}' {tuple(prediction.data.shape)} and annotation '{annotation.name}' "
            f"{tuple(annotation.data.shape)} differ in shape"
        )
    key: list[Any] = [slice(None)] * prediction.data.ndim
    if axis is not None:
        key[axis] = index
    predicted = np.asarray(prediction.data[tuple(key)])
    painted = np.asarray(annotation.data[tuple(key)])
    values = np.where(predicted == 0, 1, predicted)
    where = np.nonzero((painted == 0) & (values != painted))
    if where[0].size == 0:
        return 0
    indices = list(where)
    if axis is not None:
        indices.insert(axis, np.full(where[0].shape, index, dtype=np.intp))
    annotation.data_setitem(tuple(indices), values[where].astype(annotation.data.dtype, copy=False))
    return int(where[0].size)
