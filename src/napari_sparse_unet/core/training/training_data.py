"""The training data: volumes cut into patches, their filter features, painted-voxel rows, a held-out slice.

Images are (C, Z, Y, X) / (C, Y, X); targets have the spatial shape, a class
index per voxel and -1 where unpainted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..data import Normalization, annotation_to_target
from ..errors import InputError
from ..network.filters import FilterBank, filter_volume
from .losses import masked_cross_entropy
from ..metrics import dice_per_class, mean_dice
from ..rules import check_annotation_of, painted_values, unknown_labels_problem
from .sampling import PatchSampler, TrainingVolume, crop_with_padding
from ..network.voxel_head import painted_feature_rows

# Hold out a slice for validation only when this many annotated slices exist,
# so a user who painted three slices trains on all three.
MIN_SLICES_FOR_VALIDATION = 6
# Filter features of the training images are computed once when they take at most this
# much memory (float16), else every patch is filtered anew.
FEATURE_MEMORY_BYTES = 2 * 2**30
# The voxel head draws its batches from at most this many painted voxels (4·F bytes each).
MAX_VOXEL_ROWS = 2_000_000
# A Z plane counts as painted when it holds at least this share of the most painted plane's voxels.
PAINTED_PLANE_FRACTION = 0.25

VoxelBatches = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Validation:
    """A held-out annotated slice: input crop (1, C, *crop) and its target (*crop), -1 elsewhere.

    The slice is Z plane ``z`` of volume ``volume``; the crop starts at ``start`` with size ``size``.
    """

    image: torch.Tensor
    target: np.ndarray
    volume: int
    z: int
    start: tuple[int, ...]
    size: tuple[int, ...]

    def take_out(self, targets: list[np.ndarray]) -> None:
        """Set :attr:`target` from the held-out slice of ``targets`` and remove that slice from them."""
        v, z = self.volume, self.z
        crop_target = np.full(self.size, -1, dtype=np.int64)
        # Only the held-out slice is scored; it sits at index z - start[0] of the crop.
        slice_target = crop_with_padding(
            targets[v][z : z + 1], [0, self.start[1], self.start[2]], [1, self.size[1], self.size[2]], fill=-1
        )
        crop_target[z - self.start[0]] = slice_target[0]
        self.target = crop_target
        targets[v][z] = -1


class TrainingData:
    """What the training loop learns from, for one set of annotations at a time.

    Args:
        images_cf: the images, (C, Z, Y, X) / (C, Y, X).
        annotations: one per image, checked, 0 = not annotated.
        class_values: the painted value of each class, background first.
        normalization: the model's intensity normalisation.
        model_config: the network trained.
        patch_size: the training patch in array order.
        config: training settings (seed, validation, augmentation, voxel batch).
    """

    def __init__(
        self,
        images_cf: list[Any],
        annotations: Sequence[np.ndarray],
        *,
        class_values: tuple[int, ...],
        normalization: Normalization,
        model_config: ModelConfig,
        patch_size: tuple[int, ...],
        config: TrainConfig,
    ) -> None:
        self.config = config
        self.class_values = class_values
        self.normalization = normalization
        self.model_config = model_config
        self.patch_size = patch_size
        targets = [annotation_to_target(a, class_values).astype(np.int16) for a in annotations]
        self.validation = self._hold_out(images_cf, targets) if config.validation else None
        bank = model_config.filter_bank()
        # Whether patches are cut from precomputed filter features rather than from the raw images.
        self.features = bank is not None and feature_bank_fits(bank, model_config.in_channels, images_cf)
        # Which features a brightness shift moves, for the sampler's intensity augmentation of features.
        self._level_mask = bank.level_mask(model_config.in_channels) if bank is not None and self.features else None
        if self.features:
            images_cf = [filter_volume(bank, normalization.apply(image)) for image in images_cf]
        self._bank = bank
        self._images = images_cf  # what patches are cut from: features, or the raw images
        # Bumped by update; the training loop rebuilds its sampler and voxel batches when it changes.
        self.version = 0
        self._set_targets(targets)

    def _set_targets(self, targets: list[np.ndarray]) -> None:
        """Volumes and painted-voxel rows for ``targets`` (class index per voxel, -1 unpainted)."""
        self.voxel_rows: tuple[np.ndarray, np.ndarray] | None = None
        if self.model_config.voxel_head_width:
            self.voxel_rows = painted_feature_rows(
                self._images, targets, None if self.features else self._bank, self.normalization.apply,
                MAX_VOXEL_ROWS, np.random.default_rng(self.config.seed + self.version),
            )
        self.volumes = [TrainingVolume(image, target) for image, target in zip(self._images, targets)]
        self.painted_voxels = sum(int(np.count_nonzero(t >= 0)) for t in targets)

    def update(self, annotations: Sequence[Any]) -> None:
        """Learn from ``annotations`` (one per image, checked as at the start, only known labels) from now on.

        Raises:
            InputError: a bad annotation or a label the model does not know; the data stay unchanged.
        """
        if len(annotations) != len(self.volumes):
            raise InputError(f"expected {len(self.volumes)} annotation(s), one per image, got {len(annotations)}")
        checked = [check_annotation_of(a, v.target.shape) for a, v in zip(annotations, self.volumes)]
        problem = unknown_labels_problem(painted_values([counts for _, counts in checked]), self.class_values)
        if problem:
            raise InputError(f"cannot learn what was painted while training: {problem}")
        targets = [annotation_to_target(a, self.class_values).astype(np.int16) for a, _ in checked]
        if self.validation is not None:
            self.validation.take_out(targets)
        if not any((t >= 0).any() for t in targets):
            raise InputError("nothing is painted outside the held-out validation slice")
        self.version += 1
        self._set_targets(targets)

    def _hold_out(self, images_cf: list[Any], targets: list[np.ndarray]) -> Validation | None:
        """Move one annotated Z slice out of the training targets, for validation Dice."""
        if targets[0].ndim != 3:
            return None
        # Count Z planes that are substantially painted, not ones crossed by a Y or X plane's line.
        coverage = [(t >= 0).mean(axis=(1, 2)) for t in targets]
        annotated = [np.flatnonzero(c >= max(PAINTED_PLANE_FRACTION * c.max(), 1e-12)) for c in coverage]
        if sum(len(a) for a in annotated) < MIN_SLICES_FOR_VALIDATION:
            return None
        v = int(np.argmax([len(a) for a in annotated]))
        z = int(annotated[v][len(annotated[v]) // 2])
        plane = targets[v][z]
        if len(np.unique(plane[plane >= 0])) < 2:
            return None
        ys, xs = np.nonzero(plane >= 0)
        multiple = self.model_config.size_multiple()
        size, start = [], []
        for axis, (lo, hi, cap) in enumerate([(z, z + 1, self.patch_size[0]), (ys.min(), ys.max() + 1, 2 * self.patch_size[1]), (xs.min(), xs.max() + 1, 2 * self.patch_size[2])]):
            extent = cap if axis == 0 else min(cap, hi - lo)
            extent = int(math.ceil(extent / multiple[axis]) * multiple[axis])
            size.append(extent)
            start.append(int((lo + hi) // 2 - extent // 2))
        halo = self.model_config.input_halo
        image = self.normalization.apply(
            crop_with_padding(images_cf[v], [s - h for s, h in zip(start, halo)], [n + 2 * h for n, h in zip(size, halo)], fill=None)
        )
        validation = Validation(torch.from_numpy(image)[None], np.zeros(0), v, z, tuple(start), tuple(size))
        kept = targets[v][z].copy()
        validation.take_out(targets)
        if not any((t >= 0).any() for t in targets):
            targets[v][z] = kept
            return None
        return validation

    @torch.no_grad()
    def validation_dice(self, network: torch.nn.Module, device: torch.device) -> float:
        """Mean foreground Dice (hard labels) of ``network`` on the held-out slice."""
        assert self.validation is not None
        was_training = network.training
        network.eval()
        logits = network(self.validation.image.to(device))
        network.train(was_training)
        predicted = logits.argmax(1)[0].cpu().numpy()
        target = self.validation.target
        return mean_dice(dice_per_class(predicted, target, range(1, len(self.class_values)), where=target >= 0))

    def sampler(self, rng: np.random.Generator) -> PatchSampler:
        """A patch sampler over the current volumes."""
        config = self.config
        return PatchSampler(
            self.volumes,
            self.patch_size,
            len(self.class_values),
            normalize=_as_float32 if self.features else self.normalization.apply,
            rng=rng,
            augment=config.augment,
            halo=(0,) * self.model_config.spatial_dims if self.features else self.model_config.input_halo,
            intensity_strength=config.intensity_augment,
            level_mask=self._level_mask,
        )

    def voxel_batches(
        self, network: torch.nn.Module, device: torch.device, weights: torch.Tensor, *, fit_bins: bool
    ) -> VoxelBatches | None:
        """A function giving (loss, logits, target) of a fresh batch of painted voxels; None without a voxel head.

        ``fit_bins``: set the head's bin edges from the painted voxels (a new model only: the
        edges of a trained head are part of what it learned).
        """
        head = getattr(network, "voxel_head", None)
        if head is None or self.voxel_rows is None or len(self.voxel_rows[1]) == 0:
            return None
        rows, classes = self.voxel_rows
        if fit_bins:
            head.fit_bins(rows, classes)
        rows_t = torch.from_numpy(rows).to(device)
        classes_t = torch.from_numpy(classes).to(device)
        generator = torch.Generator().manual_seed(self.config.seed + self.version)
        size = min(self.config.voxel_batch, len(classes))

        def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            pick = torch.randint(0, len(classes), (size,), generator=generator).to(device)
            logits = head.rows(rows_t[pick])
            target = classes_t[pick]
            return masked_cross_entropy(logits, target, weights), logits, target

        return batch


def feature_bank_fits(bank: FilterBank, channels: int, images_cf: Sequence[Any]) -> bool:
    """Whether the filter features of every training image fit in memory, computed once.

    Then each step reads features instead of filtering a haloed patch again;
    otherwise patches carry the halo and the network filters them itself.
    """
    per_voxel = 2 * channels * bank.features_per_channel  # float16
    voxels = sum(int(np.prod(image.shape[1:])) for image in images_cf)
    return voxels * per_voxel <= FEATURE_MEMORY_BYTES


def _as_float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)
