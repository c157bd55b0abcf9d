"""Reading image layers: channel axis, spatial shape, scale and translate, a channel-first view."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import UserInputError
from ..core.rules import channels_problem

if TYPE_CHECKING:  # napari only for type hints: importing this stays cheap
    from napari.layers import Image


class LayerError(UserInputError):
    """A layer cannot be used as asked; the message names the layer and the reason."""


@dataclass(frozen=True)
class ImageSnapshot:
    """What the core needs from an image layer, read on the main thread.

    ``data`` is (C, *spatial), a view of the layer data (no copy: napari's tools
    never edit image data in place, and copying a large volume would double its
    memory).  ``scale`` and ``translate`` are for the spatial axes only.
    ``channel_names`` names each channel (the layers stacked as channels, or
    the one single-channel layer); empty when the channels are axes of one layer.
    """

    data: Any
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    channel_axis: int | None  # axis of the layer data holding channels, None if single channel
    channel_names: tuple[str, ...] = ()

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return len(self.data.shape) - 1

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])


def is_lazy(data: Any) -> bool:
    """Whether layer data is a dask array (read chunk by chunk, e.g. a zarr opened lazily)."""
    dask_array = sys.modules.get("dask.array")  # never imported here: lazy data means dask is loaded
    return dask_array is not None and isinstance(data, dask_array.Array)


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
    scale, translate = spatial_transform(layer, axis)
    names = (str(layer.name),) if axis is None else ()
    return ImageSnapshot(data=data_cf, name=str(layer.name), scale=scale, translate=translate, channel_axis=axis,
                         channel_names=names)


def channels_snapshot(layers: Sequence[Image], first_axis_is_channel: bool = False) -> ImageSnapshot:
    """Several single-channel image layers as the channels of one image, in the given order.

    One layer is read as :func:`image_snapshot` reads it.  Several are stacked
    (a copy) into (C, *spatial); they must have the same shape
    (:func:`~..core.rules.channels_problem`); name, scale and translate are
    the first layer's.

    Raises:
        LayerError: a multiscale layer, or layers that cannot be channels of one image.
    """
    if len(layers) == 1:
        return image_snapshot(layers[0], first_axis_is_channel)
    for layer in layers:
        if getattr(layer, "multiscale", False) or getattr(layer, "rgb", False):
            kind = "multiscale" if getattr(layer, "multiscale", False) else "RGB"
            raise LayerError(f"image layer '{layer.name}' is {kind}; channels must be single-channel volumes")
    names = [str(layer.name) for layer in layers]
    problem = channels_problem(names, [layer.data.shape for layer in layers])
    if problem:
        raise LayerError(problem)
    data = np.stack([np.asarray(layer.data) for layer in layers])
    scale, translate = spatial_transform(layers[0], None)
    return ImageSnapshot(data=data, name=names[0], scale=scale, translate=translate, channel_axis=None,
                         channel_names=tuple(names))


def spatial_transform(layer: Any, channel_axis: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # napari keeps no scale for the RGB axis, but does for a leading channel axis.
    scale = [float(s) for s in layer.scale]
    translate = [float(t) for t in layer.translate]
    if channel_axis == 0 and not getattr(layer, "rgb", False):
        scale, translate = scale[1:], translate[1:]
    return tuple(scale), tuple(translate)
