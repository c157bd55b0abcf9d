"""Choosing the prediction tile: the fewest voxels computed within a memory budget.

The network is fully convolutional, so tiles need not match the training patch.
Shapes are spatial, in array order.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Sequence

import numpy as np

from ..config import ModelConfig

# Peak activation memory of the U-Net per tile voxel and per base channel
# (float32, inference mode).  Measured as peak RSS on CPU for the 3-D net with
# base 16: 845-885 B/voxel on 2-4 M voxel tiles; smaller tiles add a fixed
# ~60 MB (weights, oneDNN scratch), kept apart in _FIXED_BYTES (at most a
# quarter of the budget, so small budgets still get a tile).
_BYTES_PER_VOXEL_PER_BASE_CHANNEL = 56.0
_FIXED_BYTES = 64 * 2**20
# Fixed cost of one tile (Python, per-layer calls), as voxels of network work;
# steers away from many tiny tiles.  The cost model is otherwise "voxels
# computed": on the benchmark CPU, tiles of 2-4 M voxels ran 10-30 % slower
# per voxel than ~0.5-1 M (fresh page faults for activations of hundreds of
# MB), but bigger tiles are also closer to a whole-volume pass with instance
# norm, so big budgets still get big tiles.
_TILE_OVERHEAD_VOXELS = 32_768


def estimate_tile_bytes(model_config: ModelConfig, tile_shape: Sequence[int], batch_size: int = 1) -> int:
    """Rough peak memory (bytes) of one forward pass over a batch of tiles."""
    voxels = math.prod(int(t) for t in tile_shape) * int(batch_size)
    per_voxel = _BYTES_PER_VOXEL_PER_BASE_CHANNEL * model_config.base_channels
    # Input copy and K-channel probabilities in float32, twice (tensor and numpy).
    per_voxel += 8 * (model_config.in_channels + model_config.num_classes)
    return int(voxels * per_voxel)


def _axis_options(size: int, multiple: int, min_tile: int, overlap: int) -> list[tuple[int, int]]:
    """(tile, number of tiles) for the smallest tile giving each tile count along one axis."""
    top = math.ceil(size / multiple) * multiple
    low = min(top, max(multiple, math.ceil(min_tile / multiple) * multiple))
    best: dict[int, int] = {}
    for tile in range(low, top + 1, multiple):
        if tile >= size:
            n = 1
        else:
            step = tile - min(overlap, tile - 1)
            n = math.ceil((size - tile) / step) + 1
        best.setdefault(n, tile)  # ascending tiles: the first one for each count is the smallest
    return sorted((t, n) for n, t in best.items())


def choose_tile_size(
    model_config: ModelConfig,
    image_spatial_shape: Sequence[int],
    memory_budget_mb: float,
    *,
    overlap: Sequence[int] | int = 0,
    min_tile: Sequence[int] | None = None,
    batch_size: int = 1,
) -> tuple[int, ...]:
    """Tile shape that computes the fewest voxels within ``memory_budget_mb``.

    Each axis is a multiple of ``model_config.size_multiple()``, at least
    ``min_tile`` (e.g. the training patch, so every tile sees as much context
    as training did) and at most the volume rounded up to the multiple.  The
    cost counts every tile's voxels, so overlap and padding are paid for.
    Memory covers the network's activations and the stitcher's slab buffer
    (which spans whole planes), so big planes get thinner tiles.  Among
    tilings within 2 % of the cheapest, the one with fewest tiles wins, then
    the one with the largest trailing axes (whole Y/X planes where possible).

    Memory is estimated for float32 activations on every device, which
    over-estimates mixed precision on CUDA.

    Args:
        overlap: voxels shared by neighbouring tiles, per axis or one for all.
    """
    shape = tuple(int(s) for s in image_spatial_shape)
    dims = len(shape)
    if dims != model_config.spatial_dims:
        raise ValueError(f"image spatial shape {shape} does not have {model_config.spatial_dims} axes")
    multiple = model_config.size_multiple()
    overlaps = (int(overlap),) * dims if isinstance(overlap, (int, np.integer)) else tuple(int(o) for o in overlap)
    mins = multiple if min_tile is None else tuple(int(m) for m in min_tile)
    options = [_axis_options(s, m, lo, o) for s, m, lo, o in zip(shape, multiple, mins, overlaps)]
    budget = _usable_bytes(memory_budget_mb)
    candidates = []
    for combo in itertools.product(*options):
        tile = tuple(t for t, _ in combo)
        tiles = math.prod(n for _, n in combo)
        memory = estimate_tile_bytes(model_config, tile, batch_size) + _slab_bytes(model_config, shape, tile)
        cost = tiles * (math.prod(tile) + _TILE_OVERHEAD_VOXELS)
        candidates.append((cost, tiles, tile, memory))
    fitting = [c for c in candidates if c[3] <= budget]
    if not fitting:
        smallest = min(candidates, key=lambda c: (c[3], c[0]))
        warnings.warn(
            f"memory_budget_mb={memory_budget_mb} is too small for a volume of shape {shape}: using tiles of "
            f"{smallest[2]}, which need about {smallest[3] / 2**20:.0f} MB",
            RuntimeWarning,
            stacklevel=2,
        )
        return smallest[2]
    cheapest = min(c[0] for c in fitting)
    near = [c for c in fitting if c[0] <= 1.02 * cheapest]
    return min(near, key=lambda c: (c[1], tuple(-t for t in reversed(c[2]))))[2]


def row_feature_bytes(memory_budget_mb: float) -> float:
    """The most a row of tiles' filter features may hold: the budget, apart from the tile's pass and the slab.

    Whole rows fit it on volumes of up to about 512² planes at the default 1 GB;
    :class:`.row_features.RowFeatures` cuts bigger rows into bands along the second
    axis, so memory stays bounded however big the planes are (the bands' halos are
    filtered twice, which costs time only where the planes are that big).
    """
    return _usable_bytes(memory_budget_mb)


def _usable_bytes(memory_budget_mb: float) -> float:
    budget = float(memory_budget_mb) * 2**20
    return budget - min(_FIXED_BYTES, budget / 4)


def _slab_bytes(model_config: ModelConfig, shape: Sequence[int], tile: Sequence[int]) -> int:
    """The stitcher's slab: float sums and weights, and the finished labels before they are written, over whole planes."""
    plane = math.prod(int(s) for s in shape[1:])
    return (4 * (model_config.num_classes + 1) + 1) * plane * min(int(tile[0]), int(shape[0]))
