"""Scans of images and annotations, the label convention and intensity normalisation.

What input is valid is decided in :mod:`.rules`.

Axis order: images are channel-first, (C, Z, Y, X) for volumes and (C, Y, X)
for 2-D images; annotations have the spatial shape only.

Label convention (ilastik's): in an annotation 0 = not annotated, 1 =
background, 2.. = classes.  A model keeps ``class_values``, the annotation
value of each network class, with ``class_values[0] == 1``.  Predictions show
background as 0 and every other class with the value the user painted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError

# Voxels read per step when scanning big arrays, so checks never hold a float copy.
_CHUNK_VOXELS = 1 << 22


def _shape(array: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in array.shape)


def check_finite(image: Any) -> None:
    """Raise :class:`InputError` if a floating-point image holds NaN or Inf.

    Scans in chunks along the first axis so no whole-volume copy is made.
    """
    dtype = np.dtype(image.dtype)
    if not np.issubdtype(dtype, np.floating) and not np.issubdtype(dtype, np.complexfloating):
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise InputError(f"image has unsupported dtype {dtype}; a numeric image was expected")
        return
    bad = 0
    for chunk in _iter_chunks(image):
        bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    if bad:
        raise InputError(f"image contains NaN or Inf values ({bad} voxels); replace them before training or predicting")


def _iter_chunks(array: Any):
    """Yield numpy blocks of ``array`` along its first axis."""
    shape = _shape(array)
    if not shape:
        yield np.asarray(array)
        return
    per_row = max(1, int(np.prod(shape[1:])))
    step = max(1, _CHUNK_VOXELS // per_row)
    for start in range(0, shape[0], step):
        yield np.asarray(array[start : start + step])


def annotation_counts(annotation: Any) -> dict[int, int]:
    """Number of voxels per annotation value, 0 (not annotated) excluded."""
    counts: dict[int, int] = {}
    for chunk in _iter_chunks(annotation):
        values, n = np.unique(chunk, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            if v != 0:
                counts[int(v)] = counts.get(int(v), 0) + int(c)
    return counts


def label_lut(class_values: Sequence[int]) -> np.ndarray:
    """Map network class index -> output label value (background -> 0).

    The dtype is uint8 when every value fits, else uint16.
    """
    values = [0, *[int(v) for v in class_values[1:]]]
    dtype = np.uint8 if max(values) < 256 else np.uint16
    return np.asarray(values, dtype=dtype)


def annotation_to_target(annotation: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """Annotation values -> class indices (int64), -1 where not annotated or unknown."""
    lut_size = max(int(max(class_values)), int(annotation.max(initial=0))) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    lut[list(class_values)] = np.arange(len(class_values))
    return lut[np.clip(annotation, 0, None).astype(np.int64)]


@dataclass(frozen=True)
class Normalization:
    """Robust per-channel intensity scaling: ``(x - low) / (high - low)``.

    ``low``/``high`` are the 0.5th/99.5th percentiles of the training images,
    so a few saturated or dead voxels do not set the scale.  Values outside
    are not clipped: bright objects stay brighter than the 99.5th percentile.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.low)

    def apply(self, image_cf: Any) -> np.ndarray:
        """(C, *spatial) any dtype -> float32 of the same shape."""
        x = np.asarray(image_cf, dtype=np.float32)
        if x.shape[0] != self.channels:
            raise InputError(f"image has {x.shape[0]} channels but the model expects {self.channels}")
        low = np.asarray(self.low, np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        scale = 1.0 / np.maximum(np.asarray(self.high, np.float32) - np.asarray(self.low, np.float32), 1e-6)
        return (x - low) * scale.reshape(low.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        return cls(low=tuple(float(v) for v in data["low"]), high=tuple(float(v) for v in data["high"]))


def fit_normalization(images_cf: Sequence[Any], max_samples: int = 2_000_000, seed: int = 0) -> Normalization:
    """Percentiles per channel over all training images, from a random voxel sample."""
    rng = np.random.default_rng(seed)
    channels = _shape(images_cf[0])[0]
    samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for image in images_cf:
        if _shape(image)[0] != channels:
            raise InputError(f"all images must have the same number of channels, got {channels} and {_shape(image)[0]}")
        arr = np.asarray(image)
        flat = arr.reshape(channels, -1)
        n = flat.shape[1]
        take = min(n, max_samples // len(images_cf))
        index = rng.choice(n, size=take, replace=False) if take < n else slice(None)
        for c in range(channels):
            samples[c].append(flat[c, index].astype(np.float64))
    low, high = [], []
    for c in range(channels):
        values = np.concatenate(samples[c])
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi - lo <= 0:  # constant or almost constant channel: fall back to min/max
            lo, hi = float(values.min()), float(values.max())
            if hi - lo <= 0:
                hi = lo + 1.0
        low.append(float(lo))
        high.append(float(hi))
    return Normalization(low=tuple(low), high=tuple(high))
