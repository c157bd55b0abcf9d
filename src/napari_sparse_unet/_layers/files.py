"""npe2 reader and writer: thin wrappers over :mod:`napari_sparse_unet.io`.

``napari scan.nii.gz``, ``napari DICOM_FOLDER/`` and ``napari volume.mat`` come here.
Each volume becomes an Image layer (Z, Y, X) whose ``scale`` is the voxel spacing and
whose ``metadata`` keeps the source geometry (``affine``: the file's RAS affine of its
stored voxel order), so the Labels writer can put a segmentation back on the scan's
voxel grid.  No napari import: the functions return layer-data tuples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..io.formats import Volume

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for a NIfTI file, a folder of DICOM slices or a ``.mat`` file, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    for item in paths:
        try:
            fmt = io.volume_format(item)
        except io.VolumeIOError:
            return None
        if fmt not in io.MEDICAL:  # everything else is left to other readers
            return None
        if fmt == "dicom":
            from ..io.formats.dicom import looks_like_dicom_folder

            if not looks_like_dicom_folder(Path(item)):
                return None  # a folder of TIFFs or anything else is not ours
    return read_layers


def _layer(volume: Volume, source: str) -> LayerData:
    kwargs: dict[str, Any] = {"name": volume.name, "metadata": {**volume.layer_metadata(), "source_path": source}}
    if volume.spacing is not None:
        spatial = len(volume.spacing)
        kwargs["scale"] = (1.0,) * (np.ndim(volume.data) - spatial) + tuple(volume.spacing)
    if volume.metadata.get("unit") == "HU":
        kwargs["contrast_limits"] = (-400.0, 600.0)  # a soft-tissue window; the user can widen it
    return volume.data, kwargs, "image"


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Every volume at ``path`` (each 3-D array of a ``.mat`` file) as an Image layer tuple."""
    paths = [path] if isinstance(path, str) else list(path)
    return [_layer(volume, str(p)) for p in paths for volume in io.read_volumes(p, all_arrays=True)]


def source_geometry(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of an image layer's ``metadata`` that a Labels layer drawn on it should keep
    (the source ``affine``, for the NIfTI writer); empty for images from other readers."""
    return {"affine": metadata["affine"]} if "affine" in metadata else {}


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer to .nii/.nii.gz (on the source scan's voxel grid when the layer's
    ``metadata`` holds its ``affine``) or .tif/.tiff (with the spacing from ``scale``)."""
    spacing = tuple(float(s) for s in meta.get("scale", ())) or None
    affine = (meta.get("metadata") or {}).get("affine")
    array = np.asarray(data)
    if io.volume_format(path) == "nifti" and affine is not None and array.ndim == 3:
        written = io.write_volume(path, array, affine=np.asarray(affine, dtype=float))
    else:
        written = io.write_volume(path, array, spacing=spacing)
    return [str(written)]
