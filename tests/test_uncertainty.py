"""Uncertainty from class probabilities and the ranking of slices to paint next."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sparse_unet.core.errors import ConfigError
from napari_sparse_unet.core.analysis.uncertainty import (
    UncertaintyWriter,
    painted_slices,
    rank_slices,
    ranking_csv,
    to_uint8,
    uncertainty,
)


def test_entropy_and_margin_on_known_probabilities():
    p = np.array([[1.0, 0.5, 1 / 3, 0.6], [0.0, 0.5, 1 / 3, 0.3], [0.0, 0.0, 1 / 3, 0.1]], np.float32)
    entropy = uncertainty(p, "entropy")
    assert entropy.dtype == np.float32
    expected = -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(3)
    assert np.allclose(entropy, [0.0, np.log(2) / np.log(3), 1.0, expected], atol=1e-5)
    assert np.allclose(uncertainty(p, "margin"), [0.0, 1.0, 1.0, 0.7], atol=1e-6)
    assert list(to_uint8(np.array([0.0, 0.5, 1.0, 1.2]))) == [0, 128, 255, 255]
    with pytest.raises(ConfigError, match="unknown uncertainty measure 'variance'"):
        uncertainty(p, "variance")


def test_writer_fills_slab_by_slab_as_uint8():
    rng = np.random.default_rng(0)
    p = rng.dirichlet((1, 1), size=(6, 4, 5)).transpose(3, 0, 1, 2).astype(np.float32)  # (K, Z, Y, X)
    writer = UncertaintyWriter((6, 4, 5), "margin")
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        writer(rows, p[:, rows])
    assert writer.out.dtype == np.uint8
    assert np.array_equal(writer.out, to_uint8(uncertainty(p, "margin")))


def test_ranking_order_and_painted_slices_skipped():
    values = np.zeros((6, 3, 4), np.uint8)
    for z, level in enumerate((10, 200, 50, 255, 120, 200)):
        values[z] = level
    ranking = rank_slices(values, axis=0)
    assert [s.index for s in ranking] == [3, 1, 5, 4, 2, 0]  # ties keep slice order
    assert ranking[0].score == pytest.approx(1.0)
    annotation = np.zeros((6, 3, 4), np.uint8)
    annotation[3, 1, 1] = 1  # one painted voxel marks the slice as painted
    annotation[5, 0, 0] = 2
    assert painted_slices(annotation, 0) == {3, 5}
    assert [s.index for s in rank_slices(values, 0, painted=annotation, top=2)] == [1, 4]
    assert [s.index for s in rank_slices(values, 0, painted=[1, 3])] == [5, 4, 2, 0]
    # Along another axis: y rows with a ramp in x ranks by the mean over z and x.
    ramp = np.zeros((2, 3, 4), np.float32)
    ramp[:, 2] = 0.9
    ramp[:, 0] = 0.3
    assert [s.index for s in rank_slices(ramp, axis=1)] == [2, 0, 1]
    assert ranking_csv(ranking[:2]).splitlines() == ["rank,axis,index,mean_uncertainty", "1,z,3,1.000000", "2,z,1,0.784314"]


def test_slab_hooks_see_the_blended_probabilities_of_every_row():
    """Tiled prediction hands each finished slab's normalised probabilities to the hooks, once per row."""
    import torch

    from napari_sparse_unet.core.generators import run_to_end
    from napari_sparse_unet.core.prediction.sliding_window import sliding_window_predict

    image = np.random.default_rng(1).random((1, 20, 12, 10)).astype(np.float32)

    def predictor(x: torch.Tensor) -> torch.Tensor:  # pointwise, so blending must give back the same values
        return torch.cat([x, 1 - x, torch.ones_like(x)], dim=1) / 2.0

    probabilities = np.zeros((3, 20, 12, 10), np.float32)
    writer = UncertaintyWriter((20, 12, 10), "entropy")
    rows_seen: list[int] = []
    run_to_end(sliding_window_predict(
        predictor, image, num_classes=3, tile_size=(8, 8, 8), overlap=0.25, probabilities_out=probabilities,
        slab_hooks=[writer, lambda rows, p: rows_seen.extend(range(rows.start, rows.stop))],
    ))
    assert sorted(rows_seen) == list(range(20))
    assert np.allclose(probabilities, np.concatenate([image, 1 - image, np.ones_like(image)]) / 2.0, atol=1e-6)
    assert np.array_equal(writer.out, to_uint8(uncertainty(probabilities, "entropy")))
