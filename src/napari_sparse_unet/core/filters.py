"""A fixed bank of Gaussian-derivative filters: the network's first layer.

A random forest on ilastik's filter features learns a first segmentation in
seconds because smoothing, edges and blobs at several scales are handed to it.
The U-Net gets the same head start: its input is the raw intensity plus, per
channel and scale σ, the Gaussian-smoothed intensity, the gradient magnitude,
the Laplacian of Gaussian and (with ``hessian``) the eigenvalues of the
Hessian of Gaussian, which tell ridges, sheets and blobs apart whatever their
orientation.  *Context* scales add the smoothed intensity alone at wide σ:
where in the body or tissue a voxel lies (CT organs of alike density) without
the wide derivatives, whose shapes of far-off structures misled the classifiers
on thin ones (EM membranes).  The filters are fixed (nothing to learn) and
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
# Features per scale before the Hessian eigenvalues: smoothed, gradient magnitude, LoG.
BASIC_FEATURES_PER_SCALE = 3


# The structure tensor averages gradient products over this fraction of the scale (ilastik's outer scale).
STRUCTURE_TENSOR_OUTER = 0.5


def features_per_scale(spatial_dims: int, hessian: bool, structure_tensor: bool = False) -> int:
    """Features per input channel and scale: 3, plus one eigenvalue per spatial axis of the Hessian and of the structure tensor."""
    return BASIC_FEATURES_PER_SCALE + spatial_dims * (int(hessian) + int(structure_tensor))


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


def _outer_radius(sigma: float) -> int:
    """Extra reach of the structure tensor's averaging beyond its gradients' (σ · STRUCTURE_TENSOR_OUTER)."""
    return _radius(STRUCTURE_TENSOR_OUTER * sigma)


def filter_halo(
    sigmas: Sequence[Sequence[float]],
    spatial_dims: int,
    structure_tensor: bool = False,
    context: Sequence[Sequence[float]] = (),
) -> tuple[int, ...]:
    """Voxels of input needed beyond the output on each side, per axis, for these scales and context scales."""
    reach = [tuple(_radius(v) + (_outer_radius(v) if structure_tensor else 0) for v in s) for s in sigmas]
    reach += [tuple(_radius(v) for v in s) for s in context]
    if not reach:
        return (0,) * spatial_dims
    return tuple(max(r[a] for r in reach) for a in range(spatial_dims))


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
    """(N, C, *(out + 2·halo)) -> (N, C·F, *out): raw, per scale smoothed, |gradient|, LoG (and Hessian, structure tensor eigenvalues), then per context scale smoothed.

    F = 1 + S·:func:`features_per_scale` + len(``context``).  With
    ``structure_tensor`` each scale adds the eigenvalues of the gradient's
    outer product averaged over σ/2 (ilastik's structure tensor): how strongly
    and in how many directions the intensity changes around a voxel, which
    tells a membrane's sheet from a blob.  Derivatives are scale-normalised
    (× σ and × σ²), so one scale's features are comparable to another's.  The
    Hessian eigenvalues are those of the axes filtered at that scale, in
    descending order, zero-padded to one per spatial axis.  Kernels are buffers
    rebuilt from ``sigmas``, not saved weights.
    """

    def __init__(
        self,
        sigmas: Sequence[Sequence[float]],
        spatial_dims: int,
        hessian: bool = False,
        context: Sequence[Sequence[float]] = (),
        structure_tensor: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.hessian = hessian
        self.structure_tensor = structure_tensor
        self.sigmas = tuple(tuple(float(v) for v in s) for s in sigmas)
        self.context = tuple(tuple(float(v) for v in s) for s in context)
        self.halo = filter_halo(self.sigmas, spatial_dims, structure_tensor, self.context)
        for i, sigma in enumerate(self.sigmas):
            for axis, s in enumerate(sigma):
                self.register_buffer(f"k{i}_{axis}", torch.from_numpy(gaussian_kernels(s)).float(), persistent=False)
                if structure_tensor:
                    outer = gaussian_kernels(STRUCTURE_TENSOR_OUTER * s)[:1]
                    self.register_buffer(f"s{i}_{axis}", torch.from_numpy(outer).float(), persistent=False)
        for i, sigma in enumerate(self.context):
            for axis, s in enumerate(sigma):
                self.register_buffer(f"c{i}_{axis}", torch.from_numpy(gaussian_kernels(s)[:1]).float(), persistent=False)

    @property
    def features_per_channel(self) -> int:
        per_scale = features_per_scale(self.spatial_dims, self.hessian, self.structure_tensor)
        return 1 + per_scale * len(self.sigmas) + len(self.context)

    def level_mask(self, channels: int) -> np.ndarray:
        """(C·F,) bool: features that follow the intensity level (raw, smoothed), not its derivatives.

        A brightness shift moves these and leaves gradients, Laplacians and Hessians unchanged.
        """
        per_channel = np.zeros(self.features_per_channel, dtype=bool)
        per_channel[0] = True
        per_scale = features_per_scale(self.spatial_dims, self.hessian, self.structure_tensor)
        scaled = per_scale * len(self.sigmas)
        per_channel[1 : 1 + scaled : per_scale] = True  # the smoothed intensity leads each scale's block
        per_channel[1 + scaled :] = True  # context: smoothed intensities
        return np.tile(per_channel, channels)

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
        """Gaussian derivatives of (M, 1, *s) at scale ``index``, keyed by their order along each axis.

        Orders up to 2 in all: with ``hessian`` every one (mixed too), else the
        smoothing and the first and pure second derivatives.  Separable: each
        axis convolves the maps of one total order so far in one batch.
        """
        sigma = self.sigmas[index]
        m = x.shape[0]
        maps: dict[tuple[int, ...], torch.Tensor] = {(): x}
        for axis in range(self.spatial_dims):
            if sigma[axis] == 0:  # not filtered: no smoothing, no derivative along this axis
                maps = {key + (0,): value for key, value in maps.items()}
                continue
            kernels = getattr(self, f"k{index}_{axis}")
            new: dict[tuple[int, ...], torch.Tensor] = {}
            for done in range(3):
                keys = [key for key in maps if sum(key) == done]
                if not keys:
                    continue
                # Without the Hessian only a map not yet differentiated takes a derivative.
                orders = 3 - done if self.hessian or done == 0 else 1
                out = self._along(torch.cat([maps[key] for key in keys]), kernels[:orders], axis)
                for i, key in enumerate(keys):
                    for order in range(orders):
                        new[key + (order,)] = out[i * m : (i + 1) * m, order : order + 1]
            maps = new
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        dims = self.spatial_dims
        flat = x.reshape(n * c, 1, *x.shape[2:])
        out_shape = [s - 2 * h for s, h in zip(x.shape[2:], self.halo)]
        features = [_crop(flat, self.halo)]
        per_scale = features_per_scale(dims, self.hessian, self.structure_tensor)
        for i, sigma in enumerate(self.sigmas):
            # The structure tensor averages gradients over σ/2 more: they are computed that much wider.
            outer = tuple(_outer_radius(s) if self.structure_tensor else 0 for s in sigma)
            trim = tuple(h - _radius(s) - o for h, s, o in zip(self.halo, sigma, outer))
            wide = self._derivatives(_crop(flat, trim), i)
            maps = {key: _crop(value, outer) for key, value in wide.items()}
            active = [a for a in range(dims) if sigma[a] > 0]
            smooth = maps[(0,) * dims]
            scale = max(sigma)
            if active:
                gradient = [maps[_order(dims, a)] for a in active]
                features.append(smooth)
                features.append(torch.sqrt(sum(g * g for g in gradient) + 1e-12) * scale)
                features.append(sum(maps[_order(dims, a, a)] for a in active) * scale**2)
                if self.hessian:
                    hessian = [[maps[_order(dims, a, b)] * scale**2 for b in active] for a in active]
                    eigenvalues = symmetric_eigenvalues(hessian)
                    features += eigenvalues + [torch.zeros_like(smooth)] * (dims - len(eigenvalues))
                if self.structure_tensor:
                    eigenvalues = symmetric_eigenvalues(self._structure_tensor(wide, i, active, scale))
                    features += eigenvalues + [torch.zeros_like(smooth)] * (dims - len(eigenvalues))
            else:
                features += [smooth] + [torch.zeros_like(smooth)] * (per_scale - 1)
        for i, sigma in enumerate(self.context):
            smooth = _crop(flat, tuple(h - _radius(s) for h, s in zip(self.halo, sigma)))
            for axis in range(dims):
                if sigma[axis] > 0:
                    smooth = self._along(smooth, getattr(self, f"c{i}_{axis}"), axis)
            features.append(smooth)
        out = torch.cat(features, dim=1)
        assert list(out.shape[2:]) == out_shape, (out.shape, out_shape)
        # (N·C, F, *out) -> (N, C·F, *out), channel-major so channel c's features stay together.
        return out.reshape(n, c * out.shape[1], *out_shape)

    def _structure_tensor(
        self, wide: dict[tuple[int, ...], torch.Tensor], index: int, active: list[int], scale: float
    ) -> list[list[torch.Tensor]]:
        """Scale-normalised gradient products over the active axes, averaged at σ/2: nested (A, A) lists of maps.

        ``wide`` holds the scale's derivatives computed σ/2's reach beyond the output,
        which the valid averaging consumes.
        """
        dims = self.spatial_dims
        gradient = [wide[_order(dims, a)] * scale for a in active]
        pairs = [(p, q) for p in range(len(active)) for q in range(p, len(active))]
        averaged = torch.cat([gradient[p] * gradient[q] for p, q in pairs], dim=1)  # (M, pairs, *s)
        m = averaged.shape[0]
        averaged = averaged.reshape(m * len(pairs), 1, *averaged.shape[2:])
        for axis in range(dims):
            if self.sigmas[index][axis] > 0:
                averaged = self._along(averaged, getattr(self, f"s{index}_{axis}"), axis)
        averaged = averaged.reshape(m, len(pairs), *averaged.shape[2:])
        element = {pair: averaged[:, j : j + 1] for j, pair in enumerate(pairs)}
        return [[element[(min(p, q), max(p, q))] for q in range(len(active))] for p in range(len(active))]


def _order(dims: int, *axes: int) -> tuple[int, ...]:
    """Key of the derivative along ``axes`` (one entry per derivative): its order along each of ``dims`` axes."""
    return tuple(sum(1 for a in axes if a == b) for b in range(dims))


def symmetric_eigenvalues(matrix: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Eigenvalues, descending, of a field of symmetric 1×1, 2×2 or 3×3 matrices given as nested lists of maps.

    Closed form (the trigonometric solution of the characteristic cubic for
    3×3), elementwise on the maps: far faster than a batched LAPACK call per voxel.
    """
    n = len(matrix)
    if n == 1:
        return [matrix[0][0]]
    if n == 2:
        (a, b), (_, d) = matrix
        mean = 0.5 * (a + d)
        radius = torch.sqrt(0.25 * (a - d) ** 2 + b * b)
        return [mean + radius, mean - radius]
    (a, b, c), (_, d, e), (_, _, f) = matrix
    q = (a + d + f) / 3
    a0, d0, f0 = a - q, d - q, f - q
    p = torch.sqrt(((a0 * a0 + d0 * d0 + f0 * f0) + 2 * (b * b + c * c + e * e)) / 6).clamp_min(1e-12)
    determinant = a0 * (d0 * f0 - e * e) - b * (b * f0 - e * c) + c * (b * e - d0 * c)
    phi = torch.acos((determinant / (2 * p**3)).clamp(-1.0, 1.0)) / 3
    largest = q + 2 * p * torch.cos(phi)
    smallest = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    return [largest, 3 * q - largest - smallest, smallest]


def _crop(x: torch.Tensor, margins: Sequence[int]) -> torch.Tensor:
    index = [slice(None), slice(None)] + [slice(m, x.shape[2 + a] - m) for a, m in enumerate(margins)]
    return x[tuple(index)]


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
