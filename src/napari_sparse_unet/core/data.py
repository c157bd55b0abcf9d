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

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .checkpoint import SegmentationModel

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


def model_lut(model: SegmentationModel) -> np.ndarray:
    """:func:`label_lut` of a model: its own ``output_lut()`` when it has one, else from its ``class_values``."""
    return model.output_lut() if hasattr(model, "output_lut") else label_lut(model.class_values)


def annotation_to_target(annotation: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """Annotation values -> class indices (int64), -1 where not annotated or unknown."""
    lut_size = max(int(max(class_values)), int(annotation.max(initial=0))) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    lut[list(class_values)] = np.arange(len(class_values))
    return lut[np.clip(annotation, 0, None).astype(np.int64)]


@dataclass(frozen=True)
class Normalization:
    """Per-channel intensity mapping to about [0, 1], fit on the training images.

    Without ``knots``: robust linear scaling ``(x - low) / (high - low)``, with
    ``low``/``high`` the 0.5th/99.5th percentiles (values outside are not clipped).

    With ``knots`` (per channel, increasing intensities at evenly spaced
    quantiles): histogram equalisation, the piecewise-linear map of each
    intensity to its quantile in the training images (below/above the range:
    linear continuation with the outer slope).  Why: where classes differ by a
    few per cent of the intensity range (organs in CT differ by tens of
    Hounsfield units out of thousands), a linear scale leaves them a sliver of
    the input; equalisation spreads the range by how many voxels use it.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    knots: tuple[tuple[float, ...], ...] | None = None

    @property
    def channels(self) -> int:
        return len(self.low)

    def apply(self, image_cf: Any) -> np.ndarray:
        """(C, *spatial) any dtype -> float32 of the same shape."""
        raw = np.asarray(image_cf)
        if raw.shape[0] != self.channels:
            raise InputError(f"image has {raw.shape[0]} channels but the model expects {self.channels}")
        if self.knots is not None and raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
            # Few distinct values: map each once (the same numbers), then look them up (np.interp is slow).
            table = self._table(raw.dtype)
            offset = np.iinfo(raw.dtype).min
            out = np.empty(raw.shape, np.float32)
            for c in range(raw.shape[0]):
                index = raw[c] if offset == 0 else raw[c].astype(np.int32) - offset
                np.take(table[c], index, out=out[c])
            return out
        return self._apply_float(np.asarray(raw, dtype=np.float32))

    @functools.lru_cache(maxsize=8)
    def _table(self, dtype: np.dtype) -> np.ndarray:
        """(C, values) float32: every value of an integer ``dtype`` of at most 16 bits, mapped."""
        info = np.iinfo(dtype)
        values = np.arange(info.min, info.max + 1, dtype=np.float32)
        return self._apply_float(np.broadcast_to(values, (self.channels, len(values))))

    def _apply_float(self, x: np.ndarray) -> np.ndarray:
        if self.knots is not None:
            out = np.empty_like(x)
            for c, knots in enumerate(self.knots):
                xp = np.asarray(knots, dtype=np.float64)
                fp = np.linspace(0.0, 1.0, len(xp))
                out[c] = np.interp(x[c], xp, fp)
                # Beyond the training range keep the outer slopes, so very bright objects stay distinct.
                low_slope = (fp[1] - fp[0]) / max(xp[1] - xp[0], 1e-6)
                high_slope = (fp[-1] - fp[-2]) / max(xp[-1] - xp[-2], 1e-6)
                below, above = x[c] < xp[0], x[c] > xp[-1]
                out[c][below] = (x[c][below] - xp[0]) * low_slope
                out[c][above] = 1.0 + (x[c][above] - xp[-1]) * high_slope
            return out
        low = np.asarray(self.low, np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        scale = 1.0 / np.maximum(np.asarray(self.high, np.float32) - np.asarray(self.low, np.float32), 1e-6)
        return (x - low) * scale.reshape(low.shape)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"low": list(self.low), "high": list(self.high)}
        if self.knots is not None:
            data["knots"] = [list(k) for k in self.knots]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        knots = data.get("knots")
        return cls(
            low=tuple(float(v) for v in data["low"]),
            high=tuple(float(v) for v in data["high"]),
            knots=None if knots is None else tuple(tuple(float(v) for v in k) for k in knots),
        )


def _equalisation_knots(values: np.ndarray, count: int) -> tuple[float, ...]:
    """Intensities at ``count`` evenly spaced quantiles, made strictly increasing.

    Repeated quantiles (integer images, a large constant background) are
    merged; at least two knots always remain.
    """
    knots = np.quantile(values, np.linspace(0.0, 1.0, count))
    unique = np.unique(knots)
    if len(unique) < 2:
        unique = np.array([unique[0], unique[0] + 1.0])
    # The remaining knots are spread evenly over [0, 1] by Normalization.apply.
    return tuple(float(v) for v in unique)


def fit_normalization(
    images_cf: Sequence[Any], max_samples: int = 2_000_000, seed: int = 0, equalize: bool = False, knots: int = 129
) -> Normalization:
    """Percentiles (and, with ``equalize``, histogram knots) per channel over all training images, from a random voxel sample."""
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
    low, high, channel_knots = [], [], []
    for c in range(channels):
        values = np.concatenate(samples[c])
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi - lo <= 0:  # constant or almost constant channel: fall back to min/max
            lo, hi = float(values.min()), float(values.max())
            if hi - lo <= 0:
                hi = lo + 1.0
        low.append(float(lo))
        high.append(float(hi))
        if equalize:
            channel_knots.append(_equalisation_knots(values, knots))
    return Normalization(low=tuple(low), high=tuple(high), knots=tuple(channel_knots) if equalize else None)
