"""NIfTI (.nii, .nii.gz) with nibabel, in the layer's radiological axes.

Reading gives (Z, Y, X) (or (C, Z, Y, X) for a 4-D file) with X to the patient's left,
Y posterior, Z superior (see :mod:`.orientation`), the spacing from the affine and the
file's affine in :attr:`Volume.affine`.  Writing with that affine puts the array back
on the source file's voxel grid, so a label file matches its scan voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import Volume
from .orientation import file_to_layer, layer_affine, layer_to_file


def _nibabel() -> Any:
    from ..._optional import import_optional

    return import_optional("nibabel", "NIfTI")


def read_nifti(path: Path) -> Volume:
    """The volume in ``path`` as (Z, Y, X) / (C, Z, Y, X) display axes, spacing in mm."""
    nib = _nibabel()
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    affine = np.asarray(image.affine, dtype=float)
    if data.ndim >= 3:
        array, spacing = file_to_layer(data, affine)
        spacing = tuple(float(s) for s in spacing)
    else:  # a 2-D image: axes reversed only, (Y, X)
        array = np.ascontiguousarray(data.T)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:2])[::-1]
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    valid = all(np.isfinite(s) and s > 0 for s in spacing)
    return Volume(array, spacing if valid else None, name, affine if data.ndim >= 3 else None)


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None, affine: Any = None) -> None:
    """Write a layer array (Z, Y, X), (C, Z, Y, X) or (Y, X) to ``path`` (not atomic: the caller's job).

    Args:
        affine: the source file's RAS affine (:attr:`Volume.affine`): the array is put
            back in that file's voxel order.  Without it the file gets the layer's own
            axes (X left, Y posterior, Z superior) and ``spacing`` (Z, Y, X).
    """
    nib = _nibabel()
    if array.dtype in (np.int64, np.uint64):
        # NIfTI readers widely reject 64-bit integers; labels and images fit in 32 bits.
        array = array.astype(np.int32 if array.dtype == np.int64 else np.uint32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim < 3:
        affine = np.eye(4)
        if spacing is not None:
            affine[0, 0], affine[1, 1] = spacing[-1], spacing[-2]
        nib.save(nib.Nifti1Image(np.asarray(array).T, affine), str(path))
        return
    affine = layer_affine(spacing) if affine is None else np.asarray(affine, dtype=float)
    nib.save(nib.Nifti1Image(layer_to_file(array, affine), affine), str(path))
