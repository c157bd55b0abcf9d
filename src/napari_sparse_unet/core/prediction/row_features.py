"""Reading tiles of an image, and the filter features of a row of tiles computed once and cut into tiles.

Images are channel-first, (C, Z, Y, X) or (C, Y, X); tiles are (C, *tile).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from .predictor import Featurizer
from ..training.sampling import crop_with_padding, reflect_indices

# Output voxels filtered at once when a row's features are computed (bounds the filter bank's temporaries).
_FEATURE_VOXELS = 1 << 21


def read_tile(
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


class RowFeatures:
    """Filter-bank features of one row of tiles at a time, cut into tiles: (C·F, *tile) tensors.

    Computed once per row because a tile filtering its own halo would filter the
    overlap and the halo again for every tile.

    A row is the tile's depth from one first-axis start, over the image's whole extent
    along the other axes (mirrored where a tile reaches past the border: every feature
    is mirror-symmetric, as the image padding is).  Its planes are read with the halo
    along the first axis, normalised once, and filtered in slabs of at most
    ``_FEATURE_VOXELS`` voxels (bounding the bank's temporaries); they are kept in the
    featurizer's precision.

    Where a row's buffers would exceed ``max_bytes`` (big planes), the row is cut into
    bands along the second axis, each read and filtered with its own halo along that
    axis too: tiles come row by row and, within a row, in order along the second axis.
    """

    def __init__(
        self,
        image_cf: Any,
        featurize: Featurizer,
        normalize: Callable[[np.ndarray], np.ndarray] | None,
        halo: Sequence[int] | None,
        tile: Sequence[int],
        extent: Sequence[int],
        max_bytes: float | None = None,
        starts_along: Sequence[int] = (),
    ) -> None:
        """``extent``: how far the tiles reach along the axes after the first (at least the image's);
        ``starts_along``: the tiles' starts along the second axis, which bands end on."""
        self.image_cf, self.featurize, self.normalize = image_cf, featurize, normalize
        self.tile_shape = tuple(int(t) for t in tile)
        self.extent = tuple(max(int(e), int(n)) for e, n in zip(extent, image_cf.shape[2:]))
        self.halo = (0,) * len(self.tile_shape) if halo is None else tuple(int(h) for h in halo)
        self.band_length = self._band_length(max_bytes)
        self.starts_along = tuple(sorted(int(a) for a in starts_along))
        self.row_start: int | None = None
        self.band: tuple[int, int] | None = None  # [start, stop) along the second axis of the row's buffer
        self.features: torch.Tensor | None = None
        self.planes: tuple[int, np.ndarray] | None = None  # the last row's normalised planes and the first one's index

    def _band_length(self, max_bytes: float | None) -> int:
        """Length along the second axis of a row's band: the whole extent unless that exceeds ``max_bytes``."""
        whole = self.extent[0]
        if max_bytes is None:
            return whole
        depth, channels = self.tile_shape[0], int(self.image_cf.shape[0])
        line = math.prod(self.extent[1:])  # voxels of a row at one position along the second axis
        feature_bytes = torch.empty((), dtype=self.featurize.dtype).element_size()
        # The normalised planes with their halo (float32 and the featurizer's copy), and the features kept.
        planes = line * channels * (depth + 2 * self.halo[0]) * (4 + feature_bytes)
        per_position = planes + line * self.featurize.channels * depth * feature_bytes
        if per_position * whole <= max_bytes:
            return whole
        return int(min(whole, max(self.tile_shape[1], (max_bytes - planes * 2 * self.halo[1]) // per_position)))

    def prepare(self, start: Sequence[int]) -> Generator[None, None, None]:
        """Compute the features of the row (and band) holding the tile at ``start`` unless they are the current ones.

        Yields between slabs of a row, where the caller may stop (a row of big planes takes seconds).
        """
        row_start, along = int(start[0]), int(start[1])
        band = self.band
        if row_start != self.row_start or band is None or not band[0] <= along <= band[1] - self.tile_shape[1]:
            if self.band_length >= self.extent[0]:
                band, computed = (0, self.extent[0]), self._compute(row_start)
            else:
                band = self._band_from(along)
                computed = self._compute_band(row_start, band)
            self.features = yield from computed
            self.row_start, self.band = row_start, band

    def _band_from(self, along: int) -> tuple[int, int]:
        """The band from the tile starting at ``along``: as many of the next tiles as fit in :attr:`band_length`."""
        length = self.tile_shape[1]
        ends = [a + length for a in self.starts_along if along <= a and a + length - along <= self.band_length]
        return along, min(max(ends, default=along + length), self.extent[0])

    def tile(self, start: Sequence[int]) -> torch.Tensor:
        """The features under the tile at ``start`` (a view of the row's buffer), once :meth:`prepare` made its row."""
        assert start[0] == self.row_start and self.band is not None, "prepare the tile's row first"
        tile = self.features
        assert tile is not None
        offsets = (self.band[0],) + (0,) * (len(start) - 2)
        for axis, (a, t, o) in enumerate(zip(start[1:], self.tile_shape[1:], offsets), start=2):
            a -= o
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
                planes[:, low - first : high - first] = read_tile(
                    self.image_cf, (low, *[0] * len(rest)), (high - low, *rest), self.normalize
                )
        self.planes = (first, planes)
        return planes

    def _compute(self, row_start: int) -> Generator[None, None, torch.Tensor]:
        """Features of the row from ``row_start``, in the last row's buffer: planes both rows cover are moved, not computed again."""
        rest = tuple(int(n) for n in self.image_cf.shape[2:])
        depth, halo = self.tile_shape[0], self.halo[0]
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
        yield from self._filter_in_slabs(planes_t, inside, halo_axes=1)
        _mirror_past_image(features.narrow(1, first, depth - first), rest, self.extent, first_axis=2)
        return features

    def _compute_band(self, row_start: int, band: tuple[int, int]) -> Generator[None, None, torch.Tensor]:
        """Features of ``band`` (along the second axis) of the row from ``row_start``, read with the halo along both axes."""
        rest = tuple(int(n) for n in self.image_cf.shape[3:])
        depth, (halo, band_halo) = self.tile_shape[0], self.halo[:2]
        length = band[1] - band[0]
        features = self.features
        if features is None:
            features = torch.empty((self.featurize.channels, depth, self.band_length, *self.extent[1:]), dtype=self.featurize.dtype)
        inside = features[(slice(None), slice(None), slice(0, length), *(slice(0, n) for n in rest))]
        # Read mirrored past the image's ends, as a tile is: the band axis needs no strips afterwards.
        planes = read_tile(self.image_cf, (row_start - halo, band[0] - band_halo, *[0] * len(rest)),
                           (depth + 2 * halo, length + 2 * band_halo, *rest), self.normalize)
        planes_t = torch.from_numpy(planes).to(self.featurize.dtype)
        del planes
        yield from self._filter_in_slabs(planes_t, inside, halo_axes=2)
        _mirror_past_image(features.narrow(2, 0, length), rest, self.extent[1:], first_axis=3)
        return features

    def _filter_in_slabs(self, planes: torch.Tensor, out: torch.Tensor, halo_axes: int) -> Generator[None, None, None]:
        """Features of ``planes`` (C, D + 2·halo[0], ...) into ``out`` (C·F, D, ...), slabs of at most
        ``_FEATURE_VOXELS`` input voxels at a time (at least a plane), yielding between slabs."""
        depth, halo = out.shape[1], self.halo[0]
        step = max(1, _FEATURE_VOXELS // max(1, math.prod(planes.shape[2:])))
        for a in range(0, depth, step):
            if a:
                yield
            b = min(a + step, depth)
            self.featurize(planes[None, :, a : b + 2 * halo], out[:, a:b], halo_axes)


def _mirror_past_image(computed: torch.Tensor, sizes: Sequence[int], extents: Sequence[int], first_axis: int) -> None:
    """Where tiles reach past the image (axes from ``first_axis`` on), the features mirrored in place.

    Every feature is mirror-symmetric, as the image padding is; one strip per axis.
    """
    for axis, (size, length) in enumerate(zip(sizes, extents), start=first_axis):
        if length > size:
            mirrored = torch.from_numpy(reflect_indices(size, length - size, size))
            computed.narrow(axis, size, length - size).copy_(computed.narrow(axis, 0, size).index_select(axis, mirrored))
