"""Where the model is unsure: per-voxel uncertainty and a ranking of slices to paint next.

Uncertainty is computed from the class probabilities of each finished slab of
the prediction (see :func:`~.sliding_window.sliding_window_predict`'s ``slab_hooks``),
so no full-volume float buffer per class is ever held; it is stored as uint8
(1 byte/voxel, 0 = sure, 255 = as unsure as it gets).

Measures, both in [0, 1]:

* ``entropy``: Shannon entropy of the K class probabilities divided by log K;
* ``margin``: 1 - (p_best - p_second), high where the two best classes tie.

Axis order: probabilities (K, *spatial); uncertainty (*spatial), (Z, Y, X) or (Y, X).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rules import check_uncertainty_measure

UNCERTAINTY_MEASURES: tuple[str, ...] = ("entropy", "margin")
# Rows of axis 0 read at once while ranking (bounds memory on file-backed arrays).
_RANK_VOXELS = 1 << 22


def uncertainty(probabilities: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """float32 (*spatial) uncertainty in [0, 1] of (K, *spatial) probabilities that sum to 1."""
    check_uncertainty_measure(measure, UNCERTAINTY_MEASURES)
    p = np.asarray(probabilities, dtype=np.float32)
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], np.float32)
    if measure == "margin":
        top = np.partition(p, k - 2, axis=0)[k - 2 :]
        return (1.0 - (top[1] - top[0])).astype(np.float32)
    logs = np.log(np.clip(p, 1e-12, 1.0))
    h = -np.einsum("k...,k...->...", p, logs) / np.float32(np.log(k))
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats as uint8 0..255 (rounded)."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


class UncertaintyWriter:
    """Slab hook writing the uncertainty of each finished slab into ``out`` as uint8.

    ``out`` is an array-like of the spatial shape (numpy, zarr, a memory map);
    allocated when None.  Called with ``(rows, probabilities)``: ``rows`` a
    slice of axis 0, ``probabilities`` (K, n, ...) float32.
    """

    def __init__(self, spatial_shape: Sequence[int], measure: str = "entropy", out: Any = None) -> None:
        self.measure = check_uncertainty_measure(measure, UNCERTAINTY_MEASURES)
        shape = tuple(int(s) for s in spatial_shape)
        self.out = np.zeros(shape, np.uint8) if out is None else out
        if tuple(self.out.shape) != shape:
            raise ValueError(f"uncertainty output has shape {tuple(self.out.shape)}, expected {shape}")

    def __call__(self, rows: slice, probabilities: np.ndarray) -> None:
        self.out[rows] = to_uint8(uncertainty(probabilities, self.measure))


@dataclass(frozen=True)
class SliceScore:
    """A slice along ``axis`` (0 = Z) with its mean uncertainty in [0, 1]."""

    axis: int
    index: int
    score: float


def painted_slices(annotation: Any, axis: int) -> set[int]:
    """Indices along ``axis`` of the slices of ``annotation`` (*spatial) holding any painted voxel (> 0)."""
    painted = np.asarray(annotation) > 0
    others = tuple(a for a in range(painted.ndim) if a != axis)
    return set(np.flatnonzero(painted.any(axis=others)).tolist())


def slice_means(values: Any, axis: int = 0) -> np.ndarray:
    """float64 mean of ``values`` (*spatial, uint8 0..255 or float) per slice along ``axis``.

    Reads ``values`` in runs of rows of axis 0, so a file-backed array is never
    loaded whole.  uint8 values are scaled back to [0, 1].
    """
    shape = tuple(int(s) for s in values.shape)
    if not 0 <= axis < len(shape):
        raise ValueError(f"axis {axis} is outside an array of {len(shape)} dimensions")
    sums = np.zeros(shape[axis], np.float64)
    step = max(1, _RANK_VOXELS // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0], step):
        block = np.asarray(values[start : start + step], dtype=np.float64)
        if axis == 0:
            sums[start : start + block.shape[0]] += block.reshape(block.shape[0], -1).sum(axis=1)
        else:
            sums += block.sum(axis=tuple(a for a in range(block.ndim) if a != axis))
    means = sums / (int(np.prod(shape)) // shape[axis])
    scale = 255.0 if np.dtype(values.dtype) == np.uint8 else 1.0
    return means / scale


def rank_slices(values: Any, axis: int = 0, painted: Any = None, top: int | None = None) -> list[SliceScore]:
    """Slices along ``axis`` from the least sure to the surest, painted ones left out.

    Args:
        values: uncertainty (*spatial), uint8 (0..255) or float in [0, 1].
        axis: the painting axis (0 = Z).
        painted: indices to skip, or an annotation (*spatial) whose painted slices are skipped.
        top: keep only the first ``top`` slices (None: all).
    """
    means = slice_means(values, axis)
    if painted is None:
        skip: set[int] = set()
    elif hasattr(painted, "shape") and len(painted.shape) == len(values.shape):
        skip = painted_slices(painted, axis)
    else:
        skip = {int(i) for i in painted}
    # Stable sort on the negated score: ties keep slice order.
    order = [int(i) for i in np.argsort(-means, kind="stable") if int(i) not in skip]
    if top is not None:
        order = order[: max(0, int(top))]
    return [SliceScore(axis, i, float(means[i])) for i in order]


def ranking_csv(ranking: Sequence[SliceScore], spatial_dims: int = 3) -> str:
    """The ranking as CSV text: rank, axis (z/y/x), index, mean uncertainty."""
    names = "zyx"[3 - spatial_dims :]
    lines = ["rank,axis,index,mean_uncertainty"]
    for rank, s in enumerate(ranking, start=1):
        axis = names[s.axis] if 0 <= s.axis < len(names) else str(s.axis)
        lines.append(f"{rank},{axis},{s.index},{s.score:.6f}")
    return "\n".join(lines) + "\n"
