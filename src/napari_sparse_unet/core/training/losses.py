"""Masked, class-weighted losses for sparse annotations.

``logits`` are (N, K, *spatial); ``target`` is (N, *spatial) int64 holding the
class index, or -1 where the voxel is not annotated.  The activation comes
first and the mask second, so unannotated voxels contribute exactly nothing
to the loss or to any gradient, and every term is normalised by the annotated
amount, not by the patch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _detach_unannotated(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 logits with unannotated voxels replaced by 0.

    This is not the masking itself (that happens after the activation, below):
    it only guarantees that a NaN/Inf or any value at an unannotated voxel can
    never reach the softmax's backward pass, so those gradients are exactly 0.
    """
    return torch.where(mask.unsqueeze(1), logits.float(), torch.zeros((), dtype=torch.float32, device=logits.device))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy over annotated voxels, divided by their total weight.

    With every voxel annotated this equals ``F.cross_entropy(logits, target, weight=w)``.
    Returns 0 (connected to the graph) when nothing is annotated.
    """
    mask = target >= 0
    safe_target = target.clamp(min=0)
    log_prob = F.log_softmax(_detach_unannotated(logits, mask), dim=1)
    nll = -log_prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    weight = mask.to(nll.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(nll.device, nll.dtype)[safe_target]
    total = weight.sum()
    # where() rather than multiplication keeps a NaN/Inf at an unannotated voxel out of the sum.
    weighted = torch.where(mask, weight * nll, torch.zeros_like(nll)).sum()
    return weighted / total.clamp(min=1e-8)


def masked_soft_dice(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over the classes annotated in this batch, on annotated voxels only.

    Dice is pooled over the batch (one score per class), which is stable when a
    patch holds few voxels of a class.  Returns 0 when no scored class is annotated.
    """
    num_classes = logits.shape[1]
    mask = (target >= 0).unsqueeze(1)
    prob = torch.softmax(_detach_unannotated(logits, mask.squeeze(1)), dim=1)
    prob = torch.where(mask, prob, torch.zeros_like(prob))
    one_hot = F.one_hot(target.clamp(min=0), num_classes).movedim(-1, 1).to(prob.dtype) * mask
    dims = [0] + list(range(2, logits.ndim))
    intersection = (prob * one_hot).sum(dims)
    reference = one_hot.sum(dims)
    predicted = prob.sum(dims)
    first = 0 if include_background else 1
    present = reference[first:] > 0
    if not bool(present.any()):
        return prob.sum() * 0.0
    dice = (2 * intersection[first:] + 1e-5) / (reference[first:] + predicted[first:] + 1e-5)
    return 1.0 - dice[present].mean()


def sparse_segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Masked weighted cross-entropy plus ``dice_weight`` × masked soft Dice."""
    loss = masked_cross_entropy(logits, target, class_weights)
    if dice_weight > 0:
        loss = loss + dice_weight * masked_soft_dice(logits, target)
    return loss
