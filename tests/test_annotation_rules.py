"""The headless rules behind the widget: annotation counts and problems, patch sizes, preview regions.

Annotations are (Z, Y, X) or (Y, X); 0 = not painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparse_unet.core.annotation import AnnotationCounter, AnnotationStats
from napari_sparse_unet.jobs import ViewedSlice, preview_region
from napari_sparse_unet.core.rules import parse_patch_size


def _brute_stats(data: np.ndarray) -> tuple[dict[int, int], dict[int, int], int]:
    voxels = {int(v): int((data == v).sum()) for v in np.unique(data) if v != 0}
    slices = {v: int(sum((data[z] == v).any() for z in range(data.shape[0]))) for v in voxels}
    annotated = int(sum(data[z].any() for z in range(data.shape[0])))
    return voxels, slices, annotated


def test_counter_full_then_incremental_matches_a_recount(rng):
    data = np.zeros((20, 16, 16), np.uint8)
    data[3, 2:6, 2:6] = 1
    data[3, 8:10, 8:12] = 2
    data[11] = rng.integers(0, 4, (16, 16))
    counter = AnnotationCounter()
    stats = counter.update(data)
    assert (stats.voxels, stats.slices, stats.annotated_slices) == _brute_stats(data)

    # A stroke on slice 15 and an erase on slice 3: only those slices are marked.
    data[15, 0:3, 0:3] = 3
    data[3] = 0
    counter.mark_slices([15])
    counter.mark_range(3, 4)
    stats = counter.update(data)
    assert (stats.voxels, stats.slices, stats.annotated_slices) == _brute_stats(data)
    assert not counter.pending


def test_counter_only_recounts_marked_slices():
    data = np.zeros((4, 8, 8), np.uint8)
    counter = AnnotationCounter()
    counter.update(data)
    data[2, 0, 0] = 1  # not marked: the counter must not have looked
    assert counter.update(data).voxels == {}
    counter.mark_slices([2])
    assert counter.update(data).voxels == {1: 1}


def test_counter_2d_has_no_slices():
    data = np.zeros((10, 12), np.uint16)
    data[1, 1] = 1
    data[5, 2:4] = 300
    stats = AnnotationCounter().update(data)
    assert stats.voxels == {1: 1, 300: 2}
    assert stats.slices == {} and stats.ndim == 2


@pytest.mark.parametrize(
    ("voxels", "expected"),
    [
        ({}, "nothing painted"),
        ({2: 10}, "paint some background (label 1) too"),
        ({1: 10}, "paint at least one class"),
        ({1: 10, 2: 3}, None),
        ({-1: 2, 1: 3, 2: 3}, "≥ 0"),
    ],
)
def test_stats_problem_says_what_is_missing(voxels, expected):
    problem = AnnotationStats(ndim=3, voxels=voxels, annotated_slices=2).problem()
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_stats_hint_for_a_single_slice():
    stats = AnnotationStats(ndim=3, voxels={1: 5, 2: 5}, annotated_slices=1)
    assert stats.problem() is None and "more slices" in stats.hint()


@pytest.mark.parametrize(
    ("shape", "view", "depth", "expected"),
    [
        ((20, 8, 8), (0, 10), 4, (slice(8, 12), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (0, 0), 4, (slice(0, 4), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (0, 19), 4, (slice(16, 20), slice(0, 8), slice(0, 8))),
        ((20, 8, 8), (2, 5), 3, (slice(0, 20), slice(0, 8), slice(4, 7))),
        ((3, 8, 8), (0, 1), 16, (slice(0, 3), slice(0, 8), slice(0, 8))),  # patch deeper than the volume
        ((20, 8, 8), None, 4, (slice(8, 12), slice(0, 8), slice(0, 8))),
        ((8, 8), None, 4, (slice(0, 8), slice(0, 8))),
    ],
)
def test_preview_region(shape, view, depth, expected):
    assert preview_region(shape, view, depth) == expected


def test_viewed_slice_holder():
    holder = ViewedSlice()
    assert holder.get() is None
    holder.set((0, 3))
    assert holder.get() == (0, 3)


@pytest.mark.parametrize(
    ("text", "dims", "expected"),
    [("auto", 3, None), ("", 3, None), ("48", 3, (48, 48, 48)), ("16, 64,64", 3, (16, 64, 64)),
     ("16x32x32", 3, (16, 32, 32)), ("64", 2, (64, 64))],
)
def test_parse_patch_size(text, dims, expected):
    assert parse_patch_size(text, dims) == expected


@pytest.mark.parametrize("text", ["big", "16,16", "0,8,8"])
def test_parse_patch_size_rejects(text):
    with pytest.raises(ValueError, match="patch size"):
        parse_patch_size(text, 3)


