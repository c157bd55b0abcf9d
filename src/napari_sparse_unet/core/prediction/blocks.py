"""Where the blocks of a block-wise (distributed) prediction go.  Pure numpy.

Shapes are spatial and in array order, (Z, Y, X) for volumes.  The volume is cut
into a regular grid of *blocks* whose shape is a multiple of the output's chunk
shape, so each output chunk belongs to exactly one block and two tasks never
write the same chunk.  A task reads its block plus a *halo* on every side (clipped
at the volume's border), predicts that region, and writes back only the block
itself, its *core*.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

Shape = tuple[int, ...]

# Work of one block besides its voxels (task start, reading, writing, Python),
# as voxels of network work; steers away from many tiny blocks.
BLOCK_OVERHEAD_VOXELS = 2**20
# Largest block by default: about 128 MB per uint8 input block; the network's
# memory is bounded by its tile, not the block, so this only bounds the
# block's input and label buffers.  Big: every block border computes the
# whole volume's tiles that straddle it twice (see .blockwise).
DEFAULT_MAX_BLOCK_VOXELS = 128 * 2**20


@dataclass(frozen=True)
class Block:
    """One block of the grid.

    Attributes:
        index: position in the block grid, e.g. (0, 2, 1).
        core: slices of the volume this block writes.
        read: slices of the volume it reads: the core plus the halo, clipped to the volume.
        crop: slices of the read region that hold the core (``read[crop] == core``).
    """

    index: Shape
    core: tuple[slice, ...]
    read: tuple[slice, ...]
    crop: tuple[slice, ...]

    @property
    def core_shape(self) -> Shape:
        return tuple(s.stop - s.start for s in self.core)

    @property
    def read_shape(self) -> Shape:
        return tuple(s.stop - s.start for s in self.read)

    @property
    def name(self) -> str:
        """A short stable name, e.g. ``"0_2_1"`` (file names, task keys)."""
        return "_".join(str(i) for i in self.index)


def _ints(values: int | Sequence[int], ndim: int, name: str) -> Shape:
    out = (int(values),) * ndim if isinstance(values, int) else tuple(int(v) for v in values)
    if len(out) != ndim:
        raise ValueError(f"{name} needs {ndim} values, got {values!r}")
    return out


def grid_shape(shape: Sequence[int], block_shape: Sequence[int]) -> Shape:
    """Number of blocks along each axis."""
    return tuple(math.ceil(int(s) / int(b)) for s, b in zip(shape, block_shape))


def block_grid(shape: Sequence[int], block_shape: Sequence[int], halo: int | Sequence[int] = 0) -> list[Block]:
    """All blocks of ``shape`` in C order of their grid index.

    Args:
        shape: spatial shape of the volume.
        block_shape: core size of every block (the last one along an axis may be smaller).
        halo: voxels read beyond the core on each side, one for all axes or per axis.
    """
    shape = tuple(int(s) for s in shape)
    block_shape = _ints(block_shape, len(shape), "block_shape")
    halo = _ints(halo, len(shape), "halo")
    if any(s < 1 for s in shape) or any(b < 1 for b in block_shape) or any(h < 0 for h in halo):
        raise ValueError(f"bad block grid: shape {shape}, block {block_shape}, halo {halo}")
    per_axis = []
    for size, block, h in zip(shape, block_shape, halo):
        axis = []
        for i in range(math.ceil(size / block)):
            start, stop = i * block, min((i + 1) * block, size)
            lo, hi = max(0, start - h), min(size, stop + h)
            axis.append((i, slice(start, stop), slice(lo, hi), slice(start - lo, stop - lo)))
        per_axis.append(axis)
    return [
        Block(
            index=tuple(a[0] for a in combo),
            core=tuple(a[1] for a in combo),
            read=tuple(a[2] for a in combo),
            crop=tuple(a[3] for a in combo),
        )
        for combo in itertools.product(*per_axis)
    ]


def read_voxels(shape: Sequence[int], block_shape: Sequence[int], halo: int | Sequence[int]) -> int:
    """Voxels all blocks read together (cores plus clipped halos); separable, so cheap."""
    total = 1
    for size, block, h in zip(shape, block_shape, _ints(halo, len(tuple(shape)), "halo")):
        starts = range(0, int(size), int(block))
        total *= sum(min(size, a + block + h) - max(0, a - h) for a in starts)
    return total


def choose_block_shape(
    shape: Sequence[int],
    chunks: Sequence[int],
    halo: int | Sequence[int],
    max_voxels: int = DEFAULT_MAX_BLOCK_VOXELS,
    min_blocks: int = 1,
    work: Callable[[Shape], int] | None = None,
) -> Shape:
    """The chunk-aligned block shape that predicts the volume soonest.

    Every axis is a multiple of ``chunks`` (or the whole axis), a block holds at
    most ``max_voxels`` (one chunk if even that is larger), and the grid has at
    least ``min_blocks`` blocks where the volume allows it (e.g. one per worker).
    The cost is ``work(block_shape)``, the voxels all blocks compute (default:
    the voxels read, halos included), plus a fixed overhead per block; blocks
    are spread over ``min_blocks`` workers, so a last round that leaves workers
    idle counts.  Ties go to fewer blocks, then to whole trailing axes.
    """
    shape = tuple(int(s) for s in shape)
    chunks = tuple(min(int(c), s) for c, s in zip(_ints(chunks, len(shape), "chunks"), shape))
    halo = _ints(halo, len(shape), "halo")
    options = []
    for size, chunk in zip(shape, chunks):
        n_chunks = math.ceil(size / chunk)
        # Distinct block counts only: the smallest multiple of the chunk for each count.
        by_count: dict[int, int] = {}
        for k in range(1, n_chunks + 1):
            by_count.setdefault(math.ceil(size / (k * chunk)), min(k * chunk, size))
        options.append(sorted(by_count.values()))
    limit = max(int(max_voxels), math.prod(chunks))
    candidates = []
    for combo in _combinations_within(options, limit):
        blocks = math.prod(grid_shape(shape, combo))
        cost = (work(combo) if work is not None else read_voxels(shape, combo, halo)) + blocks * BLOCK_OVERHEAD_VOXELS
        rounds = math.ceil(blocks / max(1, min_blocks))  # each worker's share, in blocks of average cost
        candidates.append((blocks < min_blocks, rounds * cost / blocks, cost, blocks, tuple(-b for b in reversed(combo)), combo))
    return min(candidates)[-1]


def _combinations_within(options: list[list[int]], limit: int, prefix: Shape = ()) -> list[Shape]:
    """Every choice of one value per axis whose product is at most ``limit`` (options ascending)."""
    if not options:
        return [prefix]
    out: list[Shape] = []
    rest_min = math.prod(o[0] for o in options[1:])
    for value in options[0]:
        if math.prod(prefix) * value * rest_min > limit:
            break
        out.extend(_combinations_within(options[1:], limit, prefix + (value,)))
    return out
