"""Writing results: the prediction layer (made once per image, updated after), previews, probabilities,
instances and uncertainty."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import source_geometry
from .images import ImageSnapshot, is_lazy, spatial_shape_of

if TYPE_CHECKING:  # napari only for type hints: importing this stays cheap
    import napari
    from napari.layers import Image, Labels


PREDICTION_KEY = "sparse_unet_prediction_of"  # layer.metadata key: name of the predicted image
PAINT_OVERLAYS = ("polygon", "brush_stroke")  # napari's names of a Labels layer's painting overlays


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
    labels: Any,
    image: ImageSnapshot,
    annotation: Labels | None = None,
    name: str = "prediction",
    activate: bool = True,
) -> Labels:
    """Add or update the prediction layer of ``image`` with ``labels`` (*spatial).

    A new layer is made by :func:`new_prediction_layer` and becomes the active one
    when ``activate``.  Lazy (dask) labels are shown as they are, computed where
    napari reads them, and cannot be painted.
    """
    layer = find_prediction_layer(viewer, image.name, labels.shape)
    if layer is None:
        return add_prediction_layer(viewer, new_prediction_layer(viewer, labels, image, annotation, name), activate)
    layer.data = labels
    layer.editable = not is_lazy(labels)
    _copy_colormap(layer, annotation)
    return layer


def new_prediction_layer(
    viewer: napari.Viewer, labels: Any, image: ImageSnapshot, annotation: Labels | None = None,
    name: str = "prediction", visible: bool = True,
) -> Labels:
    """The prediction layer of ``image`` showing ``labels`` (*spatial), not yet added to ``viewer``.

    Colours are copied from the annotation layer so a class looks the same in
    both; scale and translate are the image's.  Made apart from adding it, so a
    caller can spread the two over event-loop turns (adding alone takes tens of ms).
    """
    from napari.layers import Labels

    layer = Labels(
        labels, name=name, scale=image.scale, translate=image.translate, opacity=0.6, visible=visible,
        metadata={**_geometry(viewer, image), PREDICTION_KEY: image.name},
    )
    _copy_colormap(layer, annotation)
    return layer


def add_prediction_layer(viewer: napari.Viewer, layer: Labels, activate: bool = True) -> Labels:
    """Add a layer of :func:`new_prediction_layer`; it becomes the active layer when ``activate``."""
    with _activating(viewer, activate):
        viewer.add_layer(layer)
    layer.editable = not is_lazy(layer.data)
    return layer


def hold_paint_overlays(layer: Labels) -> Callable[[], None]:
    """Take a Labels layer's painting overlays (polygon, brush outline) off; the returned function puts them back.

    napari builds their visuals when a layer is added: about half the time of adding
    a Labels layer.  A caller adding a layer while the user works (the Train click)
    adds it without them and puts them back in another event-loop turn, before the
    layer can be painted.  Uses napari's private ``_overlays``; without it nothing is held.
    """
    overlays = getattr(layer, "_overlays", None)
    held = {name: overlays.pop(name) for name in PAINT_OVERLAYS if overlays is not None and name in overlays}

    def put_back() -> None:
        if held:
            overlays.update(held)
            held.clear()

    return put_back


@contextlib.contextmanager
def _activating(viewer: napari.Viewer, activate: bool) -> Iterator[None]:
    """napari makes an added layer the active one; without ``activate`` the active layer stays
    (the annotation being painted while training runs), and napari does not rebuild its layer controls."""
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)  # a private switch: absent in another napari, no harm
    if before is not None:
        layers._activate_on_insert = activate
    try:
        yield
    finally:
        if before is not None:
            layers._activate_on_insert = before


def _geometry(viewer: napari.Viewer, image: ImageSnapshot) -> dict[str, Any]:
    """Metadata that a result layer of ``image`` keeps from its source layer: the scan's
    ``affine``, so the layer saved as NIfTI lands on the scan's voxel grid."""
    source = viewer.layers[image.name] if image.name in viewer.layers else None
    return source_geometry(source.metadata) if source is not None else {}


def prediction_of(viewer: napari.Viewer, image: Image, first_axis_is_channel: bool = False) -> tuple[str, Labels | None]:
    """(name of ``image``, the prediction layer made for it or None)."""
    return image.name, find_prediction_layer(viewer, image.name, spatial_shape_of(image, first_axis_is_channel))


def ensure_prediction_layer(
    viewer: napari.Viewer, image: ImageSnapshot, dtype: Any, annotation: Labels | None = None, visible: bool = True
) -> Labels:
    """The prediction layer of ``image``, created empty (all 0) when missing (shown or not: ``visible``)."""
    layer = find_prediction_layer(viewer, image.name, image.spatial_shape)
    if layer is not None:
        if np.dtype(layer.data.dtype).itemsize < np.dtype(dtype).itemsize:
            layer.data = layer.data.astype(dtype)
        return layer
    layer = new_prediction_layer(viewer, np.zeros(image.spatial_shape, dtype=dtype), image, annotation, visible=visible)
    return add_prediction_layer(viewer, layer, activate=False)


def show_prediction_layer(viewer: napari.Viewer, image: ImageSnapshot) -> None:
    """Make the prediction layer of ``image`` visible (when there is one)."""
    layer = find_prediction_layer(viewer, image.name, image.spatial_shape)
    if layer is not None:
        layer.visible = True


def write_preview(layer: Labels, region: tuple[slice, ...], labels: np.ndarray) -> None:
    """Write a preview block (the shape of ``region``) into the prediction layer."""
    layer.data[region] = labels
    layer.refresh(extent=False, highlight=False)  # the extent is unchanged: only the shown slice is redone


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
    layers = []
    for k in range(1, probabilities.shape[0]):
        label = class_names[k] if class_names and k < len(class_names) else f"class {class_values[k]}"
        layers.append(_add_or_update(
            viewer, "image", f"probability {label}", probabilities[k], image,
            colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", visible=False,
        ))
    return layers


def _add_or_update(viewer: napari.Viewer, kind: str, name: str, data: np.ndarray, image: ImageSnapshot, **kwargs: Any) -> Any:
    """The layer of ``kind`` ("labels"/"image") called ``name``, updated in place when its shape fits, else
    added with the image's scale, translate and source geometry."""
    from napari.layers import Image, Labels

    existing = viewer.layers[name] if name in viewer.layers else None
    if isinstance(existing, Labels if kind == "labels" else Image) and existing.data.shape == data.shape:
        existing.data = data
        return existing
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, name=name, scale=image.scale, translate=image.translate, metadata=_geometry(viewer, image), **kwargs)


def show_instances(viewer: napari.Viewer, instances: np.ndarray, image: ImageSnapshot) -> Labels:
    """Add or update the 'instances' Labels layer (*spatial int32, 0 = none) beside the prediction."""
    return _add_or_update(viewer, "labels", f"instances {image.name}", instances, image, opacity=0.6)


def show_uncertainty(viewer: napari.Viewer, uncertainty: np.ndarray, image: ImageSnapshot) -> Image:
    """Add or update the 'uncertainty' image layer (*spatial uint8, 0 = sure .. 255 = unsure)."""
    return _add_or_update(
        viewer, "image", f"uncertainty {image.name}", uncertainty, image,
        colormap="inferno", contrast_limits=(0, 255), blending="additive", opacity=0.7,
    )


def annotation_if_fits(annotation: Labels | None, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
    """The annotation layer's data (no copy) when it has ``spatial_shape``, else None (to skip painted slices)."""
    if annotation is None or tuple(annotation.data.shape) != tuple(spatial_shape):
        return None
    return annotation.data
