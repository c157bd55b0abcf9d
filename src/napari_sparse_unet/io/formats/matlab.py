"""MATLAB ``.mat`` files: v4/v5/v7 with scipy.io.loadmat, v7.3 (HDF5) with h5py.

Every real numeric (or logical) 3-D variable is a volume.  MATLAB indexes a volume
``V(row, column, slice)``; the layer is (Z, Y, X) = (slice, row, column), so slice k
of the layer looks like MATLAB's ``imshow(V(:,:,k))``.  v7.3 files are HDF5, which
stores MATLAB's column-major arrays with their dimensions reversed; they are
transposed back first.  A ``.mat`` has no standard voxel size: a 3-element variable
named ``spacing``, ``voxel_size`` or ``pixdim``, given in MATLAB's (row, column, slice)
order as MATLAB code would write it, is used when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import VolumeIOError
from . import Volume

SPACING_NAMES = ("spacing", "voxel_size", "pixdim")

#: MATLAB classes that hold numbers (v7.3 stores the class in an HDF5 attribute).
_NUMERIC_CLASSES = {
    "double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
}


def _is_volume(array: Any) -> bool:
    return isinstance(array, np.ndarray) and array.ndim == 3 and array.dtype.kind in "biuf"


def _describe(array: Any) -> str:
    if isinstance(array, np.ndarray) and array.dtype.names is None:
        return f"{'×'.join(map(str, array.shape))} {array.dtype}"
    return "not a numeric array"


def _variables_v5(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    return {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}


def _variables_v73(path: Path) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for name, node in f.items():
            if name.startswith("#") or not isinstance(node, h5py.Dataset):
                out[name] = None  # structs, cells, references: listed, never volumes
                continue
            matlab_class = node.attrs.get("MATLAB_class", b"")
            matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
            if (matlab_class and matlab_class not in _NUMERIC_CLASSES) or node.dtype.names is not None:
                out[name] = None  # char, complex (compound), cell references
                continue
            # HDF5 holds MATLAB's dimensions reversed: transpose back to (row, column, slice).
            out[name] = np.asarray(node[()]).T
            if matlab_class == "logical":
                out[name] = out[name].astype(bool)
    return out


def mat_variables(path: Path) -> dict[str, Any]:
    """Every top-level variable of ``path`` in MATLAB's axis order (non-arrays as None)."""
    import h5py

    try:
        return _variables_v73(path) if h5py.is_hdf5(str(path)) else _variables_v5(path)
    except VolumeIOError:
        raise
    except Exception as exc:  # scipy and h5py raise many types for damaged files
        raise VolumeIOError(f"cannot read '{path}' as a MATLAB .mat file: {exc}") from exc


def _spacing(variables: dict[str, Any]) -> tuple[float, float, float] | None:
    for name in SPACING_NAMES:
        value = variables.get(name)
        if isinstance(value, np.ndarray) and value.size == 3 and value.dtype.kind in "iuf":
            row, column, slice_ = (float(v) for v in value.ravel())
            if all(np.isfinite(v) and v > 0 for v in (row, column, slice_)):
                return (slice_, row, column)
    return None


def read_mat_volumes(path: Path) -> list[Volume]:
    """Every 3-D numeric variable of ``path`` as a (Z, Y, X) volume, in the file's order.

    Raises:
        VolumeIOError: when the file holds no 3-D numeric array (the message lists what it holds).
    """
    variables = mat_variables(path)
    spacing = _spacing(variables)
    volumes = [
        Volume(np.ascontiguousarray(np.transpose(value, (2, 0, 1))), spacing, name, metadata={"mat_key": name})
        for name, value in variables.items()
        if _is_volume(value)
    ]
    if not volumes:
        held = ", ".join(f"{k} ({_describe(v)})" for k, v in variables.items()) or "no variables"
        raise VolumeIOError(f"'{path}' holds no 3-D numeric array (it holds {held})")
    return volumes


def read_mat(path: Path, key: str | None = None) -> Volume:
    """The 3-D variable ``key`` of ``path``, or its only one when ``key`` is None.

    Raises:
        VolumeIOError: no 3-D array, ``key`` is not one of them, or several and no ``key``.
    """
    volumes = read_mat_volumes(path)
    names = ", ".join(v.name for v in volumes)
    if key is None:
        if len(volumes) > 1:
            raise VolumeIOError(f"'{path}' holds {len(volumes)} 3-D arrays ({names}): choose one with --key NAME")
        return volumes[0]
    for volume in volumes:
        if volume.name == key:
            return volume
    raise VolumeIOError(f"'{path}' has no 3-D array named {key!r}; its 3-D arrays are: {names}")
