"""Tile locations, the blending window and the slab stitcher, with exact answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_sparse_unet.core.prediction.tiling import (
    WINDOW_FLOOR,
    SlabStitcher,
    blending_window,
    overlap_voxels,
    tile_grid,
    tile_starts,
)


@pytest.mark.parametrize(
    "size, tile, overlap, expected",
    [
        (12, 4, 0.0, [0, 4, 8]),  # exact fit, no overlap
        (10, 4, 0.0, [0, 3, 6]),  # last tile flush with the border
        (4, 4, 0.25, [0]),  # tile == size
        (3, 8, 0.5, [0]),  # tile > size: one tile, padded by the caller
        (1, 1, 0.0, [0]),
        (13, 5, 0.4, [0, 3, 5, 8]),  # odd size, steps spread evenly (<= 3)
        (11, 4, 0.5, [0, 2, 4, 5, 7]),
        (7, 3, 0.5, [0, 1, 2, 3, 4]),  # 0.5 of 3 voxels rounds the step down to 1
        (128, 48, 0.25, [0, 27, 53, 80]),
    ],
)
def test_tile_starts_table(size, tile, overlap, expected):
    assert tile_starts(size, tile, overlap) == expected


def test_tile_starts_properties():
    for size, tile, overlap in itertools.product(range(1, 40), range(1, 12), (0.0, 0.1, 0.25, 0.5, 0.9)):
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0
        if tile >= size:
            assert starts == [0]
            continue
        assert starts[-1] == size - tile
        steps = np.diff(starts)
        assert (steps >= 1).all()
        assert (steps <= tile - overlap_voxels(tile, overlap)).all()  # neighbours share at least the overlap
        assert steps.max() - steps.min() <= 1  # evenly spread


def test_overlap_fraction_is_validated():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(10, 4, 1.0)
    with pytest.raises(ValueError, match="size"):
        tile_starts(0, 4, 0.0)
    assert overlap_voxels(48, 0.25) == 12


@pytest.mark.parametrize("shape, tile", [((7, 13, 11), (4, 6, 5)), ((9, 10), (4, 4)), ((5, 3, 17), (8, 2, 16))])
def test_grid_covers_every_voxel_in_axis0_order(shape, tile):
    grid = tile_grid(shape, tile, 0.3)
    assert [g[0] for g in grid] == sorted(g[0] for g in grid)
    assert grid == sorted(grid)  # lexicographic: first axis major
    cover = np.zeros(shape, int)
    for start in grid:
        cover[tuple(slice(a, a + t) for a, t in zip(start, tile))] += 1
    assert cover.min() >= 1


def test_grid_of_tile_larger_than_volume_is_one_corner():
    assert tile_grid((3, 5), (8, 8), 0.5) == [(0, 0)]


def test_window_is_never_zero_symmetric_and_flat_in_the_middle():
    window = blending_window((9, 12, 7), margin=3)
    assert window.dtype == np.float32 and window.shape == (9, 12, 7)
    assert window.min() >= WINDOW_FLOOR**3 > 0
    for axis in range(3):
        np.testing.assert_array_equal(window, np.flip(window, axis))
    assert window[4, 3:9, 3].min() == 1.0
    assert blending_window((4, 4), margin=0).min() == 1.0
    full = blending_window((8,))  # default margin: half the tile, a trimmed Hann window
    assert full.min() > 0 and full[3] == full[4] < 1


def test_window_ramps_cross_fade_to_one_over_the_margin():
    margin = 5
    profile = blending_window((20,), margin=margin)
    # Tile B starts where tile A's last `margin` voxels begin.
    np.testing.assert_allclose(profile[-margin:] + profile[:margin], 1.0, rtol=1e-6)


def test_stitcher_blends_two_tiles_exactly():
    # Volume of 6 rows, tiles of 4 rows at 0 and 2, ramps of 2 voxels.
    grid = tile_grid((6,), (4,), 0.5)
    assert grid == [(0,), (2,)]
    window = blending_window((4,), margin=2)
    stitcher = SlabStitcher((6,), 1, (4,), grid, window)
    stitcher.add((0,), np.full((1, 4), 10.0, np.float32))
    row0, total, weight = stitcher.pop_finished()
    assert row0 == 0 and total.shape == (1, 2)
    np.testing.assert_allclose(total / weight, 10.0)
    assert stitcher.pop_finished() is None
    stitcher.add((2,), np.full((1, 4), 20.0, np.float32))
    row0, total, weight = stitcher.pop_finished()
    a, b = float(window[1]), float(window[0])  # 0.854, 0.146 (half-Hann), a + b == 1
    expected = [(a * 10 + b * 20) / (a + b), (b * 10 + a * 20) / (a + b), 20, 20]
    assert row0 == 2
    np.testing.assert_allclose((total / weight)[0], expected, rtol=1e-6)
    assert stitcher.pop_finished() is None


def test_stitcher_keeps_one_tile_deep_slab_and_rejects_bad_order():
    shape, tile = (40, 5, 6), (6, 4, 4)
    grid = tile_grid(shape, tile, 0.25)
    stitcher = SlabStitcher(shape, 2, tile, grid, blending_window(tile, 1))
    assert stitcher.buffer_shape == (2, 6, 5, 6)
    with pytest.raises(ValueError, match="order"):
        stitcher.add(grid[-1], np.zeros((2, 6, 1, 2), np.float32))
    rows = []
    for start in grid:
        extent = tuple(min(t, s - a) for t, s, a in zip(tile, shape, start))
        stitcher.add(start, np.ones((2, *extent), np.float32))
        while (done := stitcher.pop_finished()) is not None:
            row0, total, weight = done
            rows.extend(range(row0, row0 + weight.shape[0]))
            np.testing.assert_allclose(total / weight, 1.0, rtol=1e-6)
    assert rows == list(range(40))  # every row once, in order
    assert stitcher.buffer_shape == (2, 6, 5, 6)


def test_stitcher_checks_tile_shape():
    stitcher = SlabStitcher((4, 4), 1, (4, 4), [(0, 0)])
    with pytest.raises(ValueError, match="shape"):
        stitcher.add((0, 0), np.zeros((2, 4, 4), np.float32))
