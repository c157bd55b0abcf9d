"""Training from sparse annotations, as a generator of small events.

Headless code iterates :meth:`Trainer.run` (or calls :func:`train`); the
napari widget wraps the same generator in a worker thread, whose cancel closes
the generator at the next ``yield``.  Closing at any yield is safe: the best
model so far stays available as :attr:`Trainer.best_model`.

Images are (Z, Y, X) / (C, Z, Y, X) (or 2-D (Y, X) / (C, Y, X)); annotations
have the spatial shape, 0 = not annotated, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Generator, Sequence

import numpy as np
import torch

from .checkpoint import SegmentationModel
from .config import ModelConfig, TrainConfig
from .data import annotation_to_target, fit_normalization
from .errors import InputError
from .generators import run_to_end
from .metrics import dice_per_class, mean_dice
from .rules import (
    check_annotation_of, check_network_size, check_spacing, check_training_pair, finetune_problem, painted_values,
    unknown_labels_problem,
)
from .device import autocast, autocast_dtype, preferred_memory_format, resolve_device
from .filters import FilterBank, axis_sigmas, filter_volume
from .losses import masked_cross_entropy, sparse_segmentation_loss
from .model import build_model, choose_patch_size, plan_network
from .sampling import PatchSampler, TrainingVolume, crop_with_padding
from .voxel_head import painted_feature_rows
from .warmup import HeadWarmup

# Hold out a slice for validation only when this many annotated slices exist,
# so a user who painted three slices trains on all three.
MIN_SLICES_FOR_VALIDATION = 6
# Filter features of the training images are computed once when they take at most this
# much memory (float16), else every patch is filtered anew.
FEATURE_MEMORY_BYTES = 2 * 2**30
# The voxel head draws its batches from at most this many painted voxels (4·F bytes each).
MAX_VOXEL_ROWS = 2_000_000
# The voxel head's learning rate relative to the U-Net's.
VOXEL_HEAD_LR_SCALE = 0.3
# A Z plane counts as painted when it holds at least this share of the most painted plane's voxels.
PAINTED_PLANE_FRACTION = 0.25


@dataclass(frozen=True)
class TrainEvent:
    """Progress after one optimisation step.

    ``val_dice`` is the mean foreground Dice on the held-out slice, set on the
    steps where it was measured.  ``fit_dice`` is the mean foreground Dice of the
    network's argmax on the painted voxels of the last training batches: how well
    the painting is fitted, available without holding any of it out.  ``loss`` is
    the cross-entropy on the painted voxels of the step's batch.  Both are the
    model's as it predicts (the product of the U-Net's and the voxel head's
    probabilities), not one expert's, so the curve does not jump when the U-Net
    joins the voxel head.
    """

    step: int
    max_steps: int
    loss: float
    learning_rate: float
    elapsed: float
    progress: float
    val_dice: float | None = None
    fit_dice: float | None = None


class RunningDice:
    """Foreground Dice of argmax predictions on painted voxels, pooled over the last ``window`` batches.

    Counts are per class index (0 = background, not scored); ``target`` is -1 where unpainted.
    """

    def __init__(self, num_classes: int, window: int = 20) -> None:
        self.num_classes = num_classes
        self.window = window
        self._counts: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        mask = target >= 0
        predicted = logits.argmax(1)[mask]
        truth = target[mask]
        k = self.num_classes
        # Row: intersection, predicted, truth; one column per class.
        counts = torch.stack([
            torch.bincount(truth[predicted == truth], minlength=k),
            torch.bincount(predicted, minlength=k),
            torch.bincount(truth, minlength=k),
        ]).cpu().numpy()
        self._counts = (self._counts + [counts])[-self.window:]

    def mean_foreground(self) -> float | None:
        if not self._counts:
            return None
        both, predicted, truth = np.sum(self._counts, axis=0)[:, 1:]
        scored = (predicted + truth) > 0
        if not scored.any():
            return None
        return float(np.mean(2.0 * both[scored] / (predicted[scored] + truth[scored])))


@dataclass
class _Validation:
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


class Trainer:
    """Trains (or fine-tunes) a U-Net on sparse annotations.

    Args:
        images: one or more images, (Z, Y, X) / (C, Z, Y, X) or 2-D, any dtype.
        annotations: one per image, same spatial shape, integer labels.
        config: training settings.
        spacing: voxel spacing in array order; anisotropy shapes the network and patch.
        initial: a model to fine-tune; its classes, normalisation and architecture are kept.
        class_names: a name per painted value, background first.

    Raises:
        InputError: for inputs that cannot be trained on, with the offending values.
    """

    def __init__(
        self,
        images: Sequence[Any],
        annotations: Sequence[Any],
        config: TrainConfig = TrainConfig(),
        spacing: Sequence[float] | None = None,
        initial: SegmentationModel | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if len(images) == 0 or len(images) != len(annotations):
            raise InputError(f"expected one annotation per image, got {len(images)} images and {len(annotations)} annotations")
        pairs = [check_training_pair(image, annotation) for image, annotation in zip(images, annotations)]
        images_cf = [p[0] for p in pairs]
        annotations = [p[1] for p in pairs]
        painted = painted_values([p[2] for p in pairs])
        dims = annotations[0].ndim
        channels = images_cf[0].shape[0]
        for image_cf, annotation in zip(images_cf, annotations):
            if annotation.ndim != dims or image_cf.shape[0] != channels:
                raise InputError(
                    f"all images must have the same dimensionality and channels; got {dims}-D with {channels} channel(s) "
                    f"and {annotation.ndim}-D with {image_cf.shape[0]} channel(s)"
                )
        spacing = check_spacing(spacing, dims)
        self.config = config
        self.spacing = spacing
        self.device = resolve_device(config.device)

        if initial is not None:
            problem = finetune_problem(initial, images_cf[0].shape, painted)
            if problem:
                raise InputError(problem)
            self.class_values = initial.class_values
            self.normalization = initial.normalization
            self.model_config = initial.model_config
            self.class_names = initial.class_names
            self.spacing = spacing if spacing is not None else initial.spacing
        else:
            self.class_values = painted
            self.normalization = fit_normalization(images_cf, seed=config.seed, equalize=config.equalize)
            pool_factors, conv_kernels = plan_network(spacing, config.depth, dims)
            conv_kernels = ((1,) * dims, *conv_kernels[1:])  # the full-resolution level is per-voxel, on the filter features
            self.model_config = ModelConfig(
                spatial_dims=dims,
                in_channels=channels,
                num_classes=len(self.class_values),
                pool_factors=pool_factors,
                base_channels=config.base_channels,
                norm=config.norm,
                conv_kernels=conv_kernels,
                filter_sigmas=axis_sigmas(config.filter_scales, spacing, dims),
                context_sigmas=axis_sigmas(config.context_scales, spacing, dims) if config.filter_scales else (),
                widths=None if config.channel_growth is None else tuple(
                    int(round(config.base_channels * config.channel_growth**level)) for level in range(config.depth + 1)
                ),
                voxel_head=config.voxel_head if config.filter_scales else 0,
                filter_hessian=config.filter_hessian,
            )
            default_names = ["background"] + [f"class {v}" for v in self.class_values[1:]]
            self.class_names = tuple(class_names) if class_names is not None else tuple(default_names)
        if len(self.class_names) != len(self.class_values):
            raise InputError(f"got {len(self.class_names)} class names for {len(self.class_values)} classes {list(self.class_values)}")

        self.patch_size = training_patch_size(config, self.model_config, annotations, self.spacing)
        targets = [annotation_to_target(a, self.class_values).astype(np.int16) for a in annotations]
        self._validation = self._hold_out(images_cf, targets) if config.validation else None
        bank = self.model_config.filter_bank()
        self._features = bank is not None and feature_bank_fits(bank, self.model_config.in_channels, images_cf)
        # Which features a brightness shift moves, for the sampler's intensity augmentation of features.
        self._level_mask = bank.level_mask(self.model_config.in_channels) if bank is not None and self._features else None
        if self._features:
            images_cf = [filter_volume(bank, self.normalization.apply(image)) for image in images_cf]
        self._bank = bank
        self._images = images_cf  # what patches are cut from: features, or the raw images
        # Bumped by update_annotations; the training loop rebuilds its sampler and voxel batches when it changes.
        self._data_version = 0
        self._set_targets(targets)
        self._initial = initial
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_score = -math.inf
        self._best_cache: SegmentationModel | None = None
        self._network: torch.nn.Module | None = None
        # The step at which the U-Net joined the voxel head (core.warmup); None while the head trains alone.
        self.unet_joined_at: int | None = None
        self._history: dict[str, Any] = {}

    # ----------------------------------------------------------- training data
    def _set_targets(self, targets: list[np.ndarray]) -> None:
        """The training data for ``targets`` (class index per voxel, -1 unpainted): volumes and painted-voxel rows."""
        self._voxel_rows: tuple[np.ndarray, np.ndarray] | None = None
        if self.model_config.voxel_head:
            self._voxel_rows = painted_feature_rows(
                self._images, targets, None if self._features else self._bank, self.normalization.apply,
                MAX_VOXEL_ROWS, np.random.default_rng(self.config.seed + self._data_version),
            )
        self.volumes = [TrainingVolume(image, target) for image, target in zip(self._images, targets)]
        self._painted_voxels = sum(int(np.count_nonzero(t >= 0)) for t in targets)

    @property
    def painted_voxels(self) -> int:
        """Painted voxels the training steps learn from (the held-out validation slice not counted)."""
        return self._painted_voxels

    def update_annotations(self, annotations: Sequence[Any]) -> int:
        """Train on ``annotations`` (one per image, as given at start) from the next step on.

        For corrections painted while training runs: call it between steps (from
        the thread that iterates :meth:`run`).  The annotations are checked with
        the rules they were checked with at the start, and may only use the
        labels the model has.  The network, optimiser and voxel-head bin edges
        carry on; the best model is chosen anew among those trained on the new
        annotations.  Returns :attr:`painted_voxels`.

        Raises:
            InputError: a bad annotation or a label the model does not know; training goes on unchanged.
        """
        if len(annotations) != len(self.volumes):
            raise InputError(f"expected {len(self.volumes)} annotation(s), one per image, got {len(annotations)}")
        checked = [check_annotation_of(a, v.target.shape) for a, v in zip(annotations, self.volumes)]
        problem = unknown_labels_problem(painted_values([counts for _, counts in checked]), self.class_values)
        if problem:
            raise InputError(f"cannot learn what was painted while training: {problem}")
        targets = [annotation_to_target(a, self.class_values).astype(np.int16) for a, _ in checked]
        if self._validation is not None:
            self._validation.take_out(targets)
        if not any((t >= 0).any() for t in targets):
            raise InputError("nothing is painted outside the held-out validation slice")
        self._data_version += 1
        self._set_targets(targets)
        self._best_score = -math.inf
        return self.painted_voxels

    # ----------------------------------------------------------------- setup
    def _hold_out(self, images_cf: list[Any], targets: list[np.ndarray]) -> _Validation | None:
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
        validation = _Validation(torch.from_numpy(image)[None], np.zeros(0), v, z, tuple(start), tuple(size))
        kept = targets[v][z].copy()
        validation.take_out(targets)
        if not any((t >= 0).any() for t in targets):
            targets[v][z] = kept
            return None
        return validation

    # ----------------------------------------------------------------- models
    def _snapshot(self, network: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}

    def _model_from_state(self, state: dict[str, torch.Tensor]) -> SegmentationModel:
        network = build_model(self.model_config)
        network.load_state_dict(state)
        network.eval()
        return SegmentationModel(
            network=network,
            model_config=self.model_config,
            train_config=self.config,
            normalization=self.normalization,
            class_values=self.class_values,
            class_names=self.class_names,
            spacing=self.spacing,
            patch_size=self.patch_size,
            history=dict(self._history),
        )

    @property
    def best_model(self) -> SegmentationModel | None:
        """The best model so far (by validation Dice when measured, else the latest good one)."""
        if self._best_state is None:
            return None
        if self._best_cache is None:
            self._best_cache = self._model_from_state(self._best_state)
        return self._best_cache

    def current_model(self) -> SegmentationModel:
        """A snapshot of the live weights, for previews; call it between steps (same thread)."""
        if self._network is None:
            if self._initial is not None:
                return self._initial.copy()
            raise RuntimeError("training has not started")
        return self._model_from_state(self._snapshot(self._network))

    def _keep(self, network: torch.nn.Module, score: float) -> None:
        if score >= self._best_score:
            self._best_score = score
            self._best_state = self._snapshot(network)
            self._best_cache = None

    @torch.no_grad()
    def _validate(self, network: torch.nn.Module) -> float:
        """Mean foreground Dice (hard labels) on the held-out slice."""
        assert self._validation is not None
        was_training = network.training
        network.eval()
        logits = network(self._validation.image.to(self.device))
        network.train(was_training)
        predicted = logits.argmax(1)[0].cpu().numpy()
        target = self._validation.target
        return mean_dice(dice_per_class(predicted, target, range(1, len(self.class_values)), where=target >= 0))

    # ----------------------------------------------------------------- loop
    def run(self) -> Generator[TrainEvent, None, SegmentationModel]:
        """Train, yielding a :class:`TrainEvent` after every step; returns the best model."""
        config = self.config
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        device = self.device
        network = copy.deepcopy(self._initial.network) if self._initial is not None else build_model(self.model_config)
        amp_dtype = autocast_dtype(device, config.mixed_precision, training=True)
        memory_format = preferred_memory_format(device, amp_dtype, self.model_config.spatial_dims)
        network.to(device=device, memory_format=memory_format).train()
        self._network = network
        version = self._data_version
        sampler, weights, voxel_batches = self._training_data(network, device, rng, fit_bins=self._initial is None)
        # The voxel head alone first gives a model within seconds while the U-Net is untrained;
        # a model being fine-tuned has both experts trained already.
        warmup = HeadWarmup(config.voxel_warmup if self._initial is None and voxel_batches is not None else 0.0)
        self.unet_joined_at = 0 if warmup.joined else None
        optimizer = torch.optim.AdamW(_parameter_groups(network), lr=config.learning_rate, weight_decay=config.weight_decay)
        # float16 needs loss scaling against underflow; bfloat16 has float32's range.
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        previous_steps = int(self._initial.history.get("steps", 0)) if self._initial is not None else 0
        if self._initial is not None and self._validation is not None:
            self._score_and_keep(network)  # a fine-tuned model is kept only when it beats the one it continues from
        start = time.perf_counter()
        step, loss_value, bad_steps = 0, math.nan, 0
        fit_counts = RunningDice(len(self.class_values))
        finished = False
        try:
            while True:
                elapsed = time.perf_counter() - start
                progress = self._progress(step, elapsed)
                if progress >= 1.0:
                    break
                lr = self._learning_rate(step, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                if version != self._data_version:  # annotations changed (update_annotations): train on them from now on
                    version = self._data_version
                    sampler, weights, voxel_batches = self._training_data(network, device, rng, fit_bins=False)
                optimizer.zero_grad(set_to_none=True)
                if warmup.head_alone(progress):
                    # The per-voxel classifier alone first: thousands of painted voxels a step, milliseconds each.
                    # The U-Net's logits are still zero (model.UNet), so the model's probabilities are the head's.
                    with autocast(device, amp_dtype):
                        loss, shown, shown_target = voxel_batches()
                    shown = shown.detach()
                    warmup.add(float(loss.detach()))
                else:
                    if self.unet_joined_at is None:
                        self.unet_joined_at = step
                    x, y = sampler.batch(config.batch_size)
                    x_t = torch.from_numpy(x).to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    y_t = torch.from_numpy(y).to(device, non_blocking=True)
                    with autocast(device, amp_dtype):
                        features = x_t if self._features or network.filters is None else network.filters(x_t)
                        logits = network.classify(features)
                        loss = sparse_segmentation_loss(logits, y_t, weights, config.dice_weight)
                        if voxel_batches is not None:
                            loss = loss + voxel_batches()[0]
                    shown, shown_target = _as_predicted(network, features, logits, y_t)
                loss_value = float(loss.detach())
                fit_counts.add(shown, shown_target)
                if not math.isfinite(loss_value):
                    # Skip the step: the weights stay the last good ones.
                    bad_steps += 1
                    if bad_steps >= 10:
                        raise FloatingPointError(
                            f"training diverged (loss is {loss_value}) for 10 steps at step {step}; "
                            "try a lower learning rate — the best model so far is kept"
                        )
                    continue
                bad_steps = 0
                shown_loss = float(masked_cross_entropy(shown, shown_target, weights))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                elapsed = time.perf_counter() - start
                self._history = {"steps": previous_steps + step, "seconds": elapsed, "loss": shown_loss}
                val_dice = None
                if step % config.validate_every == 0:
                    val_dice = self._score_and_keep(network)
                yield TrainEvent(
                    step=step,
                    max_steps=config.max_steps,
                    loss=shown_loss,
                    learning_rate=lr,
                    elapsed=elapsed,
                    progress=min(1.0, self._progress(step, elapsed)),
                    val_dice=val_dice,
                    fit_dice=fit_counts.mean_foreground(),
                )
            finished = True
            if config.recalibrate_norm:
                _recalibrate_batch_norm(network, sampler, config.batch_size, device, memory_format, self._features)
        finally:
            # Runs on normal end and when the caller closes the generator (cancel).
            if finished:
                self._score_and_keep(network)
            elif self._validation is None or self._best_state is None:
                self._keep(network, math.inf)
            network.to("cpu").eval()
            self._network = network
        model = self.best_model
        assert model is not None
        return model

    def _training_data(self, network: torch.nn.Module, device: torch.device, rng: np.random.Generator, fit_bins: bool):
        """(patch sampler, class weights, voxel batches) for the current annotations (see :meth:`_voxel_batches`)."""
        config = self.config
        sampler = PatchSampler(
            self.volumes,
            self.patch_size,
            len(self.class_values),
            normalize=_as_float32 if self._features else self.normalization.apply,
            rng=rng,
            augment=config.augment,
            halo=(0,) * self.model_config.spatial_dims if self._features else self.model_config.input_halo,
            intensity_strength=config.intensity_augment,
            level_mask=self._level_mask,
        )
        weights = torch.ones(len(self.class_values), device=device)  # no inverse-frequency weights: they cost Dice
        return sampler, weights, self._voxel_batches(network, device, weights, fit_bins)

    def _voxel_batches(self, network: torch.nn.Module, device: torch.device, weights: torch.Tensor, fit_bins: bool):
        """A function giving (loss, logits, target) of a fresh batch of painted voxels; None without a voxel head.

        ``fit_bins``: set the head's bin edges from the painted voxels (a new model only: the
        edges of a trained head are part of what it learned).
        """
        head = getattr(network, "voxel_head", None)
        if head is None or self._voxel_rows is None or len(self._voxel_rows[1]) == 0:
            return None
        rows, classes = self._voxel_rows
        if fit_bins:
            head.fit_bins(rows, classes)
        rows_t = torch.from_numpy(rows).to(device)
        classes_t = torch.from_numpy(classes).to(device)
        generator = torch.Generator().manual_seed(self.config.seed + self._data_version)
        size = min(self.config.voxel_batch, len(classes))

        def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            pick = torch.randint(0, len(classes), (size,), generator=generator).to(device)
            logits = head.rows(rows_t[pick])
            target = classes_t[pick]
            return masked_cross_entropy(logits, target, weights), logits, target

        return batch

    def _score_and_keep(self, network: torch.nn.Module) -> float | None:
        """Measure validation Dice (if any) and keep the model when it is the best."""
        if self._validation is None:
            self._keep(network, math.inf)
            return None
        score = self._validate(network)
        self._history["val_dice"] = score
        self._keep(network, score)
        return score

    def _progress(self, step: int, elapsed: float) -> float:
        by_steps = step / self.config.max_steps
        by_time = elapsed / self.config.max_time if self.config.max_time else 0.0
        return max(by_steps, by_time)

    def _learning_rate(self, step: int, progress: float) -> float:
        """Linear warm-up, then polynomial decay over the step/time budget (nnU-Net's poly schedule)."""
        base = self.config.learning_rate
        if step < self.config.warmup_steps:
            return base * (step + 1) / (self.config.warmup_steps + 1)
        return base * max(1.0 - progress, 0.02) ** 0.9


@torch.no_grad()
def _as_predicted(
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


def _parameter_groups(network: torch.nn.Module) -> list[dict[str, Any]]:
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


def feature_bank_fits(bank: FilterBank, channels: int, images_cf: Sequence[Any]) -> bool:
    """Whether the filter features of every training image fit in memory, computed once.

    Then each step reads features instead of filtering a haloed patch again;
    otherwise patches carry the halo and the network filters them itself.
    """
    per_voxel = 2 * channels * bank.features_per_channel  # float16
    voxels = sum(int(np.prod(image.shape[1:])) for image in images_cf)
    return voxels * per_voxel <= FEATURE_MEMORY_BYTES


def painted_on_few_z_planes(annotations: Sequence[np.ndarray]) -> bool:
    """True when the annotations lie on at most half of their Z planes (a few painted slices)."""
    painted = [np.asarray(a).reshape(a.shape[0], -1).max(axis=1) > 0 for a in annotations]
    return sum(int(p.sum()) for p in painted) <= 0.5 * sum(len(p) for p in painted)


def training_patch_size(
    config: TrainConfig, model_config: ModelConfig, annotations: Sequence[np.ndarray], spacing: Sequence[float] | None
) -> tuple[int, ...]:
    """The configured patch (checked), or one chosen from the annotated volumes' shapes and spacing."""
    multiple = model_config.size_multiple()
    if config.patch_size is not None:
        return check_network_size("patch size", config.patch_size, multiple)
    shapes = [a.shape for a in annotations]
    budget = config.patch_voxels if len(multiple) == 3 else int(round(config.patch_voxels ** (2 / 3))) * 16
    depth = config.plane_patch_depth
    if depth and len(multiple) == 3 and painted_on_few_z_planes(annotations):
        # Thin along Z, wide in-plane: most computed voxels lie on the painted plane and carry a loss.
        depth = int(math.ceil(depth / multiple[0]) * multiple[0])
        in_plane = None if spacing is None else spacing[1:]
        plane = choose_patch_size([s[1:] for s in shapes], multiple[1:], in_plane, budget // depth)
        return (depth, *plane)
    return choose_patch_size(shapes, multiple, spacing, budget)


@torch.no_grad()
def _recalibrate_batch_norm(network, sampler, batch_size, device, memory_format, features, batches: int = 16) -> None:
    """Batch-norm running statistics as the plain average over fresh training batches ("precise BN").

    During training they are an exponential average over a few recent, noisy
    batches of weights that kept changing; prediction uses them for every tile.
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    for _ in range(batches):
        x, _ = sampler.batch(batch_size)
        x_t = torch.from_numpy(x).to(device).contiguous(memory_format=memory_format)
        network.classify(x_t) if features else network(x_t)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _as_float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def train(
    images: Sequence[Any],
    annotations: Sequence[Any],
    config: TrainConfig = TrainConfig(),
    **kwargs: Any,
) -> SegmentationModel:
    """Blocking convenience: run a :class:`Trainer` to the end and return its best model."""
    trainer = Trainer(images, annotations, config, **kwargs)
    return run_to_end(trainer.run())
