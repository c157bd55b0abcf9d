"""Masked losses: unannotated voxels contribute nothing; full annotation equals the unmasked form."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sparse_unet.core.training.losses import (
    masked_cross_entropy,
    masked_soft_dice,
    sparse_segmentation_loss,
)


def _batch(seed: int = 0, annotated_fraction: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    unannotated = torch.rand(2, 4, 5, 6, generator=g) > annotated_fraction
    target[unannotated] = -1
    return logits, target


def test_changing_unannotated_predictions_changes_neither_loss_nor_gradient():
    logits, target = _batch()
    weights = torch.tensor([1.0, 2.0, 5.0])
    a = logits.clone().requires_grad_(True)
    loss_a = sparse_segmentation_loss(a, target, weights, dice_weight=1.0)
    loss_a.backward()

    changed = logits.clone()
    unannotated = (target < 0).unsqueeze(1).expand_as(changed)
    changed[unannotated] = torch.randn(int(unannotated.sum())) * 50  # wildly different predictions there
    b = changed.requires_grad_(True)
    loss_b = sparse_segmentation_loss(b, target, weights, dice_weight=1.0)
    loss_b.backward()

    assert torch.equal(loss_a, loss_b)
    assert torch.equal(a.grad, b.grad)
    assert torch.count_nonzero(a.grad[unannotated]) == 0
    assert torch.count_nonzero(a.grad[~unannotated]) > 0


def test_nan_at_unannotated_voxels_does_not_leak():
    logits, target = _batch(1)
    logits[(target < 0).unsqueeze(1).expand_as(logits)] = float("nan")
    x = logits.requires_grad_(True)
    loss = sparse_segmentation_loss(x, target, dice_weight=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


def test_fully_annotated_cross_entropy_equals_torch_weighted_mean():
    logits, target = _batch(2, annotated_fraction=1.1)
    assert (target >= 0).all()
    weights = torch.tensor([1.0, 3.0, 7.0])
    expected = F.cross_entropy(logits, target, weight=weights)
    assert torch.allclose(masked_cross_entropy(logits, target, weights), expected, atol=1e-6)
    assert torch.allclose(masked_cross_entropy(logits, target), F.cross_entropy(logits, target), atol=1e-6)


def test_fully_annotated_dice_equals_unmasked_soft_dice():
    logits, target = _batch(3, annotated_fraction=1.1)
    prob = torch.softmax(logits, 1)
    one_hot = F.one_hot(target, 3).movedim(-1, 1).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (prob * one_hot).sum(dims) + 1e-5) / (prob.sum(dims) + one_hot.sum(dims) + 1e-5)
    expected = 1 - dice[1:].mean()
    assert torch.allclose(masked_soft_dice(logits, target), expected, atol=1e-6)


def test_loss_is_normalised_by_annotated_amount_not_patch_size():
    logits, target = _batch(4, annotated_fraction=1.1)
    # Same annotated voxels embedded in a patch twice as large, the rest unannotated.
    big_logits = torch.cat([logits, torch.randn_like(logits)], dim=-1)
    big_target = torch.cat([target, torch.full_like(target, -1)], dim=-1)
    assert torch.allclose(masked_cross_entropy(logits, target), masked_cross_entropy(big_logits, big_target), atol=1e-6)
    assert torch.allclose(masked_soft_dice(logits, target), masked_soft_dice(big_logits, big_target), atol=1e-6)


def test_hand_computed_cross_entropy():
    # Two annotated voxels, one unannotated; logits chosen so log-softmax is easy.
    logits = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 0.0, -5.0]]])  # (N=1, K=2, X=3)
    target = torch.tensor([[0, 1, -1]])
    weights = torch.tensor([1.0, 3.0])
    # Each annotated voxel has p = 0.5 for its class: nll = ln 2; weighted mean = ln 2.
    assert masked_cross_entropy(logits, target, weights).item() == pytest.approx(np.log(2), abs=1e-6)


def test_nothing_annotated_gives_zero_and_a_graph():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), -1)
    loss = sparse_segmentation_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0
