"""Shared fixtures: the real volumes beside the repository and tiny synthetic ones.

Every volume is (Z, Y, X); annotations use 0 = not painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real volumes); skips where it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real volumes not available: {SHARED_DATA} does not exist (they live beside the repository, not in it)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _tiny_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (12, 32, 32)
    z, y, x = np.indices(shape, dtype=np.float32)
    truth = np.zeros(shape, np.uint8)
    truth[((z - 6) / 4) ** 2 + ((y - 12) / 7) ** 2 + ((x - 12) / 7) ** 2 <= 1] = 1  # a ball
    truth[3:9, 22:28, 20:29] = 2  # a box
    noise = np.random.default_rng(0).normal(0.0, 0.05, shape).astype(np.float32)
    image = np.where(truth == 1, 0.8, np.where(truth == 2, 0.5, 0.1)).astype(np.float32) + noise
    annotation = np.zeros(shape, np.uint8)
    for painted in (4, 7):
        annotation[painted] = truth[painted] + 1
    return image, truth, annotation


@pytest.fixture
def tiny_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 (12, 32, 32), ground truth uint8 0/1/2, annotation uint8 painted on z = 4 and 7).

    A bright ball (class 1, annotation 2) and a dimmer box (class 2, annotation 3)
    on a dark noisy background: learnable in a few steps.
    """
    return _tiny_pair()


@pytest.fixture
def tiny_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generated sample at a small size (16, 48, 48): image uint16, ground truth, annotation."""
    from napari_sparse_unet._sample_data import make_sample_volume

    return tuple(make_sample_volume(shape=(16, 48, 48), seed=1))


@pytest.fixture
def tiny_files(tmp_path: Path, tiny_volume) -> dict[str, Path]:
    """``tiny_volume`` written as TIFF files: keys image, labels, truth."""
    import tifffile

    image, truth, annotation = tiny_volume
    paths = {"image": tmp_path / "image.tif", "labels": tmp_path / "labels.tif", "truth": tmp_path / "truth.tif"}
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["labels"], annotation)
    tifffile.imwrite(paths["truth"], truth)
    return paths
