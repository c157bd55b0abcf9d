"""The adapter between napari layers and the headless core.

This is the only module that touches napari layer objects.  Data flows one way:
layer data and metadata are copied here on the main thread, the core works on the
copies in a worker thread, and the results come back here to become layer data.

Axis order: napari image data is (Z, Y, X) or (Y, X); a multi-channel image is a
4-D (C, Z, Y, X) layer, an RGB(A) (Y, X, 3|4) layer, or a 3-D layer whose first
axis the user marks as channels.  Everything handed to the core is channel-first,
(C, *spatial).  Annotations and predictions have the spatial shape only.

Label convention: annotation 0 = not painted, 1 = background, 2.. = classes;
predictions show background as 0 and each class with its painted value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # napari is imported only for type hints: this module stays cheap to import
    import napari
    from napari.layers import Image, Labels

PREDICTION_KEY = "sparse_unet_prediction_of"  # layer.metadata key: name of the predicted image


class LayerError(ValueError):
    """A layer cannot be used as asked; the message names the layer and the reason."""


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageSnapshot:
    """What the core needs from an image layer, read on the main thread.

    ``data`` is (C, *spatial), a view of the layer data (no copy: napari's tools
    never edit image data in place, and copying a large volume would double its
    memory).  ``scale`` and ``translate`` are for the spatial axes only.
    """

    data: Any
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    channel_axis: int | None  # axis of the layer data holding channels, None if single channel

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return len(self.data.shape) - 1

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])


def image_channel_axis(layer: Image, first_axis_is_channel: bool = False) -> int | None:
    """Axis of ``layer.data`` that holds channels, or None.

    4-D layers are (C, Z, Y, X); RGB(A) layers are (Y, X, C); a 3-D layer is a
    volume unless the user said its first axis is channels.
    """
    ndim = layer.data.ndim
    if getattr(layer, "rgb", False):
        return ndim - 1
    if ndim == 4 or (ndim == 3 and first_axis_is_channel):
        return 0
    return None


def spatial_shape_of(layer: Image, first_axis_is_channel: bool = False) -> tuple[int, ...]:
    """Spatial shape (Z, Y, X) or (Y, X) of an image layer."""
    shape = [int(s) for s in layer.data.shape]
    axis = image_channel_axis(layer, first_axis_is_channel)
    if axis is not None:
        del shape[axis]
    return tuple(shape)


def image_snapshot(layer: Image, first_axis_is_channel: bool = False) -> ImageSnapshot:
    """Read an image layer as a channel-first array plus its spatial scale/translate.

    Raises:
        LayerError: multiscale data, or a shape that is neither 2-D nor 3-D in space.
    """
    if getattr(layer, "multiscale", False):
        raise LayerError(f"image layer '{layer.name}' is multiscale; pick a single-resolution image")
    data = layer.data
    axis = image_channel_axis(layer, first_axis_is_channel)
    spatial = spatial_shape_of(layer, first_axis_is_channel)
    if len(spatial) not in (2, 3):
        raise LayerError(
            f"image layer '{layer.name}' has shape {tuple(data.shape)}: expected a 3-D (Z, Y, X) volume, "
            "a 2-D (Y, X) image, or either with a channel axis"
        )
    if axis is None:
        data_cf = data[np.newaxis]
    elif axis == 0:
        data_cf = data
    else:
        data_cf = np.moveaxis(np.asarray(data), axis, 0)
    scale, translate = _spatial_transform(layer, axis)
    return ImageSnapshot(data=data_cf, name=str(layer.name), scale=scale, translate=translate, channel_axis=axis)


def _spatial_transform(layer: Any, channel_axis: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # napari keeps no scale for the RGB axis, but does for a leading channel axis.
    scale = [float(s) for s in layer.scale]
    translate = [float(t) for t in layer.translate]
    if channel_axis == 0 and not getattr(layer, "rgb", False):
        scale, translate = scale[1:], translate[1:]
    return tuple(scale), tuple(translate)


# ---------------------------------------------------------------------- annotations


def annotation_copy(layer: Labels, spatial_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Copy of an annotation layer's data (Z, Y, X) or (Y, X), so the user can keep painting.

    Raises:
        LayerError: multiscale data, or a spatial shape different from the image's.
    """
    if getattr(layer, "multiscale", False):
        raise LayerError(f"annotation layer '{layer.name}' is multiscale; pick a single-resolution labels layer")
    shape = tuple(int(s) for s in layer.data.shape)
    if spatial_shape is not None and shape != tuple(spatial_shape):
        raise LayerError(
            f"annotation layer '{layer.name}' has shape {shape} but the image is {tuple(spatial_shape)}: "
            "pick an annotation with the image's shape or create a new one"
        )
    return np.array(layer.data, copy=True)


def add_annotation_layer(viewer: napari.Viewer, image: Image, first_axis_is_channel: bool = False) -> Labels:
    """Add an empty annotation layer with the image's spatial shape, scale and translate.

    The new layer is selected, in paint mode, with label 1 (background) ready.
    """
    axis = image_channel_axis(image, first_axis_is_channel)
    shape = spatial_shape_of(image, first_axis_is_channel)
    if len(shape) not in (2, 3):
        raise LayerError(f"image layer '{image.name}' has shape {tuple(image.data.shape)}; cannot make an annotation for it")
    scale, translate = _spatial_transform(image, axis)
    layer = viewer.add_labels(
        np.zeros(shape, dtype=np.uint8), name="annotation", scale=scale, translate=translate
    )
    layer.selected_label = 1
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    return layer


def class_names_of(layer: Labels | None, values: Iterable[int]) -> tuple[str, ...]:
    """A name per annotation value: from ``layer.metadata["class_names"]`` ({value: name}) when
    present (the sample data sets it), else "background" for 1 and "class v" for others."""
    given = getattr(layer, "metadata", {}).get("class_names", {}) if layer is not None else {}
    names = []
    for value in values:
        name = given.get(value, given.get(str(value))) if isinstance(given, dict) else None
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


# --------------------------------------------------------------- the viewed slice


def viewed_slice(viewer: napari.Viewer, layer: Any, channel_axis: int | None = None) -> tuple[int, int] | None:
    """(spatial axis, index) of the slice shown for ``layer``, or None for a 2-D layer.

    The axis is the last non-displayed spatial axis of the layer (axis 0 for the
    usual Z scrolling; another axis when the user rolled the view).  In the 3-D
    view it is axis 0 at the current slider position.
    """
    ndim = int(layer.ndim)
    offset = viewer.dims.ndim - ndim
    spatial_axes = [a for a in range(ndim) if a != channel_axis]
    if len(spatial_axes) < 3:
        return None
    position = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    candidates = [a - offset for a in viewer.dims.not_displayed if (a - offset) in spatial_axes]
    layer_axis = candidates[-1] if candidates else spatial_axes[0]
    spatial_axis = spatial_axes.index(layer_axis)
    size = int(layer.data.shape[layer_axis])
    index = int(np.clip(np.round(position[layer_axis]), 0, size - 1))
    return spatial_axis, index


def visible_box(viewer: napari.Viewer, layer: Any, channel_axis: int | None = None) -> tuple[tuple[int, int], ...] | None:
    """Per spatial axis (start, stop) of the part of ``layer`` on screen, or None when unknown.

    Read from ``layer.corner_pixels`` (napari updates it as the camera moves);
    axes that are not displayed get their full extent.  None in the 3-D view
    and before the first draw.
    """
    if viewer.dims.ndisplay != 2:
        return None
    corners = np.asarray(layer.corner_pixels, dtype=int)
    shape = [int(s) for s in layer.data.shape]
    offset = viewer.dims.ndim - int(layer.ndim)
    displayed = [a - offset for a in viewer.dims.displayed if a - offset >= 0]
    box = []
    for a in range(int(layer.ndim)):
        if a == channel_axis:
            continue
        if a in displayed:
            lo, hi = int(corners[0, a]), int(corners[1, a]) + 1  # corner_pixels are inclusive
            if hi - lo <= 1:
                return None  # not drawn yet
            box.append((max(lo, 0), min(hi, shape[a])))
        else:
            box.append((0, shape[a]))
    return tuple(box)


# ------------------------------------------------------------------- predictions


def find_prediction_layer(viewer: napari.Viewer, image_name: str, shape: tuple[int, ...]) -> Labels | None:
    """The prediction layer made for ``image_name`` with this spatial shape, if any."""
    from napari.layers import Labels

    for layer in viewer.layers:
        if (
            isinstance(layer, Labels)
            and layer.metadata.get(PREDICTION_KEY) == image_name
            and tuple(layer.data.shape) == tuple(shape)
        ):
            return layer
    return None


def _copy_colormap(target: Labels, annotation: Labels | None) -> None:
    if annotation is None:
        return
    try:  # an EventedModel copy, so the two layers do not share one evented object
        target.colormap = annotation.colormap.model_copy(deep=True)
    except Exception:
        target.colormap = annotation.colormap


def show_prediction(
    viewer: napari.Viewer,
    labels: np.ndarray,
    image: ImageSnapshot,
    annotation: Labels | None = None,
    name: str = "prediction",
) -> Labels:
    """Add or update the prediction layer of ``image`` with ``labels`` (*spatial).

    Colours are copied from the annotation layer so a class looks the same in
    both; scale and translate are the image's.
    """
    layer = find_prediction_layer(viewer, image.name, labels.shape)
    if layer is None:
        layer = viewer.add_labels(labels, name=name, scale=image.scale, translate=image.translate, opacity=0.6)
        layer.metadata[PREDICTION_KEY] = image.name
        layer.editable = True
    else:
        layer.data = labels
    _copy_colormap(layer, annotation)
    return layer


def ensure_prediction_layer(
    viewer: napari.Viewer, image: ImageSnapshot, dtype: Any, annotation: Labels | None = None
) -> Labels:
    """The prediction layer of ``image``, created empty (all 0) when missing."""
    layer = find_prediction_layer(viewer, image.name, image.spatial_shape)
    if layer is not None:
        if np.dtype(layer.data.dtype).itemsize < np.dtype(dtype).itemsize:
            layer.data = layer.data.astype(dtype)
        return layer
    return show_prediction(viewer, np.zeros(image.spatial_shape, dtype=dtype), image, annotation)


def write_preview(layer: Labels, region: tuple[slice, ...], labels: np.ndarray) -> None:
    """Write a preview block (the shape of ``region``) into the prediction layer."""
    layer.data[region] = labels
    layer.refresh()


def show_probabilities(
    viewer: napari.Viewer,
    probabilities: np.ndarray,
    image: ImageSnapshot,
    class_values: tuple[int, ...],
    class_names: tuple[str, ...] | None = None,
) -> list[Image]:
    """Add or update one probability image layer per foreground class.

    ``probabilities`` is (K, *spatial) float32; class 0 (background) is not shown.
    """
    from napari.layers import Image

    layers = []
    for k in range(1, probabilities.shape[0]):
        label = class_names[k] if class_names and k < len(class_names) else f"class {class_values[k]}"
        name = f"probability {label}"
        existing = viewer.layers[name] if name in viewer.layers else None
        if isinstance(existing, Image) and existing.data.shape == probabilities[k].shape:
            existing.data = probabilities[k]
            layers.append(existing)
        else:
            layers.append(
                viewer.add_image(
                    probabilities[k], name=name, scale=image.scale, translate=image.translate,
                    colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", visible=False,
                )
            )
    return layers


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
