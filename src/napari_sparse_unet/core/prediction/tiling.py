"""Where the tiles go, how they are weighted, and how they are stitched.

Pure numpy.  Shapes are spatial and in array order: (Z, Y, X) for volumes,
(Y, X) for 2-D images; tile outputs are channel-first, (K, *tile).

The stitcher keeps per-class float buffers only for a slab of rows along the
first spatial axis, as deep as one tile: rows are handed back (and dropped) as
soon as no remaining tile covers them, so its memory does not grow with the
depth of the volume.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Shape = tuple[int, ...]

# Lowest value of the 1-D blending profile: the window is never zero, so a
# voxel covered only by tile borders is still defined after normalisation.
WINDOW_FLOOR = 1e-3


def per_axis_values(value: float | Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value),) * ndim
    values = tuple(float(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{name} needs {ndim} values, got {value!r}")
    return values


def overlap_voxels(tile: int, overlap: float) -> int:
    """Smallest number of voxels two neighbouring tiles of size ``tile`` share."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    # The small epsilon keeps e.g. 48 * 0.75 == 36 from becoming 35.
    return tile - max(1, math.floor(tile * (1.0 - overlap) + 1e-9))


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``range(size)``.

    Neighbours share at least ``overlap`` (a fraction of ``tile``, in [0, 1)).
    The first tile starts at 0, the last is flush with the border, and the
    starts in between are spread evenly.  A tile as large as or larger than
    ``size`` gives ``[0]`` (the caller pads the input and crops the output).
    """
    if size < 1 or tile < 1:
        raise ValueError(f"size and tile must be >= 1, got size={size}, tile={tile}")
    if tile >= size:
        return [0]
    max_step = tile - overlap_voxels(tile, overlap)
    span = size - tile
    gaps = math.ceil(span / max_step)
    # Rounded even spread: consecutive steps differ by at most one voxel and
    # never exceed max_step, because span / gaps <= max_step.
    return [(i * span + gaps // 2) // gaps for i in range(gaps + 1)]


def tile_grid(shape: Sequence[int], tile_shape: Sequence[int], overlap: float | Sequence[float]) -> list[Shape]:
    """Start corners of all tiles, ordered by the first axis, then the others.

    Args:
        shape: spatial shape of the volume.
        tile_shape: spatial tile shape (same length); may exceed ``shape``.
        overlap: fraction of the tile shared by neighbours, one for all axes
            or one per axis.
    """
    shape = tuple(int(s) for s in shape)
    tile_shape = tuple(int(t) for t in tile_shape)
    if len(tile_shape) != len(shape):
        raise ValueError(f"tile shape {tile_shape} and volume shape {shape} differ in length")
    overlaps = per_axis_values(overlap, len(shape), "overlap")
    per_axis = [tile_starts(s, t, o) for s, t, o in zip(shape, tile_shape, overlaps)]
    grids = np.meshgrid(*[np.asarray(p) for p in per_axis], indexing="ij")
    # 'ij' meshgrid flattened in C order is already lexicographic (axis 0 major).
    return [tuple(int(v) for v in corner) for corner in zip(*(g.ravel() for g in grids))]


def _profile(length: int, margin: int, floor: float) -> np.ndarray:
    """1-D weights: flat 1 in the middle, half-Hann ramps over ``margin`` voxels at both ends."""
    profile = np.ones(length, dtype=np.float64)
    margin = min(int(margin), length // 2)
    if margin > 0:
        # Voxel centres at distance d + 0.5 from the edge.  Two tiles whose
        # ramps overlap by exactly ``margin`` voxels sum to 1 (sin^2 + cos^2).
        d = np.arange(margin, dtype=np.float64) + 0.5
        ramp = 0.5 - 0.5 * np.cos(np.pi * d / margin)
        profile[:margin] = ramp
        profile[length - margin :] = ramp[::-1]
    return np.maximum(profile, floor)


def blending_window(
    tile_shape: Sequence[int], margin: int | Sequence[int] | None = None, floor: float = WINDOW_FLOOR
) -> np.ndarray:
    """Separable weights (float32, ``tile_shape``) for blending overlapping tiles.

    Each axis has weight 1 in the middle and a half-Hann ramp over ``margin``
    voxels at both ends (default: half the tile, i.e. a full Hann window), so
    neighbours that overlap by ``margin`` cross-fade.  Values are clamped to
    ``floor`` per axis and therefore never zero; the window is symmetric.
    """
    tile_shape = tuple(int(t) for t in tile_shape)
    if margin is None:
        margins = tuple(t // 2 for t in tile_shape)
    elif isinstance(margin, (int, np.integer)):
        margins = (int(margin),) * len(tile_shape)
    else:
        margins = tuple(int(m) for m in margin)
    if len(margins) != len(tile_shape):
        raise ValueError(f"margin {margin!r} does not match tile shape {tile_shape}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    window = np.ones((), dtype=np.float64)
    for length, m in zip(tile_shape, margins):
        window = np.multiply.outer(window, _profile(length, m, floor))
    return window.astype(np.float32)


class SlabStitcher:
    """Blends weighted tile outputs and hands back finished slabs along axis 0.

    Tiles must be added in the order of their first-axis start (the order of
    :func:`tile_grid`).  After each :meth:`add`, call :meth:`pop_finished`
    until it returns ``None``: rows that no remaining tile covers come back
    as ``(row0, weighted_sum, weight)`` and are then dropped.

    Only ``(K, tile_rows, *shape[1:])`` float32 sums plus ``(tile_rows,
    *shape[1:])`` weights are held, never a whole-volume float buffer.
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_channels: int,
        tile_shape: Sequence[int],
        starts: Sequence[Sequence[int]],
        window: np.ndarray | None = None,
    ) -> None:
        self.shape: Shape = tuple(int(s) for s in shape)
        self.tile_shape: Shape = tuple(int(t) for t in tile_shape)
        self.num_channels = int(num_channels)
        if window is not None and tuple(window.shape) != self.tile_shape:
            raise ValueError(f"window shape {window.shape} differs from tile shape {self.tile_shape}")
        self.window = window
        firsts = [int(s[0]) for s in starts]
        if firsts != sorted(firsts):
            raise ValueError("tiles must be ordered by their first-axis start")
        self._firsts = firsts  # first-axis start of every tile, in arrival order
        self._added = 0
        self.buffer_rows = min(self.tile_shape[0], self.shape[0])
        rest = self.shape[1:]
        self._sum = np.zeros((self.num_channels, self.buffer_rows, *rest), dtype=np.float32)
        self._weight = np.zeros((self.buffer_rows, *rest), dtype=np.float32)
        self._row0 = 0  # volume row held in buffer row 0
        self._done = 0  # rows already handed back

    @property
    def tiles_total(self) -> int:
        return len(self._firsts)

    @property
    def buffer_shape(self) -> Shape:
        return tuple(self._sum.shape)

    def add(self, start: Sequence[int], values: np.ndarray) -> None:
        """Add one tile's output.

        Args:
            start: the tile's start corner (from the grid, in order).
            values: (K, *extent) float array, where ``extent`` is the tile
                clipped to the volume (``min(tile, shape - start)`` per axis).
        """
        start = tuple(int(s) for s in start)
        if self._added >= len(self._firsts) or start[0] != self._firsts[self._added]:
            raise ValueError(f"tile at {start} added out of grid order")
        extent = tuple(min(t, s - a) for t, s, a in zip(self.tile_shape, self.shape, start))
        if tuple(values.shape) != (self.num_channels, *extent):
            raise ValueError(f"tile at {start} has shape {values.shape}, expected {(self.num_channels, *extent)}")
        self._recycle()
        lo = start[0] - self._row0
        if lo < 0 or lo + extent[0] > self.buffer_rows:
            raise RuntimeError("finished rows must be popped before adding the next tile")
        region = (slice(lo, lo + extent[0]),) + tuple(slice(a, a + e) for a, e in zip(start[1:], extent[1:]))
        if self.window is None:
            self._sum[(slice(None),) + region] += values
            self._weight[region] += 1.0
        else:
            weight = self.window[tuple(slice(0, e) for e in extent)]
            self._sum[(slice(None),) + region] += values * weight
            self._weight[region] += weight
        self._added += 1

    def _finished_until(self) -> int:
        """Rows below this are covered by no tile still to come."""
        return self.shape[0] if self._added == len(self._firsts) else self._firsts[self._added]

    def pop_finished(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Return ``(row0, weighted_sum (K, n, ...), weight (n, ...))`` for finished rows, or None.

        The returned arrays are views into the buffer, valid until the next
        call of :meth:`add` or :meth:`pop_finished`; dividing the sum by the
        weight gives the blended output.
        """
        self._recycle()
        end = min(self._finished_until(), self._row0 + self.buffer_rows)
        n = end - self._done
        if n <= 0:
            return None
        self._done = end
        # _row0 == previous _done after recycling, so the rows sit at the top.
        return end - n, self._sum[:, :n], self._weight[:n]

    def _recycle(self) -> None:
        """Shift unfinished rows to the buffer's top and zero the freed rows.

        Runs lazily (at the next add/pop) so popped views stay valid until then.
        """
        shift = self._done - self._row0
        if shift <= 0:
            return
        keep = self.buffer_rows - shift
        if keep > 0:
            # Overlapping copy: numpy buffers it, so the result is correct.
            self._sum[:, :keep] = self._sum[:, shift:]
            self._weight[:keep] = self._weight[shift:]
        self._sum[:, max(keep, 0) :] = 0
        self._weight[max(keep, 0) :] = 0
        self._row0 = self._done

    @staticmethod
    def normalized(weighted_sum: np.ndarray, weight: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Blended output ``weighted_sum / weight`` (weights are never zero)."""
        return np.divide(weighted_sum, weight[np.newaxis], out=out)
