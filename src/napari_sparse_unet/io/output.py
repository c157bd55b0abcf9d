"""Outputs written while a prediction runs: an array that becomes a volume file when complete.

zarr and .npy targets (on Windows, zarr only) stream to disk slab by slab; other formats are held in memory and
written at the end.  Arrays are in napari's axis order, (Z, Y, X) or (C, Z, Y, X).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_file
from .volumes import PathLike, _check_writable_target, _resolve_geometry, volume_format, write_volume, zarr_output


@contextlib.contextmanager
def create_output(
    path: PathLike,
    shape: Sequence[int],
    dtype: Any,
    *,
    like: PathLike | None = None,
    spacing: Sequence[float] | None = None,
) -> Iterator[Any]:
    """Yield a writable array of ``shape`` that becomes the file ``path`` when the block ends.

    zarr targets get a zarr array chunked along Z and .npy targets a memory map (except
    on Windows), so a prediction written slab by slab streams to disk; TIFF and NIfTI
    are held in memory and written at the end.  Nothing appears at ``path`` unless the block succeeds.
    """
    path = Path(path)
    fmt = volume_format(path)
    _check_writable_target(path)
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if fmt == "zarr":
        spacing, _ = _resolve_geometry(like, spacing)
        with zarr_output(path, shape, dtype, spacing) as out:
            yield out
    elif fmt == "npy" and sys.platform != "win32":
        # Not on Windows: it cannot move a file that the caller's array still maps into place.
        with atomic_file(path) as temp:
            out = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)
            yield out
            out.flush()
            del out
    else:
        out = np.zeros(shape, dtype)
        yield out
        write_volume(path, out, like=like, spacing=spacing)
