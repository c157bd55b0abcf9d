"""Instances from a semantic prediction: one label per object of a chosen class.

Two methods, both from scipy / scikit-image:

* ``components``: connected components (face connectivity) of the class mask;
* ``watershed``: a seeded watershed that splits touching objects.  The
  landscape is the Euclidean distance to the object's border (in units of the
  finest voxel spacing, anisotropy respected) or the class probability
  (smoothed); seeds are its h-maxima, so one object gets one seed unless it
  has a neck deeper than ``seed_depth``.

Objects smaller than ``min_size`` voxels are removed and the rest numbered
1..N.  Axis order: (Z, Y, X) or (Y, X); the output has the input's shape.

Memory: whole-volume arrays are the class mask (bool, 1 byte/voxel), its
connected components and the output (int32, 4 + 4 bytes/voxel).  The
watershed works one component at a time inside its bounding box, so its
float64 landscape, seeds and scratch (roughly 50 bytes/voxel, estimated from
the dtypes) exist only for the largest component's box, never for the whole
volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rules import check_instance_settings

INSTANCE_METHODS: tuple[str, ...] = ("watershed", "components")
LANDSCAPES: tuple[str, ...] = ("distance", "probability")
# h of the h-maxima per landscape: voxels of distance, or probability.
DEFAULT_SEED_DEPTH = {"distance": 2.0, "probability": 0.2}


@dataclass(frozen=True)
class InstanceConfig:
    """How to make instances of ``class_value`` (a painted value, 2 or more).

    ``seed_depth`` is the h of the h-maxima seeding the watershed (None: 2 voxels
    for the distance landscape, 0.2 for the probability).  Validated when made.
    """

    class_value: int
    method: str = "watershed"
    landscape: str = "distance"
    min_size: int = 0
    seed_depth: float | None = None

    def __post_init__(self) -> None:
        check_instance_settings(self.method, INSTANCE_METHODS, self.landscape, LANDSCAPES, self.min_size, self.seed_depth)

    @property
    def needs_probability(self) -> bool:
        return self.method == "watershed" and self.landscape == "probability"

    @property
    def depth(self) -> float:
        return float(self.seed_depth) if self.seed_depth is not None else DEFAULT_SEED_DEPTH[self.landscape]


def _structure(ndim: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(ndim, 1)


def _watershed_box(
    mask: np.ndarray, landscape: Callable[[tuple[slice, ...], np.ndarray], np.ndarray], box: tuple[slice, ...], depth: float
) -> np.ndarray:
    """int32 labels 1..n of one component's bounding box (0 outside the component)."""
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    height = landscape(box, mask)
    seeds = h_maxima(height, depth) & mask
    markers, count = ndimage.label(seeds, structure=np.ones((3,) * mask.ndim, bool))
    if count <= 1:
        return mask.astype(np.int32)
    return watershed(-height, markers, mask=mask, connectivity=1).astype(np.int32)


def _distance(spacing: Sequence[float] | None) -> Callable[[tuple[slice, ...], np.ndarray], np.ndarray]:
    from scipy import ndimage

    def height(box: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
        sampling = None if spacing is None else np.asarray(spacing, float) / float(min(spacing))
        # Padding keeps the box border from counting as the object's border.
        padded = np.pad(mask, 1, constant_values=False)
        return ndimage.distance_transform_edt(padded, sampling=sampling)[(slice(1, -1),) * mask.ndim]

    return height


def _probability(probability: Any) -> Callable[[tuple[slice, ...], np.ndarray], np.ndarray]:
    from scipy import ndimage

    def height(box: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
        p = np.asarray(probability[box], dtype=np.float64)
        # A little smoothing removes single-voxel maxima that would each seed an object.
        return np.where(mask, ndimage.gaussian_filter(p, 1.0), 0.0)

    return height


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` voxels and renumber the rest 1..N (in place when possible)."""
    from skimage.segmentation import relabel_sequential

    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


def segment_instances(
    labels: Any,
    config: InstanceConfig,
    *,
    probability: Any = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """int32 instances (0 = none, 1..N = objects) of ``config.class_value`` in ``labels``.

    Args:
        labels: predicted labels (*spatial), painted values (background 0).
        config: method, landscape, minimum size.
        probability: the class's probability (*spatial), any float dtype;
            needed for the probability landscape only.
        spacing: voxel size per axis, for the distance landscape.
    """
    from scipy import ndimage

    mask = np.asarray(labels) == config.class_value
    structure = _structure(mask.ndim)
    components, count = ndimage.label(mask, structure=structure, output=np.int32)
    if config.method == "components" or count == 0:
        return remove_small(components, config.min_size)
    if config.needs_probability and probability is None:
        raise ValueError("the probability landscape needs the class probability")
    height = _probability(probability) if config.landscape == "probability" else _distance(spacing)
    out = np.zeros(mask.shape, dtype=np.int32)
    next_label = 0
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == index
        if inside.sum() < max(config.min_size, 2):
            pieces = inside.astype(np.int32)
        else:
            pieces = _watershed_box(inside, height, box, config.depth)
        found = pieces > 0
        out[box][found] = pieces[found] + next_label
        next_label += int(pieces.max())
    return remove_small(out, config.min_size)


class ClassProbabilityWriter:
    """Slab hook keeping one class's probability as float16 (2 bytes/voxel) for the watershed.

    Called by the prediction with ``(rows, probabilities)``: ``rows`` a slice of
    axis 0, ``probabilities`` (K, n, ...) float32 of the finished slab.
    """

    def __init__(self, spatial_shape: Sequence[int], class_index: int) -> None:
        self.class_index = int(class_index)
        self.out = np.zeros(tuple(int(s) for s in spatial_shape), dtype=np.float16)

    def __call__(self, rows: slice, probabilities: np.ndarray) -> None:
        self.out[rows] = probabilities[self.class_index]
