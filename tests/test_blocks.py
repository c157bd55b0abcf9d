"""Block geometry for block-wise prediction: cores tile the volume, halos are clipped, blocks are chunk-aligned."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_sparse_unet.core.prediction.blocks import DEFAULT_MAX_BLOCK_VOXELS, block_grid, choose_block_shape, grid_shape, read_voxels


@pytest.mark.parametrize(
    "shape, block, halo",
    [((10, 7), (4, 4), (1, 2)), ((9, 16, 5), (3, 8, 5), 2), ((5, 5, 5), (8, 8, 8), 3), ((1, 12, 13), (1, 5, 4), (0, 6, 1))],
)
def test_cores_tile_the_volume_once_and_halos_stay_inside(shape, block, halo):
    blocks = block_grid(shape, block, halo)
    assert len(blocks) == int(np.prod(grid_shape(shape, block)))
    count = np.zeros(shape, np.int32)
    halos = (halo,) * len(shape) if isinstance(halo, int) else halo
    for b in blocks:
        count[b.core] += 1
        for core, read, crop, h, size in zip(b.core, b.read, b.crop, halos, shape):
            assert read.start == max(0, core.start - h) and read.stop == min(size, core.stop + h)
            assert (read.start + crop.start, read.start + crop.stop) == (core.start, core.stop)
    np.testing.assert_array_equal(count, 1)
    assert [b.index for b in blocks] == sorted(b.index for b in blocks)
    assert read_voxels(shape, block, halo) == sum(int(np.prod(b.read_shape)) for b in blocks)


def test_block_names_are_unique_and_stable():
    blocks = block_grid((4, 4, 4), (2, 2, 2), 1)
    assert blocks[0].name == "0_0_0" and blocks[-1].name == "1_1_1"
    assert len({b.name for b in blocks}) == len(blocks)


def test_chosen_blocks_are_chunk_aligned_bounded_and_read_the_least():
    shape, chunks, halo = (256, 1024, 1024), (64, 256, 256), (6, 12, 12)
    block = choose_block_shape(shape, chunks, halo, max_voxels=64 * 2**20)
    assert all(b % c == 0 or b == s for b, c, s in zip(block, chunks, shape))
    assert np.prod(block) <= 64 * 2**20
    # Brute force over every chunk multiple within the bound: nothing reads fewer voxels.
    best = min(
        read_voxels(shape, c, halo)
        for c in itertools.product(*[range(ch, s + ch, ch) for ch, s in zip(chunks, shape)])
        if np.prod(c) <= 64 * 2**20
    )
    assert read_voxels(shape, block, halo) == best
    assert read_voxels(shape, block, halo) / np.prod(shape) < 1.06


def test_block_choice_gives_each_worker_a_block_and_allows_one_chunk_over_the_bound():
    assert np.prod(grid_shape((12, 32, 32), choose_block_shape((12, 32, 32), (4, 8, 8), 1, min_blocks=4))) >= 4
    assert choose_block_shape((64, 64, 64), (32, 32, 32), 2, max_voxels=10) == (32, 32, 32)
    # A huge volume is answered at once (the search prunes by the bound).
    block = choose_block_shape((8192, 11000, 11000), (64, 64, 64), (6, 12, 12))
    assert np.prod(block) <= DEFAULT_MAX_BLOCK_VOXELS


def test_bad_grids_raise():
    with pytest.raises(ValueError):
        block_grid((4, 4), (0, 2))
    with pytest.raises(ValueError):
        block_grid((4, 4), (2, 2, 2))


def test_block_choice_counts_the_given_work_and_keeps_workers_busy():
    # Every border computes a layer of tiles twice (tiles 16×356×356): two deep blocks win over four, and over in-plane cuts.
    def work(block):
        return int(np.prod([s + t * (-(-s // b) - 1) for s, t, b in zip((256, 1024, 1024), (16, 356, 356), block)]))

    assert choose_block_shape((256, 1024, 1024), (64, 256, 256), 0, max_voxels=2**27, min_blocks=2, work=work) == (128, 1024, 1024)
    # Three blocks are cheapest in all, but leave one of two workers idle for a round: four finish sooner.
    shape, chunks, bound = (96, 1024, 1024), (32, 512, 1024), 32 * 2**20
    assert grid_shape(shape, choose_block_shape(shape, chunks, 0, max_voxels=bound)) == (3, 1, 1)
    assert grid_shape(shape, choose_block_shape(shape, chunks, 0, max_voxels=bound, min_blocks=2)) == (2, 2, 1)
