"""Between a file's voxel order and the layer's radiological display axes.

A file's array is indexed (x, y, z[, c]) with a NIfTI-style RAS affine.  The layer's
array is (Z, Y, X[, ...reversed extra axes]) whose X, Y, Z run to the patient's Left,
Posterior and Superior (``LPS`` axis codes), the closest permutation and flips of the
file's axes.  Only axes are permuted and flipped, never resampled, so the round trip
is exact.  Uses nibabel's orientation tools.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Axis codes of the layer's X, Y, Z.
LAYER_AXCODES = ("L", "P", "S")


def _orientations() -> Any:
    from nibabel import orientations

    return orientations


def _to_layer_ornt(affine: np.ndarray) -> np.ndarray:
    ornt = _orientations()
    return ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(LAYER_AXCODES))


def layer_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """The layer's voxel size (Z, Y, X): the lengths of the affine's columns, permuted like the axes."""
    affine = np.asarray(affine, dtype=float)
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # file axes x, y, z
    xyz = [0.0, 0.0, 0.0]
    for file_axis, (layer_axis, _flip) in enumerate(_to_layer_ornt(affine)):
        xyz[int(layer_axis)] = float(sizes[file_axis])
    return (xyz[2], xyz[1], xyz[0])


def file_to_layer(xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The layer array (Z, Y, X[, ...]) of a file array (x, y, z[, c]) and its spacing (Z, Y, X)."""
    oriented = _orientations().apply_orientation(xyz, _to_layer_ornt(np.asarray(affine, dtype=float)))
    return np.ascontiguousarray(oriented.T), layer_spacing(affine)


def layer_to_file(zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of :func:`file_to_layer`: a layer array (Z, Y, X) back in the file's (x, y, z) order."""
    ornt = _orientations()
    inverse = ornt.ornt_transform(ornt.axcodes2ornt(LAYER_AXCODES), ornt.io_orientation(np.asarray(affine, dtype=float)))
    return ornt.apply_orientation(np.asarray(zyx).T, inverse)


def layer_affine(spacing: tuple[float, ...] | None) -> np.ndarray:
    """The RAS affine of a layer written without a source file: X to the left, Y posterior, Z superior."""
    zyx = tuple(spacing[-3:]) if spacing is not None and len(spacing) >= 3 else (1.0, 1.0, 1.0)
    return np.diag([-zyx[2], -zyx[1], zyx[0], 1.0])
