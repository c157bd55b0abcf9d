"""The voxel head: piecewise-linear encoding with bin edges from the painted voxels (each class weighing the same), its knot table."""

from __future__ import annotations

import numpy as np
import torch

from napari_sparse_unet.core.network.voxel_head import VoxelHead, balanced_quantiles


def test_balanced_quantiles_give_a_rare_class_its_share_of_the_cuts() -> None:
    # 900 background voxels at 0 (zero padding), 100 of a rare class at 1..100.
    values = np.concatenate([np.zeros(900), np.arange(1, 101)]).astype(np.float32)[:, None]
    classes = np.r_[np.zeros(900, int), np.ones(100, int)]
    levels = np.linspace(0.0, 1.0, 5)
    plain = np.quantile(values, levels, axis=0).ravel()
    balanced = balanced_quantiles(values, classes, levels).ravel()
    # Plain quantiles put every inner edge on the ties at 0; balanced ones cut the rare class's range.
    assert np.count_nonzero(plain[1:-1]) == 0
    assert balanced[0] == 0 and balanced[-1] == 100
    assert 40 <= balanced[3] <= 60 and np.all(np.diff(balanced) >= 0)


def test_fit_bins_with_classes_encodes_monotonically_within_the_range() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5000, 3)).astype(np.float32)
    classes = (rows[:, 0] > 1.5).astype(np.int64)  # a rare class (~7 %)
    head = VoxelHead(features=3, hidden=8, classes=2, bins=8)
    head.fit_bins(rows, classes)
    assert torch.all(head.width > 0)
    low, high = torch.tensor([[-10.0, 0.0, 0.0]]), torch.tensor([[10.0, 0.0, 0.0]])
    # Feature 0's encoding is all zeros below the painted range and all ones above it.
    assert head.encode(low).reshape(8, 3)[:, 0].sum() == 0
    assert head.encode(high).reshape(8, 3)[:, 0].sum() == 8
    # More of feature 0's edges lie above 1.5 than plain quantiles would give (1 in 8 at most).
    assert int((head.lower[:, 0] > 1.5).sum()) >= 3


def test_the_model_output_is_the_product_of_its_two_experts() -> None:
    from napari_sparse_unet.core.config import ModelConfig
    from napari_sparse_unet.core.network.model import build_model

    config = ModelConfig(3, 1, 3, ((1, 2, 2),), base_channels=4, sigmas=((0.0, 1.0, 1.0),), voxel_head_width=8)
    network = build_model(config).eval()
    torch.manual_seed(0)
    features = network.filters(torch.randn(1, 1, 2 + 2 * network.input_halo[0], 8 + 2 * network.input_halo[1], 8 + 2 * network.input_halo[2]))
    with torch.no_grad():
        unet, voxel = network.experts(features)
        combined = network.classify(features)
    assert voxel is not None and unet.shape == voxel.shape == combined.shape
    expected = torch.log_softmax(unet, 1) + torch.log_softmax(voxel, 1)
    assert torch.allclose(combined, expected, atol=1e-5)
    assert not torch.allclose(combined, torch.log_softmax(unet, 1), atol=1e-3)  # the head counts
    network.train()
    assert network.experts(features)[1] is None  # training: each expert on its own loss


def test_inference_reads_the_first_layer_from_its_knot_table_with_the_encodings_numbers() -> None:
    # Bins from data with ties (a third of the rows at exactly 0, as zero padding gives), values beyond the edges.
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(3000, 5)).astype(np.float32)
    rows[:1000] = 0.0
    classes = rng.integers(0, 3, 3000)
    head = VoxelHead(features=5, hidden=16, classes=3, bins=8)
    head.fit_bins(rows, classes)
    torch.manual_seed(0)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    maps = torch.from_numpy(np.concatenate([rows[:960], 4 * rng.normal(size=(960, 5)).astype(np.float32)]).T.copy())
    maps = maps.reshape(1, 5, 12, 10, 16)
    head.eval()
    with torch.no_grad():
        expected = head.rows(maps.movedim(1, -1).reshape(-1, 5)).reshape(12, 10, 16, 3).movedim(-1, 0)[None]
        tabled = head(maps)
    assert tabled.shape == (1, 3, 12, 10, 16)
    assert torch.allclose(tabled, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    head.train()
    with torch.no_grad():
        assert torch.allclose(head(maps), expected, rtol=1e-5, atol=1e-5)  # training: the encoding itself


def test_bfloat16_features_are_looked_up_by_their_bits_with_the_float32_numbers() -> None:
    # Prediction keeps the filter features in bfloat16 on CPUs that compute in it natively: every
    # bfloat16 value's segment is tabulated once, and must give what the float32 path gives that value.
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(3000, 4)).astype(np.float32)
    rows[:800] = 0.0  # ties, as zero padding gives
    head = VoxelHead(features=4, hidden=8, classes=3, bins=8)
    head.fit_bins(rows, rng.integers(0, 3, 3000))
    torch.manual_seed(1)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    values = np.concatenate([rows[:500], 5 * rng.normal(size=(500, 4)).astype(np.float32)])
    maps = torch.from_numpy(values.T.copy()).reshape(1, 4, 10, 10, 10).bfloat16()
    head.eval()
    with torch.no_grad():
        looked_up = head(maps)
        expected = head(maps.float())
    assert torch.allclose(looked_up, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_a_copy_of_a_head_finds_its_table_and_a_changed_head_gets_a_new_one() -> None:
    # Prediction runs on a copy of the model: the table (and its bfloat16 lookup, the costly part)
    # is keyed by the weights, so a copy reuses it and a trained step never reads a stale one.
    import copy

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(500, 3)).astype(np.float32)
    head = VoxelHead(features=3, hidden=8, classes=2, bins=4)
    head.fit_bins(rows, rng.integers(0, 2, 500))
    table = head._cached_knot_table()
    assert copy.deepcopy(head)._cached_knot_table() is table
    with torch.no_grad():
        head.mlp[0].weight[0, 0] += 1.0
    changed = head._cached_knot_table()
    assert changed is not table
    assert not torch.equal(changed.start, table.start)
