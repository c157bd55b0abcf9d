"""Sliding-window prediction of whole volumes, streamed out slab by slab.

Axis order: images are channel-first, (C, Z, Y, X) or (C, Y, X); tensors are
(N, C, *tile); labels have the spatial shape only.

The network is fully convolutional, so prediction tiles need not match the
training patch: :func:`choose_tile_size` picks the tiling that computes the
fewest voxels within a memory budget.  Overlap is measured in voxels of the
*training* patch (``PredictConfig.overlap`` × ``patch_size``), the context the
network was trained with, so bigger tiles do not mean more redundant voxels.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from .config import ModelConfig, PredictConfig
from .data import model_lut
from .errors import InputError
from .model import fold_batch_norms
from .generators import run_to_end
from .rules import check_network_size, image_for_model
from .sampling import reflect_indices, crop_with_padding
from .tiling import SlabStitcher, blending_window, per_axis_values, overlap_voxels, tile_grid
from .device import autocast, autocast_dtype, preferred_memory_format, resolve_device

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""(N, C, *tile) float32 -> (N, K, *tile) class probabilities (what gets blended)."""

SlabHook = Callable[[slice, np.ndarray], None]
"""Called per finished slab with (rows of axis 0, (K, n, ...) float32 blended probabilities).

The array is the stitcher's buffer, valid only during the call: hooks keep
what they need (an uncertainty, one class's probability), not the array.
"""

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
# Output voxels filtered at once when a row's features are computed (bounds the filter bank's temporaries).
_FEATURE_VOXELS = 1 << 21
# Rows of a finished slab turned into labels at once (bounds the argmax temporaries).
_ARGMAX_VOXELS = 1 << 20


@dataclass(frozen=True)
class PredictEvent:
    """Progress of a prediction: tiles finished so far and seconds elapsed."""

    tiles_done: int
    tiles_total: int
    elapsed: float


# --------------------------------------------------------------------------- predictor


def make_predictor(
    model: Any,
    device: str | torch.device = "cpu",
    mixed_precision: bool = True,
    tta: bool = False,
    on_features: bool = False,
) -> Predictor:
    """Wrap a network as a :data:`Predictor` returning softmax probabilities.

    Args:
        model: a ``SegmentationModel`` (its ``network`` is used) or a bare
            ``torch.nn.Module`` mapping (N, C, *spatial) to logits (N, K, *spatial).
        device: where tiles run.
        mixed_precision: autocast where the device is fast at it (CUDA; CPUs with
            native bfloat16), see :mod:`.device`.
        tta: average over all flips of the spatial axes (2^dims passes).
        on_features: the predictor takes what :func:`make_featurizer` gives, the filter-bank
            features (N, C·F, *tile) followed by the voxel head's logits (N, K, *tile) if the
            network has one, instead of the image; every feature is a flip-invariant map
            (smoothing, magnitudes, eigenvalues), so flipped features are the flipped image's.

    The caller's network is never modified: it is copied when it has to move
    to another device or be put in eval mode (e.g. a network still training).
    """
    network = getattr(model, "network", model)
    device = torch.device(device)
    amp_dtype = autocast_dtype(device, mixed_precision)
    # A bare module carries no config: its first convolution's weight is (out, in, *kernel).
    spatial_dims = next(p for p in network.parameters() if p.ndim > 2).ndim - 2
    memory_format = preferred_memory_format(device, amp_dtype, spatial_dims)
    on_device = all(p.device == device for p in network.parameters())
    if network.training or not on_device or memory_format != torch.contiguous_format or on_features:
        network = copy.deepcopy(network).to(device=device, memory_format=memory_format).eval()
    if on_features:
        network = fold_batch_norms(network)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, amp_dtype):
            if not on_features:
                logits = network(x)
            elif getattr(network, "voxel_head", None) is not None:
                classes = network.config.num_classes
                logits = network.classify(x[:, :-classes], voxel=x[:, -classes:])
            else:
                logits = network.classify(x)
        return torch.softmax(logits.float(), dim=1)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            # Features already in the autocast dtype stay in it (the convolutions would cast them back).
            x = x.to(device=device, dtype=x.dtype if x.dtype == amp_dtype else torch.float32)
            if not tta:
                return forward(x)
            spatial = range(2, x.ndim)
            total: torch.Tensor | None = None
            count = 0
            for r in range(len(spatial) + 1):
                for axes in itertools.combinations(spatial, r):
                    y = forward(torch.flip(x, axes) if axes else x)
                    y = torch.flip(y, axes) if axes else y
                    total = y if total is None else total + y
                    count += 1
            assert total is not None
            return total / count

    return predictor


class Featurizer:
    """What the network computes voxel by voxel, the same in every tile: from (1, C, D + 2·halo[0], *rest)
    normalised planes, its filter-bank features (:meth:`.filters.FilterBank.planes`: valid along the
    first axis, mirrored at the ends of the others), then the voxel head's logits if it has one,
    written into a (C·F (+ K), D, *rest) tensor of :attr:`dtype` (the predictor's precision).

    Planes are best given in :attr:`dtype`: cast once per row, not once per call.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, mixed_precision: bool) -> None:
        self.device = device
        self.amp_dtype = autocast_dtype(device, mixed_precision)
        self.dtype = self.amp_dtype or torch.float32
        self.bank = copy.deepcopy(network.filters).to(device)
        head = getattr(network, "voxel_head", None)
        self.head = copy.deepcopy(head).to(device).eval() if head is not None else None
        self.channels = network.config.in_channels * self.bank.features_per_channel
        self.channels += network.config.num_classes if head is not None else 0

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            features = self.bank.planes(x.to(device=self.device, dtype=self.dtype))
            out[: features.shape[1]] = features[0]
            if self.head is not None:
                out[features.shape[1] :] = self.head(features)[0]


def make_featurizer(model: Any, device: str | torch.device = "cpu", mixed_precision: bool = True) -> Featurizer | None:
    """The network's per-voxel part as a :class:`Featurizer` on ``device``; None without a filter bank."""
    network = getattr(model, "network", model)
    if getattr(network, "filters", None) is None:
        return None
    return Featurizer(network, torch.device(device), mixed_precision)


# --------------------------------------------------------------------------- tile size


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
    budget = float(memory_budget_mb) * 2**20
    budget -= min(_FIXED_BYTES, budget / 4)
    plane = math.prod(shape[1:])
    # Float sums + weights, and the finished labels before they are written.
    slab_per_row = (4 * (model_config.num_classes + 1) + 1) * plane
    candidates = []
    for combo in itertools.product(*options):
        tile = tuple(t for t, _ in combo)
        tiles = math.prod(n for _, n in combo)
        memory = estimate_tile_bytes(model_config, tile, batch_size) + slab_per_row * min(tile[0], shape[0])
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


# --------------------------------------------------------------------------- sliding window


def _read_tile(
    image_cf: Any,
    start: Sequence[int],
    tile: Sequence[int],
    normalize: Callable[[np.ndarray], np.ndarray] | None,
    halo: Sequence[int] | None = None,
) -> np.ndarray:
    """(C, *(tile + 2·halo)) float32: the image under the tile and its halo, normalised, mirrored past the border."""
    halo = (0,) * len(tile) if halo is None else tuple(halo)
    raw = crop_with_padding(image_cf, [a - h for a, h in zip(start, halo)], [t + 2 * h for t, h in zip(tile, halo)], fill=None)
    x = normalize(raw) if normalize is not None else raw
    return np.asarray(x, dtype=np.float32)


class _RowFeatures:
    """Filter-bank features of one row of tiles at a time, cut into tiles: (C·F, *tile) tensors.

    A row is the tile's depth from one first-axis start, over the image's whole extent
    along the other axes (mirrored where a tile reaches past the border: every feature
    is mirror-symmetric, as the image padding is).  Its planes are read with the halo
    along the first axis, normalised once, and filtered in slabs of at most
    ``_FEATURE_VOXELS`` voxels (bounding the bank's temporaries); they are kept in the
    featurizer's precision.
    """

    def __init__(
        self,
        image_cf: Any,
        featurize: Featurizer,
        normalize: Callable[[np.ndarray], np.ndarray] | None,
        halo: Sequence[int] | None,
        tile: Sequence[int],
        extent: Sequence[int],
    ) -> None:
        """``extent``: how far the tiles reach along the axes after the first (at least the image's)."""
        self.image_cf, self.featurize, self.normalize = image_cf, featurize, normalize
        self.tile_shape = tuple(int(t) for t in tile)
        self.extent = tuple(max(int(e), int(n)) for e, n in zip(extent, image_cf.shape[2:]))
        self.depth_halo = 0 if halo is None else int(halo[0])
        self.row_start: int | None = None
        self.features: torch.Tensor | None = None
        self.planes: tuple[int, np.ndarray] | None = None  # the last row's normalised planes and the first one's index

    def prepare(self, row_start: int) -> Generator[None, None, None]:
        """Compute the features of the row from ``row_start`` unless they are the current row's.

        Yields between slabs of a row, where the caller may stop (a row of big planes takes seconds).
        """
        if row_start != self.row_start:
            self.features = yield from self._compute(row_start)
            self.row_start = row_start

    def tile(self, start: Sequence[int]) -> torch.Tensor:
        """The features under the tile at ``start`` (a view of the row's buffer), once :meth:`prepare` made its row."""
        assert start[0] == self.row_start, "prepare the tile's row first"
        tile = self.features
        assert tile is not None
        for axis, (a, t) in enumerate(zip(start[1:], self.tile_shape[1:]), start=2):
            if 0 <= a and a + t <= tile.shape[axis]:
                tile = tile.narrow(axis, a, t)
            else:  # not on the tile grid: mirror the image's extent (slow, element by element)
                size = int(self.image_cf.shape[axis])
                tile = tile.index_select(axis, torch.from_numpy(reflect_indices(a, t, size)))
        return tile

    def _planes(self, first: int, count: int) -> np.ndarray:
        """Normalised planes [first, first + count) (C, count, *rest) float32, mirrored past the ends.

        Rows overlap, and so do their halos: planes the last row read are copied, not read and normalised again.
        """
        rest = tuple(int(n) for n in self.image_cf.shape[2:])
        planes = np.empty((self.image_cf.shape[0], count, *rest), np.float32)
        done_low = done_high = first
        if self.planes is not None:
            start, previous = self.planes
            done_low, done_high = max(first, start), min(first + count, start + previous.shape[1])
            if done_low < done_high:
                planes[:, done_low - first : done_high - first] = previous[:, done_low - start : done_high - start]
            else:
                done_low = done_high = first
        for low, high in ((first, done_low), (done_high, first + count)):
            if low < high:
                planes[:, low - first : high - first] = _read_tile(
                    self.image_cf, (low, *[0] * len(rest)), (high - low, *rest), self.normalize
                )
        self.planes = (first, planes)
        return planes

    def _compute(self, row_start: int) -> Generator[None, None, torch.Tensor]:
        """Features of the row from ``row_start``, in the last row's buffer: planes both rows cover are moved, not computed again."""
        rest = tuple(int(n) for n in self.image_cf.shape[2:])
        depth, halo = self.tile_shape[0], self.depth_halo
        features = self.features
        if features is None:
            features = torch.empty((self.featurize.channels, depth, *self.extent), dtype=self.featurize.dtype)
        shift = row_start - self.row_start if self.row_start is not None else depth
        first = depth - shift if 0 < shift < depth else 0  # the first plane to compute
        for plane in range(first):  # ascending: a plane is read before it is overwritten
            features[:, plane] = features[:, plane + shift]
        planes = torch.from_numpy(self._planes(row_start + first - halo, depth - first + 2 * halo))
        planes_t = planes.to(self.featurize.dtype)  # (C, depth - first + 2·halo, *rest)
        inside = features[(slice(None), slice(first, depth), *(slice(0, n) for n in rest))]
        step = max(1, _FEATURE_VOXELS // max(1, math.prod(rest)))
        for a in range(0, depth - first, step):
            if a:
                yield
            b = min(a + step, depth - first)
            self.featurize(planes_t[None, :, a : b + 2 * halo], inside[:, a:b])
        # Where tiles reach past the image, the features mirrored (every feature is mirror-symmetric,
        # as the image padding is), one strip per axis.
        computed = features.narrow(1, first, depth - first)
        for axis, (size, length) in enumerate(zip(rest, self.extent), start=2):
            if length > size:
                mirrored = torch.from_numpy(reflect_indices(size, length - size, size))
                computed.narrow(axis, size, length - size).copy_(computed.narrow(axis, 0, size).index_select(axis, mirrored))
        return features


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
) -> Generator[PredictEvent, None, None]:
    """Predict ``image_cf`` tile by tile and write the blended result slab by slab.

    Tiles are visited in order of their first-axis start; as soon as no
    remaining tile covers a run of rows, those rows are finished: their
    class-wise argmax, mapped through ``lut``, goes to ``labels_out`` and the
    probabilities to ``probabilities_out``.  Yields one event per batch.

    Args:
        predictor: (N, C, *tile) float32 tensor -> (N, K, *tile) probabilities.
        image_cf: (C, *spatial) numpy or array-like (zarr, dask...), any dtype.
        num_classes: K, the predictor's output channels.
        tile_size: spatial tile shape; may exceed the volume (input is padded,
            output cropped back).
        overlap: fraction of the tile that neighbours share, per axis or one for all.
        labels_out: array-like of the spatial shape receiving ``lut[argmax]``;
            nothing is written when None.
        lut: class index -> output value; default: the index itself (uint8).
        probabilities_out: optional (K, *spatial) array-like, float32.
        normalize: applied to each raw (C, *extent) tile before padding.
        batch_size: tiles per predictor call.
        device: where the batch tensor is sent before calling the predictor.
        halo: input voxels read beyond each tile side, per axis (the network's
            :attr:`~.model.UNet.input_halo`); the predictor maps (N, C, *(tile + 2·halo))
            to (N, K, *tile).
        slab_hooks: :data:`SlabHook` callables given each finished slab's probabilities.
        tiles: start corners of the tiles to predict, a product of per-axis starts in
            :func:`.tiling.tile_grid` order (a block's share of a whole volume's tiles); the
            outputs then cover the tiles' bounding box only.  Default: the whole image's grid.
        featurize: the network's filter bank (:func:`make_featurizer`); the predictor then
            takes features.  The features under a row of tiles (one first-axis start, the
            image's whole extent along the other axes) are computed once and cut into tiles:
            a tile filtering its own halo would filter the overlap and the halo again for
            every tile.
    """
    spatial = tuple(int(s) for s in image_cf.shape[1:])
    tile = tuple(int(t) for t in tile_size)
    if len(tile) != len(spatial):
        raise ValueError(f"tile size {tile} does not match the image's spatial shape {spatial}")
    if lut is None:
        lut = np.arange(num_classes, dtype=np.uint8 if num_classes <= 256 else np.uint16)
    if len(lut) != num_classes:
        raise ValueError(f"lut has {len(lut)} entries but the predictor has {num_classes} classes")
    overlaps = per_axis_values(overlap, len(spatial), "overlap")
    grid = tile_grid(spatial, tile, overlaps) if tiles is None else [tuple(int(a) for a in start) for start in tiles]
    origin = grid[0]  # the first corner is the lowest on every axis
    shape = tuple(max(min(s[i] + t, n) for s in grid) - o for i, (t, n, o) in enumerate(zip(tile, spatial, origin)))
    if labels_out is not None and tuple(labels_out.shape) != shape:
        raise ValueError(f"labels_out has shape {tuple(labels_out.shape)}, expected {shape}")
    if probabilities_out is not None and tuple(probabilities_out.shape) != (num_classes, *shape):
        raise ValueError(f"probabilities_out has shape {tuple(probabilities_out.shape)}, expected {(num_classes, *shape)}")
    # Ramps as long as the guaranteed overlap: neighbours cross-fade over it.
    margins = [overlap_voxels(t, o) for t, o in zip(tile, overlaps)]
    local = [tuple(a - o for a, o in zip(start, origin)) for start in grid]
    stitcher = SlabStitcher(shape, num_classes, tile, local, blending_window(tile, margins))
    device = torch.device(device)
    started = time.perf_counter()
    done = 0
    reach = [max(int(start[axis]) + t for start in grid) for axis, t in enumerate(tile)][1:]
    rows = _RowFeatures(image_cf, featurize, normalize, halo, tile, reach) if featurize is not None else None
    for first in range(0, len(grid), max(1, int(batch_size))):
        starts = grid[first : first + max(1, int(batch_size))]
        if rows is not None:
            cut = []
            for s in starts:
                for _ in rows.prepare(int(s[0])):  # a chance to stop while a row of big planes is filtered
                    yield PredictEvent(tiles_done=done, tiles_total=len(grid), elapsed=time.perf_counter() - started)
                # A view of the row's buffer, which the next row overwrites: copied if the batch goes on.
                cut.append(rows.tile(s) if len(starts) == 1 else rows.tile(s).clone())
            batch = cut[0][None] if len(cut) == 1 else torch.stack(cut)
        else:
            batch = torch.from_numpy(np.stack([_read_tile(image_cf, s, tile, normalize, halo) for s in starts]))
        output = predictor(batch.to(device))
        output = output.detach().to("cpu", torch.float32).numpy()
        expected = (len(starts), num_classes, *tile)
        if output.shape != expected:
            raise ValueError(f"predictor returned shape {output.shape} for input {batch.shape}; expected {expected}")
        del batch
        for start, values in zip(starts, output):
            extent = tuple(min(t, s - a) for t, s, a in zip(tile, spatial, start))
            stitcher.add([a - o for a, o in zip(start, origin)], values[(slice(None),) + tuple(slice(0, e) for e in extent)])
            while (finished := stitcher.pop_finished()) is not None:
                _write_slab(
                    *finished, lut=lut, labels_out=labels_out, probabilities_out=probabilities_out, hooks=slab_hooks
                )
        del output
        done += len(starts)
        yield PredictEvent(tiles_done=done, tiles_total=len(grid), elapsed=time.perf_counter() - started)


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


# --------------------------------------------------------------------------- high level


def plan_prediction(model: Any, spatial_shape: Sequence[int], config: PredictConfig) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(tile shape, overlap as a fraction of the tile per axis) for ``model`` on ``spatial_shape``.

    Neighbouring tiles share ``config.overlap`` × the training patch in voxels
    (what MONAI's usual setting, window = training patch, shares), so the
    overlap does not grow with the tile.  Tiles are at least the training
    patch (clipped to the volume) unless ``config.tile_size`` is given.
    """
    shape = tuple(int(s) for s in spatial_shape)
    patch = tuple(int(p) for p in getattr(model, "patch_size", None) or model.model_config.size_multiple())
    halo = [overlap_voxels(p, config.overlap) for p in patch]
    if config.tile_size is not None:
        tile = check_network_size("tile_size", config.tile_size, model.model_config.size_multiple())
    else:
        tile = choose_tile_size(
            model.model_config,
            shape,
            config.memory_budget_mb,
            overlap=halo,
            min_tile=patch,
            batch_size=config.batch_size,
        )
    # Never ask for more overlap than the tile can give (tile_starts needs < 1).
    fractions = tuple(min(h, t - 1) / t for h, t in zip(halo, tile))
    return tile, fractions


def predict_iter(
    model: Any,
    image: Any,
    config: PredictConfig = PredictConfig(),
    labels_out: Any = None,
    probabilities_out: Any = None,
    slab_hooks: Sequence[SlabHook] = (),
) -> Generator[PredictEvent, None, Any]:
    """Predict a whole image with a ``SegmentationModel``; a generator for GUI workers.

    Args:
        model: a ``SegmentationModel``.
        image: (Z, Y, X) / (C, Z, Y, X) for a 3-D model, (Y, X) / (C, Y, X)
            for a 2-D one, numpy or array-like, any numeric dtype.
        labels_out: array-like of the spatial shape (numpy, zarr); allocated
            (numpy, ``model.output_lut()`` dtype) when None.  Background is 0,
            every class the value painted for it.
        probabilities_out: optional (K, *spatial) float32 array-like.
        slab_hooks: :data:`SlabHook` callables given each finished slab's
            probabilities (uncertainty, one class's probability).

    Yields :class:`PredictEvent` after each batch of tiles (closing the
    generator there cancels) and returns ``labels_out``.
    """
    image_cf = image_for_model(image, int(model.spatial_dims), int(model.in_channels))
    spatial = tuple(int(s) for s in image_cf.shape[1:])
    lut = model_lut(model)
    if labels_out is None:
        labels_out = np.zeros(spatial, dtype=lut.dtype)
    elif tuple(labels_out.shape) != spatial:
        raise InputError(f"labels_out has shape {tuple(labels_out.shape)} but the image's spatial shape is {spatial}")
    if probabilities_out is not None and tuple(probabilities_out.shape) != (model.num_classes, *spatial):
        raise InputError(
            f"probabilities_out has shape {tuple(probabilities_out.shape)}, expected {(model.num_classes, *spatial)}"
        )
    tile, overlap = plan_prediction(model, spatial, config)
    yield from sliding_window_predict(
        image_cf=image_cf, tile_size=tile, overlap=overlap, labels_out=labels_out, probabilities_out=probabilities_out,
        slab_hooks=slab_hooks, **model_window(model, config),
    )
    return labels_out


def model_window(model: Any, config: PredictConfig) -> dict[str, Any]:
    """:func:`sliding_window_predict`'s settings for ``model`` (all but the image, tiling and outputs)."""
    device = resolve_device(config.device)
    featurize = make_featurizer(model, device, config.mixed_precision)
    return {
        "predictor": make_predictor(model, device, config.mixed_precision, config.tta, on_features=featurize is not None),
        "featurize": featurize,
        "num_classes": model.num_classes,
        "lut": model_lut(model),
        "normalize": model.normalization.apply,
        "batch_size": config.batch_size,
        "device": device,
        "halo": model.model_config.input_halo,
    }


def predict(
    model: Any,
    image: Any,
    config: PredictConfig = PredictConfig(),
    *,
    labels_out: Any = None,
    probabilities_out: Any = None,
    progress: Callable[[PredictEvent], None] | None = None,
) -> Any:
    """Blocking :func:`predict_iter`: returns the labels (spatial shape), calling ``progress`` per batch."""
    events = predict_iter(model, image, config, labels_out=labels_out, probabilities_out=probabilities_out)
    return run_to_end(events, progress)
