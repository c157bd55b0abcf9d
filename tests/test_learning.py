"""The engine can learn: it fits its painted voxels on classes that differ by intensity,
by texture or by shape only, and prediction computes what training computed.

Each volume is (Z, Y, X), 16 x 48 x 48, with background and two classes; three Z slices
are painted with the truth (0 = not painted, 1 = background, 2, 3 = classes).  A
regression in normalisation, sampling, the loss or tiling makes one of these fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sparse_unet.core.config import PredictConfig, TrainConfig
from napari_sparse_unet.core.prediction.predict import predict
from napari_sparse_unet.core.training.sampling import crop_with_padding
from napari_sparse_unet.core.metrics import dice_per_class, mean_dice
from napari_sparse_unet.core.training.train import Trainer

SHAPE = (16, 48, 48)
PAINTED_Z = (3, 8, 12)
# The shipped architecture, shrunk for a test: filters, batch norm, equalisation, thin patches.
LEARN = TrainConfig(
    max_steps=300, max_time=None, patch_size=(8, 32, 32), batch_size=2, base_channels=8,
    depth=2, warmup_steps=10, seed=0, num_threads=2,
)


def _blobs(rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
    """Boolean (Z, Y, X) union of ``count`` balls at random centres."""
    zz, yy, xx = np.indices(SHAPE)
    mask = np.zeros(SHAPE, bool)
    for _ in range(count):
        c = [rng.uniform(2, s - 2) for s in SHAPE]
        mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2
    return mask


def _truth(seed: int) -> np.ndarray:
    """0 background, 1 and 2 for two sets of non-overlapping balls."""
    rng = np.random.default_rng(seed)
    first = _blobs(rng, 10, 5.0)
    second = _blobs(rng, 10, 5.0) & ~ndimage.binary_dilation(first, iterations=2)
    return (first * 1 + second * 2).astype(np.uint8)


def intensity_only(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    truth = _truth(seed)
    rng = np.random.default_rng(seed + 100)
    image = np.choose(truth, [100.0, 130.0, 160.0]) + rng.normal(0, 8, SHAPE)
    return image.astype(np.float32), truth


def texture_only(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Same mean everywhere: class 1 rough (fine noise), class 2 blotchy (smoothed noise), background flat.

    Regions are wide bands with wavy borders: texture needs a few voxels to be seen,
    so small objects would be decided by their borders.
    """
    rng = np.random.default_rng(seed + 200)
    _, yy, xx = np.indices(SHAPE)
    wave = 4 * np.sin(yy / 5.0 + rng.uniform(0, 6))
    truth = np.where(xx < 14 + wave, 1, np.where(xx >= 34 + wave, 2, 0)).astype(np.uint8)
    fine = rng.normal(0, 30, SHAPE)
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 2.0)
    coarse *= 30 / coarse.std()
    image = 120.0 + np.choose(truth, [rng.normal(0, 3, SHAPE), fine, coarse])
    return image.astype(np.float32), truth


def shape_only(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal intensity: class 1 = balls, class 2 = thin rods along X; background dark."""
    rng = np.random.default_rng(seed + 300)
    balls = _blobs(rng, 10, 5.0)
    rods = np.zeros(SHAPE, bool)
    for _ in range(14):
        z, y = int(rng.integers(1, SHAPE[0] - 2)), int(rng.integers(1, SHAPE[1] - 2))
        rods[z : z + 2, y : y + 2, :] = True
    rods &= ~ndimage.binary_dilation(balls, iterations=2)
    truth = (balls * 1 + rods * 2).astype(np.uint8)
    image = np.where(truth > 0, 160.0, 100.0) + rng.normal(0, 8, SHAPE)
    return image.astype(np.float32), truth


def _paint(truth: np.ndarray) -> np.ndarray:
    annotation = np.zeros(truth.shape, np.uint8)
    annotation[list(PAINTED_Z)] = truth[list(PAINTED_Z)] + 1
    return annotation


@pytest.mark.slow
@pytest.mark.parametrize("make", [intensity_only, texture_only, shape_only], ids=lambda f: f.__name__)
def test_fits_the_painted_voxels(make) -> None:
    image, truth = make()
    annotation = _paint(truth)
    trainer = Trainer([image], [annotation], LEARN)
    for _ in trainer.run():
        pass
    labels = predict(trainer.best_model, image, PredictConfig(mixed_precision=False))
    predicted = np.where(labels >= 2, labels - 1, 0).astype(np.int64)
    on_painted = np.where(annotation > 0, truth.astype(np.int64), -1)
    assert mean_dice(dice_per_class(predicted, on_painted, (1, 2), where=on_painted >= 0)) >= 0.95


@pytest.fixture(scope="module")
def trained():
    image, truth = intensity_only(1)
    trainer = Trainer([image], [_paint(truth)], dataclasses.replace(LEARN, max_steps=30))
    for _ in trainer.run():
        pass
    return trainer, image


def test_prediction_of_a_training_patch_is_the_networks_output(trained) -> None:
    """predict() on a patch equals the network on that patch read as training reads it (halo mirrored)."""
    trainer, image = trained
    model = trainer.best_model
    start, size = (4, 8, 8), (8, 32, 32)
    patch = image[tuple(slice(a, a + s) for a, s in zip(start, size))]
    halo = model.model_config.input_halo
    x = model.normalization.apply(crop_with_padding(patch[None], [-h for h in halo], [s + 2 * h for s, h in zip(size, halo)], fill=None))
    with torch.no_grad():
        expected = torch.softmax(model.network(torch.from_numpy(x)[None]), 1)[0].numpy()
    probabilities = np.zeros((model.num_classes, *size), np.float32)
    predict(model, patch, PredictConfig(mixed_precision=False, tile_size=size), probabilities_out=probabilities)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_tiled_prediction_does_not_depend_on_the_tile(trained) -> None:
    """The default tiling and one whole-volume tile agree on (almost) every voxel; tiles as small as a patch nearly so.

    What is left comes from the convolutions' zero padding at tile borders, largest with the smallest tiles
    and a barely trained network; per-tile normalisation (instance norm) differed on 5-15 %.
    """
    trainer, image = trained
    model = trainer.best_model
    whole = predict(model, image, PredictConfig(mixed_precision=False, tile_size=(16, 48, 48)))
    default = predict(model, image, PredictConfig(mixed_precision=False))
    tiled = predict(model, image, PredictConfig(mixed_precision=False, tile_size=(8, 16, 16)))
    assert np.mean(whole != default) < 0.01
    assert np.mean(whole != tiled) < 0.03
