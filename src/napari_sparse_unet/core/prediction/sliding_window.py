"""The sliding window: tiles predicted in order, blended, and written out slab by slab.

Axis order: images are channel-first, (C, Z, Y, X) or (C, Y, X); tensors are
(N, C, *tile); labels have the spatial shape only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from .predictor import Featurizer, Predictor
from .row_features import RowFeatures, read_tile
from .tiling import SlabStitcher, blending_window, overlap_voxels, per_axis_values, tile_grid

# Rows of a finished slab turned into labels at once (bounds the argmax temporaries).
_ARGMAX_VOXELS = 1 << 20

SlabHook = Callable[[slice, np.ndarray], None]
"""Called per finished slab with (rows of axis 0, (K, n, ...) float32 blended probabilities).

The array is the stitcher's buffer, valid only during the call: hooks keep
what they need (an uncertainty, one class's probability), not the array.
"""


@dataclass(frozen=True)
class PredictEvent:
    """Progress of a prediction: tiles finished so far and seconds elapsed."""

    tiles_done: int
    tiles_total: int
    elapsed: float


def sliding_window_predict(
    predictor: Predictor,
    image_cf: Any,
    *,
    num_classes: int,
    tile_size: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    labels_out: Any = None,
    lut: np.ndarray | None = None,
    probabilities_out: Any = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    halo: Sequence[int] | None = None,
    slab_hooks: Sequence[SlabHook] = (),
    tiles: Sequence[Sequence[int]] | None = None,
    featurize: Featurizer | None = None,
    feature_bytes: float | None = None,
) -> Generator[PredictEvent, None, None]:
    """Predict ``image_cf`` tile by tile and write the blended result slab by slab.

    Tiles are visited in order of their first-axis start; rows no remaining tile
    covers are finished: ``lut[argmax]`` goes to ``labels_out``, the probabilities
    to ``probabilities_out``.  Yields one event per batch.

    Args:
        predictor: (N, C, *tile) float32 tensor -> (N, K, *tile) probabilities.
        image_cf: (C, *spatial) numpy or array-like (zarr, dask...), any dtype.
        num_classes: K, the predictor's output channels.
        tile_size: spatial tile shape; may exceed the volume (input padded, output cropped).
        overlap: fraction of the tile that neighbours share, per axis or one for all.
        labels_out: array-like of the spatial shape receiving ``lut[argmax]``, or None.
        lut: class index -> output value; default: the index itself (uint8).
        probabilities_out: optional (K, *spatial) array-like, float32.
        normalize: applied to each raw (C, *extent) tile before padding.
        batch_size: tiles per predictor call.
        device: where the batch tensor is sent before calling the predictor.
        halo: input voxels read beyond each tile side, per axis (the network's ``input_halo``);
            the predictor maps (N, C, *(tile + 2·halo)) to (N, K, *tile).
        slab_hooks: :data:`SlabHook` callables given each finished slab's probabilities.
        tiles: start corners of the tiles to predict in :func:`.tiling.tile_grid` order (a block's
            share of a volume's tiles; the outputs cover their bounding box).  Default: the whole grid.
        featurize: the network's per-voxel part (:func:`.predictor.make_featurizer`), computed once
            per row of tiles (:class:`.row_features.RowFeatures`, within ``feature_bytes`` when given);
            the predictor then takes features.
    """
    spatial = tuple(int(s) for s in image_cf.shape[1:])
    tile = tuple(int(t) for t in tile_size)
    if len(tile) != len(spatial):
        raise ValueError(f"tile size {tile} does not match the image's spatial shape {spatial}")
    lut = _checked_lut(lut, num_classes)
    overlaps = per_axis_values(overlap, len(spatial), "overlap")
    grid = tile_grid(spatial, tile, overlaps) if tiles is None else [tuple(int(a) for a in start) for start in tiles]
    stitcher = _stitcher(grid, spatial, tile, overlaps, num_classes)
    _check_outputs(labels_out, probabilities_out, (num_classes, *stitcher.shape))
    device = torch.device(device)
    started, done = time.perf_counter(), 0
    rows = _row_features(image_cf, featurize, normalize, halo, tile, grid, feature_bytes) if featurize else None

    def event() -> PredictEvent:
        return PredictEvent(tiles_done=done, tiles_total=len(grid), elapsed=time.perf_counter() - started)

    for first in range(0, len(grid), max(1, int(batch_size))):
        starts = grid[first : first + max(1, int(batch_size))]
        if rows is not None:
            batch = yield from _feature_batch(rows, starts, event)
        else:
            batch = torch.from_numpy(np.stack([read_tile(image_cf, s, tile, normalize, halo) for s in starts]))
        output = predictor(batch.to(device)).detach().to("cpu", torch.float32).numpy()
        _check_shape(output, batch, (len(starts), num_classes, *tile))
        del batch
        for start, values in zip(starts, output):
            extent = tuple(min(t, s - a) for t, s, a in zip(tile, spatial, start))
            stitcher.add([a - o for a, o in zip(start, grid[0])], values[(slice(None),) + tuple(slice(0, e) for e in extent)])
            while (finished := stitcher.pop_finished()) is not None:
                _write_slab(*finished, lut=lut, labels_out=labels_out, probabilities_out=probabilities_out, hooks=slab_hooks)
        del output
        done += len(starts)
        yield event()


def _checked_lut(lut: np.ndarray | None, num_classes: int) -> np.ndarray:
    """``lut``, or the class index itself (uint8 or uint16) when None."""
    lut = np.arange(num_classes, dtype=np.uint8 if num_classes <= 256 else np.uint16) if lut is None else lut
    if len(lut) != num_classes:
        raise ValueError(f"lut has {len(lut)} entries but the predictor has {num_classes} classes")
    return lut


def _row_features(
    image_cf: Any, featurize: Featurizer, normalize: Any, halo: Any, tile: tuple[int, ...],
    grid: Sequence[tuple[int, ...]], feature_bytes: float | None,
) -> RowFeatures:
    """The features of ``grid``'s rows of tiles (they reach past the image where the tiles do)."""
    reach = [max(int(start[axis]) + t for start in grid) for axis, t in enumerate(tile)][1:]
    return RowFeatures(image_cf, featurize, normalize, halo, tile, reach, feature_bytes, {start[1] for start in grid})


def _check_shape(output: np.ndarray, batch: torch.Tensor, expected: tuple[int, ...]) -> None:
    if output.shape != expected:
        raise ValueError(f"predictor returned shape {output.shape} for input {batch.shape}; expected {expected}")


def _stitcher(
    grid: Sequence[tuple[int, ...]], spatial: tuple[int, ...], tile: tuple[int, ...], overlaps: Sequence[float], num_classes: int
) -> SlabStitcher:
    """A stitcher over the bounding box of the tiles at ``grid`` (its first corner is the lowest on every axis)."""
    origin = grid[0]
    shape = tuple(max(min(s[i] + t, n) for s in grid) - o for i, (t, n, o) in enumerate(zip(tile, spatial, origin)))
    # Ramps as long as the guaranteed overlap: neighbours cross-fade over it.
    margins = [overlap_voxels(t, o) for t, o in zip(tile, overlaps)]
    local = [tuple(a - o for a, o in zip(start, origin)) for start in grid]
    return SlabStitcher(shape, num_classes, tile, local, blending_window(tile, margins))


def _check_outputs(labels_out: Any, probabilities_out: Any, shape: tuple[int, ...]) -> None:
    """Check the outputs' shapes against ``shape``, (K, *spatial) of what the tiles cover."""
    if labels_out is not None and tuple(labels_out.shape) != shape[1:]:
        raise ValueError(f"labels_out has shape {tuple(labels_out.shape)}, expected {shape[1:]}")
    if probabilities_out is not None and tuple(probabilities_out.shape) != shape:
        raise ValueError(f"probabilities_out has shape {tuple(probabilities_out.shape)}, expected {shape}")


def _feature_batch(
    rows: RowFeatures, starts: Sequence[Sequence[int]], event: Callable[[], PredictEvent]
) -> Generator[PredictEvent, None, torch.Tensor]:
    """(N, C·F, *tile) features of the tiles at ``starts``; yields ``event()`` while a row is being filtered."""
    cut = []
    for s in starts:
        for _ in rows.prepare(s):  # a chance to stop while a row of big planes is filtered
            yield event()
        # A view of the row's buffer, which the next row overwrites: copied if the batch goes on.
        cut.append(rows.tile(s) if len(starts) == 1 else rows.tile(s).clone())
    return cut[0][None] if len(cut) == 1 else torch.stack(cut)


def _write_slab(
    row0: int,
    weighted_sum: np.ndarray,
    weight: np.ndarray,
    *,
    lut: np.ndarray,
    labels_out: Any,
    probabilities_out: Any,
    hooks: Sequence[SlabHook] = (),
) -> None:
    """Finish rows ``row0 .. row0 + n``: labels (and probabilities) into the outputs, probabilities to the hooks."""
    n = weight.shape[0]
    rows = slice(row0, row0 + n)
    if probabilities_out is not None or hooks:
        # The buffer rows are dropped after this, so normalise them in place.
        SlabStitcher.normalized(weighted_sum, weight, out=weighted_sum)
    if probabilities_out is not None:
        probabilities_out[(slice(None), rows)] = weighted_sum
    for hook in hooks:
        hook(rows, weighted_sum)
    if labels_out is None:
        return
    # Weights are equal across classes, so the argmax of the weighted sums is
    # the argmax of the blended probabilities; chunks bound the int64 temporaries.
    labels = np.empty(weight.shape, dtype=lut.dtype)
    step = max(1, _ARGMAX_VOXELS // max(1, math.prod(weight.shape[1:])))
    for a in range(0, n, step):
        labels[a : a + step] = lut[np.argmax(weighted_sum[:, a : a + step], axis=0)]
    labels_out[rows] = labels
