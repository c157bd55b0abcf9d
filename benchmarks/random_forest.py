"""The peer: a random forest on ilastik's pixel-classification filter features.

What ilastik (and APOC) users run: per-voxel features from Gaussian filters at several
scales, a 100-tree random forest trained on the painted voxels, applied to every voxel.
The features follow ilastik's definitions (vigra filters as ilastik calls them):

* Gaussian smoothing G_σ, Laplacian of Gaussian (trace of the Hessian at σ),
  Gaussian gradient magnitude at σ, difference of Gaussians G_σ - G_0.66σ,
* structure-tensor eigenvalues (gradient at inner scale σ, products smoothed at σ/2),
* Hessian-of-Gaussian eigenvalues at σ,

at ilastik's σ = 0.7, 1.0, 1.6, 3.5, 5.0 (its 0.3 is offered for smoothing only; the
raw intensity stands in for it), plus the raw intensity.

Anisotropy: ilastik takes σ in voxels and leaves coarse-Z data to the user's "2-D
features" switch.  Here σ is in units of the finest spacing, σ_a = σ · min(spacing) /
spacing_a, and an axis whose σ_a falls below ``MIN_AXIS_SIGMA`` voxels is not filtered
or differentiated at all (a Gaussian that narrow is a delta on the grid), which is
ilastik's 2-D mode for the 12.5x anisotropic EM and full 3-D for the isotropic CT.
Features are float32, computed with scipy.ndimage; eigenvalues with scikit-image.

Arrays are (Z, Y, X); annotations use the plugin's convention (0 = not annotated,
1 = background, 2.. = classes) and predictions its output (background 0, class values).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np

ILASTIK_SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)
MIN_AXIS_SIGMA = 0.3
DOG_RATIO = 0.66  # ilastik: G(σ) - G(0.66 σ)
# scikit-learn's notice about propagating its config to joblib threads; nothing is configured here.
_JOBLIB_NOTICE = ".*sklearn.utils.parallel.delayed.*"
CHUNK_VOXELS = 1 << 20  # rows per prediction / eigenvalue chunk (~200 MB of features at 50 features)


def axis_sigmas(sigma: float, spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Per-axis σ in voxels for a physical σ given in units of the finest spacing; 0 = axis not filtered."""
    if spacing is None:
        return (float(sigma),) * ndim
    finest = min(spacing)
    sigmas = tuple(sigma * finest / s for s in spacing)
    return tuple(s if s >= MIN_AXIS_SIGMA else 0.0 for s in sigmas)


def _eigenvalues(elements: list[np.ndarray]) -> np.ndarray:
    """Eigenvalues (descending, leading axis) of symmetric matrices given by upper-triangle elements.

    Computed in chunks along axis 0 so a (Z, Y, X, 3, 3) temporary never holds the whole volume.
    """
    from skimage.feature import hessian_matrix_eigvals

    n = int(round((np.sqrt(8 * len(elements) + 1) - 1) / 2))
    shape = elements[0].shape
    out = np.empty((n, *shape), np.float32)
    plane = int(np.prod(shape[1:]))
    step = max(1, CHUNK_VOXELS // max(plane, 1))
    for start in range(0, shape[0], step):
        part = [e[start:start + step] for e in elements]
        if n == 1:
            out[:, start:start + step] = part[0][None]
        else:
            # hessian_matrix_eigvals and structure_tensor_eigenvalues share this code path.
            out[:, start:start + step] = hessian_matrix_eigvals(part)
    return out


def feature_names(spacing: Sequence[float] | None, ndim: int = 3, sigmas: Sequence[float] = ILASTIK_SIGMAS) -> list[str]:
    names = ["raw"]
    for sigma in sigmas:
        d = sum(s > 0 for s in axis_sigmas(sigma, spacing, ndim))
        names += [f"{n}_{sigma}" for n in ("gauss", "log", "gradmag", "dog")]
        names += [f"st{i}_{sigma}" for i in range(d)] + [f"hess{i}_{sigma}" for i in range(d)]
    return names


def compute_features(image: np.ndarray, spacing: Sequence[float] | None = None,
                     sigmas: Sequence[float] = ILASTIK_SIGMAS) -> np.ndarray:
    """Feature matrix (voxels, features) float32, C order, voxels in raveled (Z, Y, X) order.

    A (C, Z, Y, X) image (more dimensions than ``spacing`` has values) gets every
    feature per channel, side by side, as ilastik does for multi-channel data.
    """
    if spacing is not None and np.ndim(image) == len(spacing) + 1:
        return np.concatenate([compute_features(channel, spacing, sigmas) for channel in image], axis=1)
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    ndim = image.ndim
    names = feature_names(spacing, ndim, sigmas)
    features = np.empty((image.size, len(names)), np.float32)
    column = 0

    def put(array: np.ndarray) -> None:
        nonlocal column
        features[:, column] = array.ravel()
        column += 1

    put(image)
    for sigma in sigmas:
        sig = axis_sigmas(sigma, spacing, ndim)
        active = [a for a in range(ndim) if sig[a] > 0]

        def derivative(orders: dict[int, int], scale: float = 1.0) -> np.ndarray:
            order = [orders.get(a, 0) for a in range(ndim)]
            return ndimage.gaussian_filter(image, [s * scale for s in sig], order=order, output=np.float32)

        smooth = derivative({})
        put(smooth)
        pairs = list(combinations_with_replacement(active, 2))
        hessian = [derivative({a: 1, b: 1} if a != b else {a: 2}) for a, b in pairs]
        put(sum(h for (a, b), h in zip(pairs, hessian) if a == b))  # Laplacian of Gaussian
        gradient = [derivative({a: 1}) for a in active]
        put(np.sqrt(sum(g * g for g in gradient)))
        put(smooth - derivative({}, DOG_RATIO))
        del smooth
        # Structure tensor: gradient at the inner scale σ, products averaged at the outer scale σ/2.
        outer = [s * 0.5 for s in sig]
        tensor = [ndimage.gaussian_filter(gradient[active.index(a)] * gradient[active.index(b)], outer, output=np.float32)
                  for a, b in pairs]
        del gradient
        for eig in _eigenvalues(tensor):
            put(eig)
        del tensor
        for eig in _eigenvalues(hessian):
            put(eig)
        del hessian
    assert column == len(names)
    return features


@dataclass
class ForestResult:
    prediction: np.ndarray  # (Z, Y, X) plugin output convention
    seconds: dict[str, float] = field(default_factory=dict)  # features_train, fit, features_predict, predict
    num_features: int = 0
    train_voxels: int = 0
    n_jobs: int = 0


def make_forest(seed: int = 0, n_estimators: int = 100, max_samples: int | None = None):
    """ilastik's forest size (100 trees), sklearn defaults otherwise, all cores."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=n_estimators, n_jobs=-1, random_state=seed, max_samples=max_samples)


def run_forest(train_image: np.ndarray, annotation: np.ndarray, predict_image: np.ndarray | None = None,
               spacing: Sequence[float] | None = None, *, seed: int = 0, n_estimators: int = 100,
               max_samples: int | None = None, sigmas: Sequence[float] = ILASTIK_SIGMAS) -> ForestResult:
    """Features + fit on the annotated voxels of ``train_image``; predict every voxel of ``predict_image``.

    ``predict_image`` None predicts ``train_image`` (features computed once).  ``max_samples``
    caps each tree's bootstrap sample (all annotated voxels are still used by the forest).
    """
    import joblib

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    train_features = compute_features(train_image, spacing, sigmas)
    annotated = annotation.ravel() > 0
    x = train_features[annotated]
    y = annotation.ravel()[annotated]
    seconds["features_train"] = time.perf_counter() - start

    start = time.perf_counter()
    forest = make_forest(seed, n_estimators, max_samples if max_samples and max_samples < len(y) else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JOBLIB_NOTICE)
        forest.fit(x, y)
    seconds["fit"] = time.perf_counter() - start
    del x

    start = time.perf_counter()
    if predict_image is None:
        # Semi-automated: the same volume, whose features are already there.
        predict_features = train_features
    else:
        del train_features
        predict_features = compute_features(predict_image, spacing, sigmas)
    seconds["features_predict"] = time.perf_counter() - start

    start = time.perf_counter()
    classes = forest.classes_
    # Output convention: background (annotation value 1) shows as 0, other classes keep their value.
    lut = np.where(classes == 1, 0, classes).astype(np.uint16 if classes.max() > 255 else np.uint8)
    out = np.empty(len(predict_features), lut.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JOBLIB_NOTICE)
        for begin in range(0, len(out), CHUNK_VOXELS):
            proba = forest.predict_proba(predict_features[begin:begin + CHUNK_VOXELS])
            out[begin:begin + CHUNK_VOXELS] = lut[proba.argmax(axis=1)]
    seconds["predict"] = time.perf_counter() - start
    spatial = annotation.shape if predict_image is None else predict_image.shape[-annotation.ndim:]
    return ForestResult(out.reshape(spatial), seconds, predict_features.shape[1], int(annotated.sum()),
                        joblib.cpu_count())
