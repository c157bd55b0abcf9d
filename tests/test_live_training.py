"""Training that stays live: corrections painted while it runs, and no dip when the U-Net joins the voxel head.

Headless (numpy + torch); the widget's side is in test_widget_live.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_sparse_unet.core.config import ModelConfig, PredictConfig, TrainConfig
from napari_sparse_unet.core.errors import InputError
from napari_sparse_unet.core.generators import run_to_end
from napari_sparse_unet.jobs import Corrections, TrainJob
from napari_sparse_unet.core.metrics import dice_per_class, mean_dice
from napari_sparse_unet.core.network.model import build_model
from napari_sparse_unet.core.prediction.predict import predict
from napari_sparse_unet.core.training.train import Trainer

# The sample's defaults in small: a voxel head on the filter bank, the U-Net joining at half the steps.
SMALL = TrainConfig(
    max_steps=60, batch_size=2, base_channels=4, depth=2, validation=False, voxel_warmup=0.5,
    patch_size=(8, 32, 32), voxel_batch=2048, seed=0, num_threads=1,
)


def test_the_untrained_unet_leaves_the_voxel_heads_probabilities_alone():
    config = ModelConfig(spatial_dims=3, in_channels=1, num_classes=3, pool_factors=((2, 2, 2),),
                         base_channels=4, sigmas=((1.0, 1.0, 1.0),), voxel_head_width=8)
    network = build_model(config).eval()
    features = torch.randn(1, config.in_channels * network.filters.features_per_channel, 4, 8, 8)
    with torch.no_grad():
        combined = torch.softmax(network.classify(features), 1)
        head = torch.softmax(network.voxel_head(features), 1)
    torch.testing.assert_close(combined, head, rtol=1e-5, atol=1e-6)


def test_the_curve_does_not_jump_when_the_unet_joins(tiny_sample):
    image, _, annotation = tiny_sample
    trainer = Trainer([image], [annotation], SMALL)
    events = list(_events(trainer.run()))
    join = trainer.unet_joined_at
    assert join is not None and 10 <= join <= len(events) - 10, join
    before, after = events[join - 10 : join], events[join : join + 10]
    loss_before = np.mean([e.loss for e in before])
    loss_after = np.mean([e.loss for e in after])
    dice_before = np.mean([e.fit_dice for e in before])
    dice_after = np.mean([e.fit_dice for e in after])
    # Before the fix the loss went from about 0.1 to above 1 (the U-Net's own) and the Dice halved.
    assert loss_after < loss_before + 0.15, (loss_before, loss_after)
    assert dice_after > dice_before - 0.05, (dice_before, dice_after)


def _events(generator):
    """Everything ``generator`` yields (its result is dropped)."""
    while True:
        try:
            yield next(generator)
        except StopIteration:
            return


def _unpainted_slice(annotation):
    return int(np.flatnonzero(~annotation.reshape(len(annotation), -1).any(axis=1))[len(annotation) // 4])


def _painted_dice(model, image, annotation, truth):
    """Foreground Dice of the model's prediction on the voxels painted in ``annotation``."""
    labels = predict(model, image, PredictConfig(device="cpu"))
    painted = annotation > 0
    predicted = np.searchsorted(model.class_values, np.where(labels == 0, 1, labels))
    return mean_dice(dice_per_class(predicted, annotation.astype(int) - 1, range(1, len(model.class_values)), where=painted))


def test_strokes_painted_while_training_join_the_training_data(tiny_sample):
    image, truth, annotation = tiny_sample
    job = TrainJob([image], [annotation.copy()], dataclasses.replace(SMALL, max_steps=30))
    events = job.run()
    next(events)
    before = job.trainer.painted_voxels
    rows_before = len(job.trainer.data.voxel_rows[1])
    z = _unpainted_slice(annotation)
    corrected = truth[z] + 1  # painted in full
    job.correct(z, corrected[None].copy())
    seen = [e for e in events if isinstance(e, Corrections)]
    assert seen and seen[0].problem is None
    added = corrected.size
    assert job.trainer.painted_voxels == before + added == seen[0].painted_voxels
    assert len(job.trainer.data.voxel_rows[1]) == rows_before + added
    assert not np.any(annotation[z])  # the caller's annotation is not written to


def test_a_new_label_painted_while_training_is_refused_with_a_message(tiny_sample):
    image, _, annotation = tiny_sample
    trainer = Trainer([image], [annotation], dataclasses.replace(SMALL, max_steps=5))
    painted = trainer.painted_voxels
    changed = annotation.copy()
    z = _unpainted_slice(annotation)
    changed[z, :4, :4] = 9
    with pytest.raises(InputError, match=r"labels \[9\] that the model does not know"):
        trainer.update_annotations([changed])
    assert trainer.painted_voxels == painted
    job = TrainJob([image], [annotation], dataclasses.replace(SMALL, max_steps=5))
    job.correct(z, changed[z : z + 1])
    refused = [e for e in _events(job.run()) if isinstance(e, Corrections)]
    assert refused and "[9]" in refused[0].problem and refused[0].painted_voxels == painted
    assert job.best_model is not None  # training went on


def test_train_more_on_a_corrected_annotation_does_not_start_worse(tiny_sample):
    image, truth, annotation = tiny_sample
    model = run_to_end(Trainer([image], [annotation], dataclasses.replace(SMALL, max_steps=80)).run())
    corrected = annotation.copy()
    z = _unpainted_slice(annotation)
    corrected[z] = truth[z] + 1
    start = _painted_dice(model, image, corrected, truth)
    trainer = Trainer([image], [corrected], dataclasses.replace(SMALL, max_steps=20), initial=model)
    generator = trainer.run()
    for event in generator:
        if event.step in (1, 3, 6):
            assert _painted_dice(trainer.current_model(), image, corrected, truth) >= start - 0.02, event.step
    generator.close()


def test_changed_rows_are_handed_over_once_as_merged_ranges():
    from napari_sparse_unet.core.annotation import ChangedRows

    rows = ChangedRows()
    assert not rows.pending
    rows.mark_range(3, 5)
    rows.mark_slices([5, 9, 40])
    assert rows.pending and rows.take(20) == [(3, 6), (9, 10)]
    assert not rows.pending and rows.take(20) == []
    rows.mark_all()
    assert rows.take(4) == [(0, 4)]
