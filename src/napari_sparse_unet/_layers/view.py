"""Where the user looks: the viewed slice and the visible part of a layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # napari only for type hints: importing this stays cheap
    import napari


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


def go_to_slice(viewer: napari.Viewer, layer: Any, axis: int, index: int) -> None:
    """Move the viewer to slice ``index`` of ``layer``'s spatial ``axis`` (a layer with spatial axes only).

    The layer's scale and translate give the world position; the other sliders stay.
    """
    layer_axis = int(axis)
    dims_axis = viewer.dims.ndim - int(layer.ndim) + layer_axis
    world = float(layer.translate[layer_axis]) + int(index) * float(layer.scale[layer_axis])
    viewer.dims.set_point(dims_axis, world)
