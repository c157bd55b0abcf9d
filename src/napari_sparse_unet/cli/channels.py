"""``--image`` values that name one file, or several files stacked as channels.

``--image flair.tif,t1c.tif`` reads both co-registered volumes and stacks them,
in that order, as the channels of one (C, Z, Y, X) image, named after the
files (``flair``, ``t1c``), as the widget names channels after their layers.
A path that exists as written is one file, even if it holds a comma.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.rules import stack_channels
from ..io import read_volume_with_spacing

SEPARATOR = ","


def channel_files(spec: str) -> list[str]:
    """The file(s) an ``--image`` value names, in channel order."""
    if SEPARATOR not in spec or Path(spec).exists():
        return [spec]
    return [part.strip() for part in spec.split(SEPARATOR) if part.strip()]


def channel_name(path: str) -> str:
    """A channel's name from its file: the name without its volume suffix (``t1c.nii.gz`` -> ``t1c``)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_image(
    spec: str, lazy: bool = False, key: str | None = None
) -> tuple[Any, tuple[float, ...] | None, tuple[str, ...] | None]:
    """(image, spacing, channel names) for an ``--image`` value.

    One file is read as it is (lazily if asked), with no channel names; several
    are read whole and stacked as (C, *spatial), named after the files. ``key``
    names the array to read from each ``.mat`` file holding several.
    """
    files = channel_files(spec)
    if len(files) == 1:
        image, spacing = read_volume_with_spacing(files[0], lazy=lazy, key=key)
        return image, spacing, None
    arrays, spacing = [], None
    for path in files:
        array, file_spacing = read_volume_with_spacing(path, key=key)
        arrays.append(array)
        spacing = spacing or file_spacing
    names = tuple(channel_name(p) for p in files)
    return stack_channels(arrays, names), spacing, names

