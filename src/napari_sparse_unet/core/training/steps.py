"""One training step's pieces: the loss of a batch, the model's view of it, the optimiser's groups.

Patches are (N, C, *patch) tensors, targets (N, *patch) with -1 where unpainted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..device import autocast, non_blocking_copy
from .losses import sparse_segmentation_loss
from .sampling import PatchSampler
from .training_data import VoxelBatches

# The voxel head's learning rate relative to the U-Net's.
VOXEL_HEAD_LR_SCALE = 0.3


@dataclass
class Steps:
    """What the training loop steps with: the network on its device, where batches come from, and the step's loss.

    ``features``: patches hold filter features already (else the network filters them);
    ``batch_size`` patches a step, ``dice_weight`` of the soft Dice in the loss.
    """

    network: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    sampler: PatchSampler
    weights: torch.Tensor
    voxel_batches: VoxelBatches | None
    features: bool
    batch_size: int
    dice_weight: float

    def loss(self, *, head_only: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's loss, and the model's log-probabilities and targets on the painted voxels it saw."""
        device, network = self.device, self.network
        if head_only:
            # The per-voxel classifier alone first: thousands of painted voxels a step, milliseconds each.
            # The U-Net's logits are still zero (model.TwoExpertNetwork), so the model's probabilities are the head's.
            assert self.voxel_batches is not None
            with autocast(device, self.amp_dtype):
                loss, shown, shown_target = self.voxel_batches()
            return loss, shown.detach(), shown_target
        x, y = self.sampler.batch(self.batch_size)
        non_blocking = non_blocking_copy(device)
        x_t = torch.from_numpy(x).to(device, non_blocking=non_blocking).contiguous(memory_format=self.memory_format)
        y_t = torch.from_numpy(y).to(device, non_blocking=non_blocking)
        with autocast(device, self.amp_dtype):
            features = x_t if self.features or network.filters is None else network.filters(x_t)
            logits = network.classify(features)
            loss = sparse_segmentation_loss(logits, y_t, self.weights, self.dice_weight)
            if self.voxel_batches is not None:
                loss = loss + self.voxel_batches()[0]
        return (loss, *as_predicted(network, features, logits, y_t))

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches: int = 16) -> None:
        """Batch-norm running statistics as the plain average over fresh training batches ("precise BN").

        During training they are an exponential average over a few recent, noisy
        batches of weights that kept changing; prediction uses them for every tile.
        """
        norms = [m for m in self.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        for _ in range(batches):
            x, _ = self.sampler.batch(self.batch_size)
            x_t = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)
            self.network.classify(x_t) if self.features else self.network(x_t)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def as_predicted(
    network: torch.nn.Module, features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's log-probabilities as it predicts (U-Net times voxel head) at a batch's painted voxels.

    ``features`` (N, F, *s) and ``logits`` (N, K, *s) are the U-Net's input and
    output, ``target`` (N, *s) is -1 where unpainted.  Returns ((M, K), (M,)) for
    the M painted voxels; without a voxel head, the U-Net's (N, K, *s) logits and ``target``.
    """
    head = getattr(network, "voxel_head", None)
    if head is None:
        return logits.detach().float(), target
    painted = target >= 0
    unet = logits.detach().float().movedim(1, -1)[painted]
    voxel = head.rows(features.detach().float().movedim(1, -1)[painted])
    return torch.log_softmax(unet, 1) + torch.log_softmax(voxel.float(), 1), target[painted]


def parameter_groups(network: torch.nn.Module) -> list[dict[str, Any]]:
    """The U-Net's parameters at the base learning rate, the voxel head's at a third of it.

    The voxel head is an MLP fed thousands of voxels a step; 1e-2 made it noisy
    where 3e-3 converged (measured on the shared MRI and CT).
    """
    head = getattr(network, "voxel_head", None)
    own = set(map(id, head.parameters())) if head is not None else set()
    groups = [{"params": [p for p in network.parameters() if id(p) not in own], "lr_scale": 1.0}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr_scale": VOXEL_HEAD_LR_SCALE})
    return groups
