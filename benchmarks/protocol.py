"""The sparse-annotation protocol of ``../shared/data/README.md`` and its scoring.

numpy (+ tifffile to read the volumes) only, so tests and any benchmark can reuse it.
Arrays are (Z, Y, X).  Two label conventions meet here:

* ground truth: 0 .. K-1, class 0 = background (cell interior for EM and ovule);
* plugin: annotation 0 = not annotated, ``gt + 1`` elsewhere (1 = background);
  a prediction shows background as 0 and class ``c >= 1`` as ``c + 1``.

:func:`to_ground_truth` maps a plugin prediction back to ground-truth classes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AXIS_NAMES = "zyx"
# The repository sits next to the shared data: <root>/../shared/data.
DATA_DIR = Path(os.environ.get("NSU_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Slices to annotate, per axis: {axis: (index, ...)}.
Plan = Mapping[int, Sequence[int]]


@dataclass(frozen=True)
class Volume:
    """One benchmark volume: image (Z, Y, X) or (C, Z, Y, X) and dense ground truth (Z, Y, X)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    class_names: tuple[str, ...]  # index = ground-truth class

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def center_crop(array: np.ndarray, shape: Sequence[int | None]) -> np.ndarray:
    """Central crop of the trailing ``len(shape)`` axes; ``None`` or a size >= the array's keeps that axis whole."""
    lead = array.ndim - len(shape)
    index: list[slice] = [slice(None)] * lead
    for size, want in zip(array.shape[lead:], shape):
        want = size if want is None else min(int(want), size)
        start = (size - want) // 2
        index.append(slice(start, start + want))
    return array[tuple(index)]


def load_volume(name: str, data_dir: Path = DATA_DIR, crop: Sequence[int | None] | None = None) -> Volume:
    """Read ``data_dir/name/{image,labels}.tif`` and ``meta.json``; optionally centre-cropped."""
    import tifffile

    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark volume {name!r} not found at {folder}")
    meta = json.loads((folder / "meta.json").read_text())
    image = tifffile.imread(folder / "image.tif")
    labels = tifffile.imread(folder / "labels.tif")
    if image.shape[-labels.ndim:] != labels.shape or image.ndim > labels.ndim + 1:
        raise ValueError(f"{name}: image {image.shape} (channels first, if any) and labels {labels.shape} differ")
    spacing_key = next(key for key in meta if key.startswith("spacing_zyx"))
    classes = meta["classes"]
    class_names = tuple(classes[str(i)] for i in range(len(classes)))
    if crop is not None:
        image, labels = center_crop(image, crop), center_crop(labels, crop)
    return Volume(name, np.ascontiguousarray(image), np.ascontiguousarray(labels),
                  tuple(float(s) for s in meta[spacing_key]), class_names)


def choose_slices(size: int, k: int, margin: float = 0.1) -> list[int]:
    """``k`` evenly spaced indices in an axis of ``size``, skipping the outer ``margin`` at each end.

    ``ceil(margin * size)`` indices are skipped at each end; the first and last chosen
    slices sit on the edges of what remains (k = 1: its middle).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    skip = math.ceil(margin * size - 1e-9)
    low, high = skip, size - 1 - skip
    if high - low + 1 < k:
        raise ValueError(f"cannot choose {k} slices from an axis of {size} after skipping {skip} at each end")
    if k == 1:
        return [(low + high) // 2]
    # Steps are >= 1 apart, so rounding half up keeps the indices distinct.
    return [int(math.floor(p + 0.5)) for p in np.linspace(low, high, k)]


def spread_over_axes(k: int, ndim: int = 3) -> tuple[int, ...]:
    """Split ``k`` slices over ``ndim`` axes, the remainder to the first axes (5 -> 2, 2, 1)."""
    return tuple(k // ndim + (1 if axis < k % ndim else 0) for axis in range(ndim))


def make_plan(shape: Sequence[int], per_axis: Sequence[int], margin: float = 0.1) -> dict[int, list[int]]:
    """Slices to annotate: ``per_axis[a]`` slices along axis ``a`` (0 = none)."""
    return {axis: choose_slices(shape[axis], n, margin) for axis, n in enumerate(per_axis) if n > 0}


def plan_name(plan: Plan) -> str:
    """Short description, e.g. ``k5-z`` or ``k5-2z2y1x``."""
    k = sum(len(s) for s in plan.values())
    if len(plan) == 1:
        (axis,) = plan
        return f"k{k}-{AXIS_NAMES[axis]}"
    return f"k{k}-" + "".join(f"{len(plan[a])}{AXIS_NAMES[a]}" for a in sorted(plan))


def label_dtype(max_value: int) -> np.dtype:
    return np.dtype(np.uint8) if max_value < 256 else np.dtype(np.uint16)


def sparse_annotation(labels: np.ndarray, plan: Plan) -> np.ndarray:
    """Annotation in the plugin's convention: 0 everywhere, ``labels + 1`` on the planned slices."""
    annotation = np.zeros(labels.shape, label_dtype(int(labels.max()) + 1))
    for axis, slices in plan.items():
        index: list = [slice(None)] * labels.ndim
        index[axis] = list(slices)
        annotation[tuple(index)] = labels[tuple(index)].astype(annotation.dtype) + 1
    return annotation


def dense_annotation(labels: np.ndarray) -> np.ndarray:
    """Every voxel annotated: ``labels + 1``."""
    return labels.astype(label_dtype(int(labels.max()) + 1)) + 1


def to_ground_truth(prediction: np.ndarray) -> np.ndarray:
    """Plugin prediction (0 = background, ``c + 1`` = class c) -> ground-truth classes."""
    prediction = np.asarray(prediction)
    # Value 1 would be background painted as such; treat it as background too.
    return np.where(prediction >= 2, prediction - 1, 0).astype(label_dtype(int(prediction.max(initial=0))))


def split_axis(shape: Sequence[int]) -> int:
    """Axis to cut in two for the fully automated setting: the longest (first of ties).

    Z for none of ours: a z-thin EM stack is cut in Y, the CT left/right in X.
    """
    return int(np.argmax(shape))


def halves(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of ``array`` along spatial ``axis`` (the second gets the odd voxel).

    ``axis`` counts from the first of the three trailing spatial axes, so a channel-first
    (C, Z, Y, X) image is cut like its (Z, Y, X) labels.
    """
    axis += max(0, array.ndim - 3)
    middle = array.shape[axis] // 2
    first = [slice(None)] * array.ndim
    second = [slice(None)] * array.ndim
    first[axis], second[axis] = slice(0, middle), slice(middle, None)
    return array[tuple(first)], array[tuple(second)]


def train_and_predict_parts(image: np.ndarray, labels: np.ndarray, unseen_half: bool):
    """(train image, predict image, train labels, truth, split axis) of a setting.

    Semi-automated (``unseen_half`` False): one volume for all four, axis None.
    Fully automated: the first half along :func:`split_axis` to train on, the second to predict and score.
    """
    if not unseen_half:
        return image, image, labels, labels, None
    axis = split_axis(labels.shape)
    train_image, predict_image = halves(image, axis)
    train_labels, truth = halves(labels, axis)
    return train_image, predict_image, train_labels, truth, axis


def confusion(truth: np.ndarray, prediction: np.ndarray, num_classes: int, mask: np.ndarray | None = None) -> np.ndarray:
    """(K, K) counts, rows = truth, columns = prediction, over ``mask`` (all voxels if None)."""
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    t = truth[mask] if mask is not None else truth.ravel()
    p = prediction[mask] if mask is not None else prediction.ravel()
    if t.size and (int(t.max()) >= num_classes or int(p.max()) >= num_classes):
        raise ValueError(f"class values must be < {num_classes}")
    counts = np.bincount(t.astype(np.int64) * num_classes + p.astype(np.int64), minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def dice_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class Dice 2|P∩T| / (|P| + |T|); NaN where a class is in neither."""
    matrix = np.asarray(matrix, dtype=np.float64)
    overlap = np.diag(matrix)
    total = matrix.sum(axis=0) + matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * overlap / np.where(total > 0, total, 1), np.nan)


def mean_foreground(dice: Sequence[float]) -> float:
    """Mean Dice over classes >= 1 that are defined (NaN if none is)."""
    values = np.asarray(dice, dtype=np.float64)[1:]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


@dataclass(frozen=True)
class Score:
    dice: tuple[float, ...]  # per ground-truth class, NaN = absent from truth and prediction
    mean_foreground: float
    scored_voxels: int

    def to_dict(self) -> dict:
        return {"dice": [nan_to_none(d) for d in self.dice],
                "mean_fg_dice": nan_to_none(self.mean_foreground), "scored_voxels": self.scored_voxels}


def score(truth: np.ndarray, prediction: np.ndarray, num_classes: int, mask: np.ndarray | None = None) -> Score:
    """Dice per class and mean foreground Dice of ground-truth-class arrays over ``mask``."""
    matrix = confusion(truth, prediction, num_classes, mask)
    dice = dice_from_confusion(matrix)
    return Score(tuple(float(d) for d in dice), mean_foreground(dice), int(matrix.sum()))


def unannotated(annotation: np.ndarray) -> np.ndarray:
    """Mask of the voxels the protocol scores."""
    return annotation == 0


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN; store None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
