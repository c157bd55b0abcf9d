"""A generated 3D sample: cells with three kinds of structure and four painted slices.

Pure numpy, so opening the sample in napari neither downloads anything nor imports
torch.  Every array is (Z, Y, X).  The volume is anisotropic (Z sampled twice as
coarsely as Y and X) and built so that no intensity threshold separates the classes:

* 1 ``nuclei``    large filled ellipsoids with a mottled texture, mid-bright;
* 2 ``vesicles``  small round dots, often brighter than nuclei, scattered in between;
* 3 ``filaments`` thin curved tubes as bright as the nuclei, crossing everything;

on a background of smoothly varying "cytoplasm", blurred by a Gaussian point-spread
function and recorded with Poisson (shot) and Gaussian (read) noise as uint16 counts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: Names of the ground-truth values 0..3 (0 is background).
CLASS_NAMES: tuple[str, ...] = ("background", "nuclei", "vesicles", "filaments")
#: Voxel size (Z, Y, X) in micrometres of the default sample.
SPACING: tuple[float, float, float] = (2.0, 1.0, 1.0)
DEFAULT_SHAPE: tuple[int, int, int] = (40, 128, 128)

# Object densities per cubic micrometre, chosen so the default volume
# (80 x 128 x 128 um) holds ~18 nuclei, ~300 vesicles and ~12 filaments.
_REFERENCE_VOLUME_UM3 = 80.0 * 128.0 * 128.0
_N_NUCLEI, _N_VESICLES, _N_FILAMENTS = 18, 300, 12


class SampleVolume(NamedTuple):
    """The generated sample; unpacks as ``image, ground_truth, annotation``."""

    image: np.ndarray  # (Z, Y, X) uint16 photon counts
    ground_truth: np.ndarray  # (Z, Y, X) uint8, 0 background, 1..3 classes (CLASS_NAMES)
    annotation: np.ndarray  # (Z, Y, X) uint8, 0 unpainted, ground_truth + 1 on painted slices


def painted_slice_indices(size: int, count: int) -> np.ndarray:
    """``count`` evenly spaced indices along an axis of ``size``, skipping its outer 10 %.

    This is the sparse-annotation protocol of the project's evaluations, so the
    sample mimics what a person would paint: a few well-spread, interior slices.
    """
    if count < 1 or size < 1:
        raise ValueError(f"need count >= 1 and size >= 1, got count={count}, size={size}")
    margin = int(np.ceil(0.1 * size)) if size > 2 * count else 0
    last = size - 1 - margin
    return np.unique(np.round(np.linspace(margin, last, count)).astype(np.int64))


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_blur(volume: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels per axis) with reflected borders.

    A weighted sum of shifted views per axis: a few vectorised passes over the
    array, which is all the kernels used here need and keeps scipy optional.
    """
    out = volume.astype(np.float32, copy=True)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        kernel = _gaussian_kernel(s)
        radius = len(kernel) // 2
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, w in enumerate(kernel):
            acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: tuple[float, ...]) -> np.ndarray:
    """Low-frequency noise in [0, 1]: white noise low-pass filtered in Fourier space."""
    white = rng.standard_normal(shape).astype(np.float32)
    spectrum = np.fft.rfftn(white)
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    # The Fourier transform of a Gaussian of sigma s is a Gaussian of sigma 1/(2 pi s).
    envelope = np.exp(-2.0 * np.pi**2 * sum((f * s) ** 2 for f, s in zip(grids, sigma_voxels)))
    smooth = np.fft.irfftn(spectrum * envelope, s=shape).astype(np.float32)
    lo, hi = np.percentile(smooth, [1, 99])
    return np.clip((smooth - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _local_grid(
    shape: tuple[int, ...], centre: np.ndarray, radius: float, spacing: np.ndarray
) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """Slices of the box around a ball of ``radius`` um and its coordinates relative to ``centre`` (um)."""
    lo = np.maximum(np.floor((centre - radius) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre + radius) / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coords = [
        (np.arange(a, b, dtype=np.float32) * s - c).reshape([-1 if i == axis else 1 for i in range(3)])
        for axis, (a, b, s, c) in enumerate(zip(lo, hi, spacing, centre))
    ]
    return region, coords


def _count(base: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(base * scale)))


def make_sample_volume(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    n_slices: int = 4,
    spacing: tuple[float, float, float] = SPACING,
) -> SampleVolume:
    """Generate the sample volume, its dense ground truth and a sparse annotation.

    Args:
        shape: (Z, Y, X) size in voxels.
        seed: the same seed gives the same arrays.
        n_slices: how many Z slices are painted in ``annotation``.
        spacing: (Z, Y, X) voxel size in um; objects keep their physical size.

    Returns:
        ``SampleVolume(image, ground_truth, annotation)``, all (Z, Y, X).  The
        annotation follows the plugin's convention: 0 not painted, 1 background,
        2.. the classes (ground truth + 1), on ``painted_slice_indices(Z, n_slices)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sizes >= 4 (Z, Y, X), got {shape}")
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=np.float32)
    extent = np.asarray(shape, dtype=np.float32) * sp  # physical size in um
    scale = float(np.prod(extent)) / _REFERENCE_VOLUME_UM3

    signal = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.uint8)
    texture = _smooth_noise(rng, shape, tuple(1.5 / s for s in sp))

    nucleus = _draw_nuclei(rng, signal, truth, texture, extent, sp, scale)
    _draw_filaments(rng, signal, truth, extent, sp, scale)
    _draw_vesicles(rng, signal, truth, nucleus, extent, sp, scale)

    # Cytoplasm: smooth background whose brighter parts reach the dimmer objects.
    cytoplasm = _smooth_noise(rng, shape, tuple(6.0 / s for s in sp))
    signal = np.maximum(signal, 0.05 + 0.3 * cytoplasm * cytoplasm)

    # Optics and camera: PSF blur (wider along Z), then shot noise and read noise.
    signal = _gaussian_blur(signal, tuple(float(s) for s in np.array([1.2, 0.6, 0.6]) / sp))
    photons = rng.poisson(80.0 + 600.0 * signal).astype(np.float32)
    photons += rng.normal(0.0, 6.0, shape).astype(np.float32)
    image = np.clip(np.round(photons), 0, 65535).astype(np.uint16)

    annotation = np.zeros(shape, np.uint8)
    for z in painted_slice_indices(shape[0], n_slices):
        annotation[z] = truth[z] + 1
    return SampleVolume(image, truth, annotation)


def _draw_nuclei(
    rng: np.random.Generator, signal: np.ndarray, truth: np.ndarray, texture: np.ndarray,
    extent: np.ndarray, sp: np.ndarray, scale: float,
) -> np.ndarray:
    """Nuclei, randomly oriented ellipsoids mottled by ``texture``, into ``signal`` and ``truth`` (class 1); returns their mask.

    Arrays are (Z, Y, X); ``extent`` and ``sp`` (spacing) are in um per axis.
    """
    shape = signal.shape
    nucleus = np.zeros(shape, bool)
    for _ in range(_count(_N_NUCLEI, scale, 2)):
        centre = rng.uniform(0.1, 0.9, 3).astype(np.float32) * extent
        axes = rng.uniform([7.0, 8.0, 10.0], [10.0, 12.0, 16.0]).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        box = _local_grid(shape, centre, float(axes.max()), sp)
        if box is None:
            continue
        region, (dz, dy, dx) = box
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy  # rotate in the XY plane
        inside = (dz / axes[0]) ** 2 + (v / axes[1]) ** 2 + (u / axes[2]) ** 2 <= 1.0
        brightness = rng.uniform(0.4, 0.7)
        sub = signal[region]
        sub[inside] = brightness * (0.65 + 0.7 * texture[region][inside])
        truth[region][inside] = 1
        nucleus[region] |= inside
    return nucleus


def _draw_filaments(
    rng: np.random.Generator, signal: np.ndarray, truth: np.ndarray, extent: np.ndarray, sp: np.ndarray, scale: float
) -> None:
    """Filaments, smooth random curves of small balls as bright as nuclei, drawn over them (class 3)."""
    shape = signal.shape
    for _ in range(_count(_N_FILAMENTS, scale, 2)):
        start = rng.uniform(0.0, 1.0, 3).astype(np.float32) * extent
        direction = rng.standard_normal(3).astype(np.float32)
        direction[0] *= 0.15  # mostly in-plane, as cytoskeleton in a flat cell
        direction /= np.linalg.norm(direction)
        length = rng.uniform(0.5, 0.9) * float(np.linalg.norm(extent[1:]))
        bend = rng.standard_normal((2, 3)).astype(np.float32) * np.array([1.5, 8.0, 8.0], np.float32)
        radius = rng.uniform(1.2, 1.8)
        brightness = rng.uniform(0.45, 0.75)
        for t in np.arange(0.0, 1.0, 0.4 / length, dtype=np.float32):
            centre = start + direction * (t - 0.5) * length + bend[0] * np.sin(np.pi * t) + bend[1] * np.sin(2.5 * np.pi * t)
            box = _local_grid(shape, centre, radius, sp)
            if box is None:
                continue
            region, (dz, dy, dx) = box
            inside = dz**2 + dy**2 + dx**2 <= radius**2
            sub = signal[region]
            sub[inside] = brightness
            truth[region][inside] = 3


def _draw_vesicles(
    rng: np.random.Generator, signal: np.ndarray, truth: np.ndarray, nucleus: np.ndarray,
    extent: np.ndarray, sp: np.ndarray, scale: float,
) -> None:
    """Vesicles, small dots outside ``nucleus`` from dim to brighter than anything else (class 2)."""
    shape = signal.shape
    placed, tries = 0, 0
    n_vesicles = _count(_N_VESICLES, scale, 4)
    while placed < n_vesicles and tries < 20 * n_vesicles:
        tries += 1
        centre = rng.uniform(0.0, 1.0, 3).astype(np.float32) * extent
        index = tuple(np.minimum((centre / sp).astype(int), np.asarray(shape) - 1))
        if nucleus[index]:
            continue
        radius = rng.uniform(1.5, 2.5)
        box = _local_grid(shape, centre, radius, sp)
        if box is None:
            continue
        region, (dz, dy, dx) = box
        inside = dz**2 + dy**2 + dx**2 <= radius**2
        if not inside.any():
            continue
        sub = signal[region]
        sub[inside] = rng.uniform(0.5, 1.0)
        truth[region][inside] = 2
        placed += 1


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample-data hook: the sample image and its 4 painted slices as layers.

    Layer metadata carry the class names by annotation value (1 is background).
    """
    sample = make_sample_volume()
    names = {value + 1: name for value, name in enumerate(CLASS_NAMES)}
    return [
        (
            sample.image,
            {
                "name": "sample image",
                "scale": SPACING,
                "contrast_limits": (float(sample.image.min()), float(np.percentile(sample.image, 99.9))),
                "metadata": {"spacing": SPACING, "source": "napari-sparse-unet generated sample"},
            },
            "image",
        ),
        (
            sample.annotation,
            {
                "name": "annotation",
                "scale": SPACING,
                "metadata": {"class_names": names, "painted_slices": painted_slice_indices(DEFAULT_SHAPE[0], 4).tolist()},
            },
            "labels",
        ),
    ]
