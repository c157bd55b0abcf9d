"""A fixed bank of Gaussian-derivative filters: the network's first layer.

A random forest on ilastik's filter features learns a first segmentation in
seconds because smoothing, edges and blobs at several scales are handed to it.
The U-Net gets the same head start: its input is the raw intensity plus, per
channel and scale σ, the Gaussian-smoothed intensity, the gradient magnitude
and the Laplacian of Gaussian.  The filters are fixed (nothing to learn) and
reach far beyond a thin training patch, so they give z-context cheaply.

The filters are *valid* convolutions: the input carries a halo of
:attr:`FilterBank.halo` voxels per side that the output no longer has.  Training
patches and prediction tiles are both read from the volume with that halo
(mirrored at the volume border), so every voxel gets exactly the same features
whichever patch or tile it sits in.

Tensors are (N, C, D, H, W) (or (N, C, H, W) in 2-D); σ tuples are per spatial
axis, in voxels, array order.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# An axis whose σ falls below this many voxels is neither smoothed nor
# differentiated (a Gaussian that narrow is a delta on the grid): ilastik's
# "2-D features" for coarse-Z stacks.
MIN_AXIS_SIGMA = 0.3
# Kernels reach this many σ each side.
TRUNCATE = 3.0
# Features per input channel: raw, then (smoothed, gradient magnitude, LoG) per scale.
FEATURES_PER_SCALE = 3


def axis_sigmas(
    scales: Sequence[float], spacing: Sequence[float] | None, spatial_dims: int
) -> tuple[tuple[float, ...], ...]:
    """Per-scale, per-axis σ in voxels for scales given in units of the finest spacing (0 = axis not filtered)."""
    spacing = (1.0,) * spatial_dims if spacing is None else tuple(float(s) for s in spacing)
    finest = min(spacing)
    out = []
    for scale in scales:
        sigmas = tuple(float(scale) * finest / s for s in spacing)
        out.append(tuple(round(s, 4) if s >= MIN_AXIS_SIGMA else 0.0 for s in sigmas))
    return tuple(out)


def _radius(sigma: float) -> int:
    return int(math.ceil(TRUNCATE * sigma)) if sigma > 0 else 0


def filter_halo(sigmas: Sequence[Sequence[float]], spatial_dims: int) -> tuple[int, ...]:
    """Voxels of input needed beyond the output on each side, per axis."""
    if not sigmas:
        return (0,) * spatial_dims
    return tuple(max(_radius(s[a]) for s in sigmas) for a in range(spatial_dims))


def gaussian_kernels(sigma: float) -> np.ndarray:
    """(3, 2r + 1) float64: the sampled Gaussian and its first and second derivatives.

    The smoothing kernel sums to 1, the first derivative has unit response to a
    ramp and the second zero response to a constant, as for continuous kernels.
    """
    r = _radius(sigma)
    if r == 0:
        return np.array([[1.0], [0.0], [0.0]])
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    d1 = -x / sigma**2 * g
    d1 /= -(x * d1).sum()
    d2 = (x**2 / sigma**4 - 1 / sigma**2) * g
    d2 -= d2.mean()
    d2 /= 0.5 * (x**2 * d2).sum()
    return np.stack([g, -d1, d2])


class FilterBank(nn.Module):
    """(N, C, *(out + 2·halo)) -> (N, C·(1 + 3·S), *out): raw, smoothed, |gradient|, LoG per scale.

    Derivatives are scale-normalised (× σ and × σ²), so one scale's features are
    comparable to another's.  Kernels are buffers rebuilt from ``sigmas``, not
    saved weights.
    """

    def __init__(self, sigmas: Sequence[Sequence[float]], spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.sigmas = tuple(tuple(float(v) for v in s) for s in sigmas)
        self.halo = filter_halo(self.sigmas, spatial_dims)
        for i, sigma in enumerate(self.sigmas):
            for axis, s in enumerate(sigma):
                self.register_buffer(f"k{i}_{axis}", torch.from_numpy(gaussian_kernels(s)).float(), persistent=False)

    @property
    def features_per_channel(self) -> int:
        return 1 + FEATURES_PER_SCALE * len(self.sigmas)

    def _along(self, x: torch.Tensor, kernels: torch.Tensor, axis: int) -> torch.Tensor:
        """Valid 1-D convolutions along spatial ``axis``: (M, 1, *s) -> (M, len(kernels), *s').

        One convolution with several output kernels: oneDNN runs that several
        times faster per kernel than one single-kernel convolution each.
        """
        shape = [len(kernels), 1] + [1] * self.spatial_dims
        shape[2 + axis] = kernels.shape[-1]
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        return conv(x, kernels.reshape(shape).to(x.dtype))

    def _derivatives(self, x: torch.Tensor, index: int) -> dict[tuple[int, ...], torch.Tensor]:
        """Smoothing, first and pure second Gaussian derivatives of (M, 1, *s) at scale ``index``, by order per axis."""
        sigma = self.sigmas[index]
        # Maps keyed by their derivative order along the axes filtered so far.
        maps: dict[tuple[int, ...], torch.Tensor] = {(): x}
        for axis in range(self.spatial_dims):
            if sigma[axis] == 0:  # not filtered: no smoothing, no derivative along this axis
                maps = {key + (0,): value for key, value in maps.items()}
                continue
            kernels = getattr(self, f"k{index}_{axis}")
            smooth = (0,) * axis
            # Only the map without any derivative yet may take one along this axis (orders 0, 1, 2).
            out = self._along(maps[smooth], kernels, axis)
            new = {smooth + (order,): out[:, order : order + 1] for order in range(3)}
            differentiated = [key for key in maps if any(key)]
            if differentiated:
                m = x.shape[0]
                out = self._along(torch.cat([maps[key] for key in differentiated]), kernels[:1], axis)
                new.update({key + (0,): out[i * m : (i + 1) * m] for i, key in enumerate(differentiated)})
            maps = new
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        dims = self.spatial_dims
        flat = x.reshape(n * c, 1, *x.shape[2:])
        out_shape = [s - 2 * h for s, h in zip(x.shape[2:], self.halo)]
        features = [_crop(flat, self.halo)]
        for i, sigma in enumerate(self.sigmas):
            trim = tuple(h - _radius(s) for h, s in zip(self.halo, sigma))
            maps = self._derivatives(_crop(flat, trim), i)
            active = [a for a in range(dims) if sigma[a] > 0]
            smooth = maps[(0,) * dims]
            scale = max(sigma)
            gradient = [maps[tuple(1 if b == a else 0 for b in range(dims))] for a in active]
            laplace = [maps[tuple(2 if b == a else 0 for b in range(dims))] for a in active]
            if gradient:
                magnitude = torch.sqrt(sum(g * g for g in gradient) + 1e-12) * scale
                log = sum(laplace) * scale**2
            else:
                magnitude = torch.zeros_like(smooth)
                log = torch.zeros_like(smooth)
            features += [smooth, magnitude, log]
        out = torch.cat(features, dim=1)
        assert list(out.shape[2:]) == out_shape, (out.shape, out_shape)
        # (N·C, F, *out) -> (N, C·F, *out), channel-major so channel c's features stay together.
        return out.reshape(n, c * out.shape[1], *out_shape)


def _crop(x: torch.Tensor, margins: Sequence[int]) -> torch.Tensor:
    index = [slice(None), slice(None)] + [slice(m, x.shape[2 + a] - m) for a, m in enumerate(margins)]
    return x[tuple(index)]


def level_feature_mask(channels: int, scales: int) -> np.ndarray:
    """(C·F,) bool: features that follow the intensity level (raw, smoothed), not its derivatives.

    A brightness shift moves these and leaves gradients and Laplacians unchanged.
    """
    per_channel = np.zeros(1 + FEATURES_PER_SCALE * scales, dtype=bool)
    per_channel[0] = True
    per_channel[1::FEATURES_PER_SCALE] = True
    return np.tile(per_channel, channels)


@torch.no_grad()
def filter_volume(bank: FilterBank, image_cf: np.ndarray, slab_voxels: int = 1 << 21, dtype: type = np.float16) -> np.ndarray:
    """Features of a whole normalised (C, *spatial) image: (C·F, *spatial), ``dtype``.

    Computed slab by slab along the first axis with the bank's halo (mirrored at
    the border), so the result equals what the bank gives any tile of the volume.
    """
    spatial = image_cf.shape[1:]
    plane = int(np.prod(spatial[1:]))
    depth = max(1, slab_voxels // max(plane, 1))
    out = np.empty((image_cf.shape[0] * bank.features_per_channel, *spatial), dtype=dtype)
    for z in range(0, spatial[0], depth):
        stop = min(z + depth, spatial[0])
        out[:, z:stop] = filter_slab(bank, image_cf, z, stop)
    return out


def filter_slab(
    bank: FilterBank, image_cf: Any, start: int, stop: int, normalize: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Features (C·F, stop - start, *rest) float32 of planes [start, stop) of a (C, *spatial) image.

    The slab is read with the bank's halo (mirrored at the volume border) and
    ``normalize``-d first when the image is raw.
    """
    from .sampling import crop_with_padding

    halo = bank.halo
    spatial = image_cf.shape[1:]
    size = [stop - start, *spatial[1:]]
    block = crop_with_padding(image_cf, [start - halo[0], *(-h for h in halo[1:])], [s + 2 * h for s, h in zip(size, halo)], fill=None)
    block = normalize(block) if normalize is not None else block
    with torch.no_grad():
        return bank(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None])[0].numpy()
