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

from ..checkpoint import SegmentationModel
from ..config import TrainConfig
from ..data import fit_normalization
from ..device import autocast_dtype, preferred_memory_format, resolve_device
from ..errors import InputError
from ..generators import run_to_end
from .keep_best import BestWeights, snapshot
from .losses import masked_cross_entropy
from ..metrics import RunningDice
from ..network.model import build_model
from .plan import plan
from ..rules import check_spacing, check_training_pair, finetune_problem, painted_values
from .sampling import PatchSampler
from .steps import Steps, parameter_groups
from .training_data import TrainingData, VoxelBatches

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


class Trainer:
    """Trains (or fine-tunes) the segmentation network on sparse annotations.

    The network and patch come from :func:`.plan.plan`, what is learned from
    from :class:`.training_data.TrainingData`; this class runs the loop (steps,
    learning-rate schedule, events) and keeps the best model.

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
        self.device = resolve_device(config.device)
        if initial is not None:
            problem = finetune_problem(initial, images_cf[0].shape, painted)
            if problem:
                raise InputError(problem)
            self.class_values = initial.class_values
            self.normalization = initial.normalization
            self.class_names = initial.class_names
            self.spacing = spacing if spacing is not None else initial.spacing
        else:
            self.class_values = painted
            self.normalization = fit_normalization(images_cf, seed=config.seed, equalize=config.equalize)
            default_names = ["background"] + [f"class {v}" for v in self.class_values[1:]]
            self.class_names = tuple(class_names) if class_names is not None else tuple(default_names)
            self.spacing = spacing
        if len(self.class_names) != len(self.class_values):
            raise InputError(f"got {len(self.class_names)} class names for {len(self.class_values)} classes {list(self.class_values)}")
        planned = plan(
            annotations, config, channels=channels, num_classes=len(self.class_values), spacing=self.spacing,
            model_config=initial.model_config if initial is not None else None,
        )
        self.model_config = planned.model_config
        self.patch_size = planned.patch_size
        self.data = TrainingData(
            images_cf, annotations, class_values=self.class_values, normalization=self.normalization,
            model_config=self.model_config, patch_size=self.patch_size, config=config,
        )
        self._initial = initial
        self._best = BestWeights(self._model_from_state)
        self._network: torch.nn.Module | None = None
        # The step at which the U-Net joined the voxel head; None while the head trains alone.
        self.unet_joined_at: int | None = None
        self._history: dict[str, Any] = {}

    @property
    def painted_voxels(self) -> int:
        """Painted voxels the training steps learn from (the held-out validation slice not counted)."""
        return self.data.painted_voxels

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
        self.data.update(annotations)
        self._best.forget_score()
        return self.painted_voxels

    # ----------------------------------------------------------------- models
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
        return self._best.model

    def current_model(self) -> SegmentationModel:
        """A snapshot of the live weights, for previews; call it between steps (same thread)."""
        if self._network is None:
            if self._initial is not None:
                return self._initial.copy()
            raise RuntimeError("training has not started")
        return self._model_from_state(snapshot(self._network))

    def _score_and_keep(self, network: torch.nn.Module) -> float | None:
        """Measure validation Dice (if any) and keep the model when it is the best."""
        if self.data.validation is None:
            self._best.offer(network, math.inf)
            return None
        score = self.data.validation_dice(network, self.device)
        self._history["val_dice"] = score
        self._best.offer(network, score)
        return score

    # ----------------------------------------------------------------- loop
    def run(self) -> Generator[TrainEvent, None, SegmentationModel]:
        """Train, yielding a :class:`TrainEvent` after every step; returns the best model."""
        config = self.config
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        steps = self._start(rng)
        network = steps.network
        version = self.data.version
        # The voxel head alone first gives a model within seconds while the U-Net is untrained;
        # a model being fine-tuned has both experts trained already.
        head_warmup = config.voxel_warmup if self._initial is None and steps.voxel_batches is not None else 0.0
        self.unet_joined_at = 0 if head_warmup <= 0 else None
        optimizer = torch.optim.AdamW(parameter_groups(network), lr=config.learning_rate, weight_decay=config.weight_decay)
        # float16 needs loss scaling against underflow; bfloat16 has float32's range.
        scaler = torch.amp.GradScaler(steps.device.type, enabled=steps.amp_dtype == torch.float16)
        previous_steps = int(self._initial.history.get("steps", 0)) if self._initial is not None else 0
        if self._initial is not None and self.data.validation is not None:
            self._score_and_keep(network)  # a fine-tuned model is kept only when it beats the one it continues from
        start = time.perf_counter()
        step, bad_steps = 0, 0
        fit_counts = RunningDice(len(self.class_values))
        finished = False
        try:
            while True:
                elapsed = time.perf_counter() - start
                progress = _progress(config, step, elapsed)
                if progress >= 1.0:
                    break
                lr = _learning_rate(config, step, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                if version != self.data.version:  # annotations changed (update_annotations): train on them from now on
                    version = self.data.version
                    steps.sampler, steps.weights, steps.voxel_batches = self._batches(network, steps.device, rng, fit_bins=False)
                optimizer.zero_grad(set_to_none=True)
                head_alone = steps.voxel_batches is not None and progress < head_warmup
                if not head_alone and self.unet_joined_at is None:
                    self.unet_joined_at = step
                loss, shown, shown_target = steps.loss(head_only=head_alone)
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
                shown_loss = float(masked_cross_entropy(shown, shown_target, steps.weights))
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                elapsed = time.perf_counter() - start
                self._history = {"steps": previous_steps + step, "seconds": elapsed, "loss": shown_loss}
                val_dice = self._score_and_keep(network) if step % config.validate_every == 0 else None
                yield TrainEvent(
                    step=step, max_steps=config.max_steps, loss=shown_loss, learning_rate=lr, elapsed=elapsed,
                    progress=min(1.0, _progress(config, step, elapsed)), val_dice=val_dice, fit_dice=fit_counts.mean_foreground(),
                )
            finished = True
            if config.recalibrate_norm:
                steps.recalibrate_batch_norm()
        finally:
            self._finish(network, finished)
        model = self.best_model
        assert model is not None
        return model

    def _start(self, rng: np.random.Generator) -> Steps:
        """The network on the training device, with its batches (bin edges fitted for a new model)."""
        device = self.device
        network = copy.deepcopy(self._initial.network) if self._initial is not None else build_model(self.model_config)
        amp_dtype = autocast_dtype(device, self.config.mixed_precision, training=True)
        memory_format = preferred_memory_format(device, amp_dtype, self.model_config.spatial_dims)
        network.to(device=device, memory_format=memory_format).train()
        self._network = network
        return Steps(
            network, device, amp_dtype, memory_format, *self._batches(network, device, rng, fit_bins=self._initial is None),
            features=self.data.features, batch_size=self.config.batch_size, dice_weight=self.config.dice_weight,
        )

    def _batches(
        self, network: torch.nn.Module, device: torch.device, rng: np.random.Generator, *, fit_bins: bool
    ) -> tuple[PatchSampler, torch.Tensor, VoxelBatches | None]:
        """(patch sampler, class weights, voxel batches) for the current annotations."""
        sampler = self.data.sampler(rng)
        weights = torch.ones(len(self.class_values), device=device)  # no inverse-frequency weights: they cost Dice
        return sampler, weights, self.data.voxel_batches(network, device, weights, fit_bins=fit_bins)

    def _finish(self, network: torch.nn.Module, finished: bool) -> None:
        """Keep the final model; runs on normal end and when the caller closes the generator (cancel)."""
        if finished:
            self._score_and_keep(network)
        elif self.data.validation is None or self._best.state is None:
            self._best.offer(network, math.inf)
        network.to("cpu").eval()
        self._network = network

def _progress(config: TrainConfig, step: int, elapsed: float) -> float:
    """Share of the budget spent: steps or seconds, whichever runs out first."""
    by_steps = step / config.max_steps
    by_time = elapsed / config.max_time if config.max_time else 0.0
    return max(by_steps, by_time)


def _learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up, then polynomial decay over the step/time budget (nnU-Net's poly schedule)."""
    base = config.learning_rate
    if step < config.warmup_steps:
        return base * (step + 1) / (config.warmup_steps + 1)
    return base * max(1.0 - progress, 0.02) ** 0.9


def train(
    images: Sequence[Any],
    annotations: Sequence[Any],
    config: TrainConfig = TrainConfig(),
    **kwargs: Any,
) -> SegmentationModel:
    """Blocking convenience: run a :class:`Trainer` to the end and return its best model."""
    trainer = Trainer(images, annotations, config, **kwargs)
    return run_to_end(trainer.run())
