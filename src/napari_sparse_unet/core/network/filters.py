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

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .traced import sectioned_conv1d

# An axis whose σ falls below this many voxels is neither smoothed nor
# differentiated (a Gaussian that narrow is a delta on the grid): ilastik's
# "2-D features" for coarse-Z stacks.
MIN_AXIS_SIGMA = 0.3
# Kernels reach this many σ each side.
TRUNCATE = 3.0
# Features per scale before the Hessian eigenvalues: smoothed, gradient magnitude, LoG.
BASIC_FEATURES_PER_SCALE = 3


def features_per_scale(spatial_dims: int, hessian: bool) -> int:
    """Features per input channel and scale: 3, plus one Hessian eigenvalue per spatial axis with ``hessian``."""
    return BASIC_FEATURES_PER_SCALE + spatial_dims * int(hessian)


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


def filter_halo(
    sigmas: Sequence[Sequence[float]], spatial_dims: int, *, context_sigmas: Sequence[Sequence[float]] = ()
) -> tuple[int, ...]:
    """Voxels of input needed beyond the output on each side, per axis, for these scales and context scales."""
    reach = [tuple(_radius(v) for v in s) for s in [*sigmas, *context_sigmas]]
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
    """(N, C, *(out + 2·halo)) -> (N, C·F, *out): raw, per scale smoothed, |gradient|, LoG (and Hessian eigenvalues), then per context scale smoothed.

    F = 1 + S·:func:`features_per_scale` + len(``context_sigmas``).  Derivatives are scale-normalised
    (× σ and × σ²), so one scale's features are comparable to another's.  The
    Hessian eigenvalues are those of the axes filtered at that scale, in
    descending order, zero-padded to one per spatial axis.  Kernels are buffers
    rebuilt from ``sigmas``, not saved weights.
    """

    def __init__(
        self,
        sigmas: Sequence[Sequence[float]],
        spatial_dims: int,
        *,
        hessian: bool = False,
        context_sigmas: Sequence[Sequence[float]] = (),
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.hessian = hessian
        self.sigmas = tuple(tuple(float(v) for v in s) for s in sigmas)
        self.context_sigmas = tuple(tuple(float(v) for v in s) for s in context_sigmas)
        self.halo = filter_halo(self.sigmas, spatial_dims, context_sigmas=self.context_sigmas)
        for i, sigma in enumerate(self.sigmas):
            for axis, s in enumerate(sigma):
                self.register_buffer(f"k{i}_{axis}", torch.from_numpy(gaussian_kernels(s)).float(), persistent=False)
        for i, sigma in enumerate(self.context_sigmas):
            for axis, s in enumerate(sigma):
                self.register_buffer(f"c{i}_{axis}", torch.from_numpy(gaussian_kernels(s)[:1]).float(), persistent=False)

    @property
    def features_per_channel(self) -> int:
        per_scale = features_per_scale(self.spatial_dims, self.hessian)
        return 1 + per_scale * len(self.sigmas) + len(self.context_sigmas)

    def level_mask(self, channels: int) -> np.ndarray:
        """(C·F,) bool: features that follow the intensity level (raw, smoothed), not its derivatives.

        A brightness shift moves these and leaves gradients, Laplacians and Hessians unchanged.
        """
        per_channel = np.zeros(self.features_per_channel, dtype=bool)
        per_channel[0] = True
        per_scale = features_per_scale(self.spatial_dims, self.hessian)
        scaled = per_scale * len(self.sigmas)
        per_channel[1 : 1 + scaled : per_scale] = True  # the smoothed intensity leads each scale's block
        per_channel[1 + scaled :] = True  # context: smoothed intensities
        return np.tile(per_channel, channels)

    def _along(self, x: torch.Tensor, kernels: torch.Tensor, axis: int, reflect: bool = False) -> torch.Tensor:
        """1-D convolutions along spatial ``axis``: (M, 1, *s) -> (M, len(kernels), *s').

        Valid (s' = s - 2r) or, with ``reflect``, over ``x`` mirrored by r at both
        ends first (s' = s), as :func:`.sampling.crop_with_padding` mirrors an image.
        """
        return convolve_along(x, kernels, axis, reflect)

    def _derivatives(self, x: torch.Tensor, index: int, reflect: Sequence[bool]) -> dict[tuple[int, ...], torch.Tensor]:
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
                out = self._along(torch.cat([maps[key] for key in keys]), kernels[:orders], axis, reflect[axis])
                for i, key in enumerate(keys):
                    for order in range(orders):
                        new[key + (order,)] = out[i * m : (i + 1) * m, order : order + 1]
            maps = new
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, (False,) * self.spatial_dims)

    def planes(self, x: torch.Tensor, halo_axes: int = 1) -> torch.Tensor:
        """(N, C, D + 2·halo[0], *rest) -> (N, C·F, D, *rest): features of whole planes.

        Valid along the first ``halo_axes`` axes (which carry the halo), mirrored at the
        ends of the others: the same numbers :meth:`forward` gives for the planes read
        with the halo mirrored at the border (mirroring along one axis commutes with
        filtering along another), without filtering a halo along the other axes.
        """
        return self._features(x, (False,) * halo_axes + (True,) * (self.spatial_dims - halo_axes))

    def _features(self, x: torch.Tensor, reflect: Sequence[bool]) -> torch.Tensor:
        """Features of ``x``, which carries the halo along the axes not in ``reflect``."""
        n, c = x.shape[:2]
        dims = self.spatial_dims
        halo = tuple(0 if r else h for h, r in zip(self.halo, reflect))
        flat = x.reshape(n * c, 1, *x.shape[2:])
        out_shape = [s - 2 * h for s, h in zip(x.shape[2:], halo)]
        features = [_crop(flat, halo)]
        per_scale = features_per_scale(dims, self.hessian)
        for i, sigma in enumerate(self.sigmas):
            trim = tuple(0 if r else h - _radius(s) for h, s, r in zip(halo, sigma, reflect))
            maps = self._derivatives(_crop(flat, trim), i, reflect)
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
            else:
                features += [smooth] + [torch.zeros_like(smooth)] * (per_scale - 1)
        for i, sigma in enumerate(self.context_sigmas):
            smooth = _crop(flat, tuple(0 if r else h - _radius(s) for h, s, r in zip(halo, sigma, reflect)))
            for axis in range(dims):
                if sigma[axis] > 0:
                    smooth = self._along(smooth, getattr(self, f"c{i}_{axis}"), axis, reflect[axis])
            features.append(smooth)
        # Every feature in the input's dtype (under autocast the products come out in its dtype):
        # concatenating mixed dtypes takes a slow elementwise path.
        out = torch.cat([f.to(x.dtype) for f in features], dim=1)
        assert list(out.shape[2:]) == out_shape, (out.shape, out_shape)
        # (N·C, F, *out) -> (N, C·F, *out), channel-major so channel c's features stay together.
        return out.reshape(n, c * out.shape[1], *out_shape)


# Outputs per band of the banded convolution matrix: the band reads its outputs plus 2r inputs, so a
# band several kernels long keeps the wasted multiplications (zeros in the band) small.
BAND_OUTPUTS = 64


def convolve_along(x: torch.Tensor, kernels: torch.Tensor, axis: int, reflect: bool = False) -> torch.Tensor:
    """1-D convolutions (correlations) of maps (M, 1, *s) along spatial ``axis``: (M, K, *s').

    Computed as products with banded Toeplitz matrices: a single-input-channel
    convolution with a long 1-D kernel runs at a few per cent of a CPU's matrix
    rate (benchmarks/RESULTS.md, "Prediction by stage").  Valid (s' = s - 2r for
    kernels of length 2r + 1) or, with ``reflect``, as if ``x`` were mirrored by r
    at both ends (s' = s), the mirror folded into the matrix.
    """
    dim = 2 + axis
    if torch.jit.is_tracing():
        # A traced graph must not depend on the input's size (bioimage.io export): plain convolutions of
        # the lines along the axis, in pieces (traced.sectioned_conv1d).
        assert not reflect, "traced filter banks take their halo"
        lines = x.movedim(dim, -1)
        rows = lines.reshape(-1, 1, lines.shape[-1])
        weight = kernels[:, None].to(x.dtype)
        out = sectioned_conv1d()(rows, weight)
        return out.reshape(lines.shape[0], *lines.shape[2:-1], kernels.shape[0], -1).movedim(-2, 1).movedim(-1, dim)
    m, size = x.shape[0], x.shape[dim]
    count = kernels.shape[0]
    bands = _bands(tuple(map(tuple, kernels.tolist())), size, reflect)
    size_out = bands[-1][1]
    last = dim == x.ndim - 1
    rest = x.shape[2:dim]
    # Left products along an inner axis: (B, n, W) -> (B, K·n', W); right products along the last: (B, n) -> (B, n'·K).
    flat = x.reshape(m * math.prod(rest), size, -1) if not last else x.reshape(-1, size)
    parts = []
    for _, _, low, high, left, right in bands:
        matrix = (right if last else left).to(device=x.device, dtype=x.dtype)
        if last:
            parts.append(torch.matmul(flat[:, low:high], matrix))  # (B, (stop - start)·K)
        else:
            parts.append(torch.matmul(matrix, flat[:, low:high]))  # (B, K·(stop - start), W)
    if last:
        out = torch.cat([p.reshape(-1, p.shape[1] // count, count) for p in parts], 1)  # (B, n', K)
        out = out.reshape(m, *rest, size_out, count).movedim(-1, 1)
    else:
        out = torch.cat([p.reshape(p.shape[0], count, -1, p.shape[-1]) for p in parts], 2)  # (B, K, n', W)
        out = out.reshape(m, *rest, count, size_out, *x.shape[dim + 1 :]).movedim(1 + len(rest), 1)
    return out.contiguous()


@functools.lru_cache(maxsize=256)
def _bands(
    kernels: tuple[tuple[float, ...], ...], size: int, reflect: bool
) -> tuple[tuple[int, int, int, int, torch.Tensor, torch.Tensor], ...]:
    """The convolution matrix of an axis of ``size``, cut into bands of outputs.

    Each band: (out start, out stop, in start, in stop, left, right), ``left`` the
    (K·n_out, n_in) matrix for products from the left (kernel-major rows) and
    ``right`` the (n_in, n_out·K) one for products from the right (output-major columns).
    """
    weights = np.asarray(kernels, dtype=np.float64)  # (K, L)
    count, length = weights.shape
    r = length // 2
    size_out = size if reflect else size - 2 * r
    full = np.zeros((count, size_out, size))
    outputs = np.arange(size_out)
    for t in range(length):
        if reflect:
            from ..training.sampling import reflect_indices

            inputs = reflect_indices(-r + t, size_out, size)
        else:
            inputs = outputs + t
        np.add.at(full, (slice(None), outputs, inputs), weights[:, t : t + 1])
    bands = []
    for start in range(0, size_out, BAND_OUTPUTS):
        stop = min(start + BAND_OUTPUTS, size_out)
        used = np.flatnonzero(np.abs(full[:, start:stop]).sum(axis=(0, 1)) > 0)
        low, high = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        block = full[:, start:stop, low:high]  # (K, n, n_in)
        left = torch.from_numpy(block.reshape(count * (stop - start), high - low)).float()
        right = torch.from_numpy(np.ascontiguousarray(block.transpose(2, 1, 0).reshape(high - low, -1))).float()
        bands.append((start, stop, low, high, left, right))
    return tuple(bands)


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
    from ..training.sampling import crop_with_padding

    halo = bank.halo
    spatial = image_cf.shape[1:]
    size = [stop - start, *spatial[1:]]
    block = crop_with_padding(image_cf, [start - halo[0], *(-h for h in halo[1:])], [s + 2 * h for s, h in zip(size, halo)], fill=None)
    block = normalize(block) if normalize is not None else block
    with torch.no_grad():
        return bank(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None])[0].numpy()
