"""Which layers the widget offers: image and annotation layers, sensible pre-selections, following the layer list."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .images import spatial_shape_of
from .predictions import PREDICTION_KEY

if TYPE_CHECKING:  # napari only for type hints: importing this stays cheap
    import napari
    from napari.layers import Image, Labels


def image_layers(viewer: napari.Viewer) -> list[Image]:
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def annotation_layers(viewer: napari.Viewer) -> list[Labels]:
    """Labels layers that can hold annotations: all but our predictions."""
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels) and PREDICTION_KEY not in layer.metadata]


def named_choices(layers: Iterable[Any]) -> list[tuple[str, Any]]:
    """(name, layer) pairs, the choices of a magicgui combo box."""
    return [(layer.name, layer) for layer in layers]


def preferred_image(viewer: napari.Viewer) -> Image | None:
    """The selected image layer, else the topmost one."""
    images = image_layers(viewer)
    active = viewer.layers.selection.active
    return active if active in images else (images[-1] if images else None)


def guess_annotation(viewer: napari.Viewer, image: Image | None, first_axis_is_channel: bool = False) -> Labels | None:
    """The labels layer that most likely annotates ``image``: its shape, and "annot" in the name if several."""
    shape = spatial_shape_of(image, first_axis_is_channel) if image is not None else None
    fitting = [layer for layer in annotation_layers(viewer) if shape is None or tuple(layer.data.shape) == shape]
    named = [layer for layer in fitting if "annot" in layer.name.lower()]
    return (named or fitting or [None])[-1]


def fits_image(annotation: Labels | None, image: Image, first_axis_is_channel: bool = False) -> bool:
    return annotation is not None and tuple(annotation.data.shape) == spatial_shape_of(image, first_axis_is_channel)


def in_viewer(viewer: napari.Viewer, layer: Any) -> bool:
    """Whether ``layer`` is (still) one of the viewer's layers."""
    return layer is not None and layer in viewer.layers


def image_layer_named(viewer: napari.Viewer, name: str) -> Image | None:
    return next((layer for layer in image_layers(viewer) if layer.name == name), None)


def follow_layer_list(viewer: napari.Viewer, callback: Callable[..., None]) -> Callable[[], None]:
    """Call ``callback`` when layers are added, removed, moved or renamed; returns a function that stops it."""
    events = viewer.layers.events
    renamed: list[Any] = []

    def follow(layer: Any) -> None:
        layer.events.name.connect(callback)
        renamed.append(layer)

    def inserted(event: Any) -> None:
        follow(event.value)
        callback()

    for layer in viewer.layers:
        follow(layer)
    connections = [(events.inserted, inserted), (events.removed, callback), (events.moved, callback)]
    for event, slot in connections:
        event.connect(slot)

    def stop() -> None:
        for event, slot in connections:
            event.disconnect(slot)
        for layer in renamed:
            layer.events.name.disconnect(callback)

    return stop
