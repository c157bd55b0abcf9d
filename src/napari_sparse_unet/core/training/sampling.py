"""Training patches drawn around annotated voxels, with augmentation.

With a few painted slices a uniformly random patch usually holds no label at
all, so every patch is centred (with jitter) on an annotated voxel of a class
chosen uniformly among the annotated classes.  Image patches are
(C, *patch), target patches (*patch) with class indices and -1 = not annotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class TrainingVolume:
    """One training image with its target.

    Attributes:
        image: (C, *spatial) raw array-like, any dtype.
        target: (*spatial) int16 class index, -1 where not annotated.
    """

    image: Any
    target: np.ndarray

    def class_indices(self, num_classes: int) -> list[np.ndarray]:
        """Flat indices of the voxels of each class."""
        flat = self.target.ravel()
        return [np.flatnonzero(flat == k) for k in range(num_classes)]


def reflect_indices(start: int, size: int, dim: int) -> np.ndarray:
    """Indices start..start+size-1 mirrored into [0, dim) (numpy's "reflect" padding)."""
    index = np.arange(start, start + size)
    if dim == 1:
        return np.zeros_like(index)
    period = 2 * (dim - 1)
    index = np.mod(index, period)
    return np.where(index < dim, index, period - index)


def crop_with_padding(array: Any, start: Sequence[int], size: Sequence[int], fill: float | None) -> np.ndarray:
    """array[..., start:start+size] over the trailing spatial axes, padded where it leaves the array.

    ``fill`` None pads by reflection, else with the constant.  Only the needed
    block is read, so ``array`` may be any sliceable array-like (zarr, memmap).
    """
    spatial = array.shape[-len(size):]
    lead = array.ndim - len(size)
    inside = [(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, spatial)]
    if fill is not None:
        out = np.full(tuple(array.shape[:lead]) + tuple(size), fill, dtype=array.dtype)
        if all(lo < hi for lo, hi in inside):
            dst = tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(inside, start))
            out[(Ellipsis, *dst)] = array[(Ellipsis, *(slice(lo, hi) for lo, hi in inside))]
        return out
    indices = [reflect_indices(s, n, d) for s, n, d in zip(start, size, spatial)]
    block = np.asarray(array[(Ellipsis, *(slice(int(i.min()), int(i.max()) + 1) for i in indices))])
    for axis, index in enumerate(indices):
        if index[0] != index.min() or np.any(np.diff(index) != 1):
            block = np.take(block, index - index.min(), axis=lead + axis)
    return block


class PatchSampler:
    """Draws class-balanced, augmented patches from annotated volumes.

    Args:
        volumes: training volumes.
        patch_size: spatial patch shape.
        num_classes: K.
        normalize: (C, *patch) raw -> float32 normalised image.
        rng: the source of randomness (seed it for reproducible runs).
        augment: flips, in-plane 90° rotations, intensity scale/shift/gamma/noise.
        halo: image voxels read beyond the patch on each side, per axis (the
            network's filter bank consumes them): images are (C, *(patch + 2·halo)).
        intensity_strength: scales the intensity augmentation (0 = none).
        level_mask: when the images are filter features, which of them follow the
            intensity level (see :meth:`.filters.FilterBank.level_mask`).
    """

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        patch_size: Sequence[int],
        num_classes: int,
        normalize: Callable[[np.ndarray], np.ndarray],
        rng: np.random.Generator,
        augment: bool = True,
        halo: Sequence[int] | None = None,
        intensity_strength: float = 1.0,
        level_mask: np.ndarray | None = None,
    ) -> None:
        self.intensity_strength = float(intensity_strength)
        self.level_mask = level_mask
        self.volumes = list(volumes)
        self.halo = tuple(int(h) for h in halo) if halo is not None else (0,) * len(patch_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.normalize = normalize
        self.rng = rng
        self.augment = augment
        self.indices = [v.class_indices(num_classes) for v in self.volumes]
        per_class = np.array([[len(ix[k]) for k in range(num_classes)] for ix in self.indices], dtype=np.float64)
        self.class_counts = per_class.sum(0).astype(np.int64)
        self.classes = np.flatnonzero(self.class_counts > 0)
        if len(self.classes) == 0:
            raise ValueError("no annotated voxel to sample patches from")
        # For each class, which volume to draw from: in proportion to its voxels of that class.
        self.volume_weights = per_class / np.maximum(per_class.sum(0, keepdims=True), 1)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (image (C, *patch) float32, target (*patch) int64) pair."""
        k = int(self.rng.choice(self.classes))
        v = int(self.rng.choice(len(self.volumes), p=self.volume_weights[:, k]))
        volume = self.volumes[v]
        flat = self.indices[v][k][self.rng.integers(len(self.indices[v][k]))]
        centre = np.unravel_index(flat, volume.target.shape)
        start = []
        for c, p, dim in zip(centre, self.patch_size, volume.target.shape):
            # The annotated voxel lands anywhere in the middle half of the patch, even
            # where that puts part of the patch outside the volume (padded).  Clamping
            # the patch inside would pin painted slices to a few fixed positions in it
            # (one, when the patch spans the whole axis), and the network would learn
            # to be right only there: pooling makes it shift-invariant only by 2^depth.
            offset = int(self.rng.integers(p // 4, p - p // 4 + 1)) if p > 1 else 0
            start.append(int(c) - offset)
        image_start = [s - h for s, h in zip(start, self.halo)]
        image_size = [p + 2 * h for p, h in zip(self.patch_size, self.halo)]
        image = self.normalize(crop_with_padding(volume.image, image_start, image_size, fill=None))
        target = crop_with_padding(volume.target, start, self.patch_size, fill=-1).astype(np.int64)
        if self.augment:
            image, target = self._geometric(image, target)
            image = self._intensity(image)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, *patch) float32 images and (N, *patch) int64 targets."""
        pairs = [self.sample() for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _geometric(self, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dims = target.ndim
        for axis in range(dims):
            if self.rng.random() < 0.5:
                image = np.flip(image, axis + 1)
                target = np.flip(target, axis)
        # 90° turns in the (Y, X) plane keep the shape only for square patches (and halos).
        square = target.shape[-1] == target.shape[-2] and image.shape[-1] == image.shape[-2]
        turns = int(self.rng.integers(4)) if square else 2 * int(self.rng.integers(2))
        if turns:
            image = np.rot90(image, turns, axes=(-2, -1))
            target = np.rot90(target, turns, axes=(-2, -1))
        return image, target

    def _intensity(self, image: np.ndarray) -> np.ndarray:
        """Random gamma, contrast, brightness and noise, scaled by ``intensity_strength`` (0 = none)."""
        strength = self.intensity_strength
        image = np.array(image, dtype=np.float32)
        if strength <= 0:
            return image
        if self.level_mask is not None:
            # Filter features: only what keeps them the features of some image,
            # contrast (scales all) and brightness (shifts the level features).
            image *= float(np.exp(self.rng.uniform(-0.22, 0.22) * strength))
            image[self.level_mask] += self.rng.uniform(-0.1, 0.1) * strength
            return image
        for c in range(image.shape[0]):
            channel = image[c]
            if self.rng.random() < 0.3:
                lo, hi = float(channel.min()), float(channel.max())
                if hi > lo:
                    gamma = float(np.exp(self.rng.uniform(np.log(0.7), np.log(1.5)) * strength))
                    channel[...] = lo + (hi - lo) * ((channel - lo) / (hi - lo)) ** gamma
            channel *= float(np.exp(self.rng.uniform(-0.22, 0.22) * strength))
            channel += self.rng.uniform(-0.1, 0.1) * strength
            if self.rng.random() < 0.2:
                channel += self.rng.normal(0.0, self.rng.uniform(0.0, 0.05) * strength, channel.shape).astype(np.float32)
        return image

