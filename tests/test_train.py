"""Training: learns from a few slices, cancels safely, warm-starts, is reproducible."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from napari_sparse_unet.core.config import PredictConfig, TrainConfig
from napari_sparse_unet.core.prediction.predict import predict
from napari_sparse_unet.core.errors import ConfigError, InputError
from napari_sparse_unet.core.metrics import dice_per_class, mean_dice
from napari_sparse_unet.core.training.train import Trainer, train
from napari_sparse_unet.core.training.training_data import MIN_SLICES_FOR_VALIDATION


def dice_on_annotated(predicted, target, num_classes):
    return mean_dice(dice_per_class(predicted, target, range(1, num_classes), where=target >= 0))


FAST = TrainConfig(max_steps=40, patch_size=(8, 16, 16), batch_size=2, base_channels=4, depth=2, learning_rate=5e-3, validation=False, warmup_steps=5)


def _dense_prediction(model, image):
    """Class indices (Z, Y, X) of the whole-volume prediction."""
    labels = predict(model, image, PredictConfig(mixed_precision=False))
    lut = {int(v): i for i, v in enumerate(model.output_lut())}
    return np.vectorize(lut.get)(labels)


def test_learns_the_volume_from_two_slices(tiny_volume):
    image, truth, annotation = tiny_volume
    config = dataclasses.replace(FAST, max_steps=200, patch_size=(8, 32, 32), learning_rate=1e-2)
    trainer = Trainer([image], [annotation], config)
    losses = [event.loss for event in trainer.run()]
    model = trainer.best_model
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])  # unweighted cross-entropy + Dice: ~1.05 -> ~0.54
    predicted = _dense_prediction(model, image)
    on_painted = np.where(annotation > 0, truth.astype(np.int64), -1)
    elsewhere = np.where(annotation == 0, truth.astype(np.int64), -1)
    assert dice_on_annotated(predicted, on_painted, 3) > 0.7
    assert dice_on_annotated(predicted, elsewhere, 3) > 0.45  # a chance-level guess scores about 0.1
    assert model.class_values == (1, 2, 3)
    assert model.history["steps"] == 200


def test_events_and_closing_keeps_a_usable_model(tiny_volume):
    image, _, annotation = tiny_volume
    trainer = Trainer([image], [annotation], dataclasses.replace(FAST, max_steps=1000))
    run = trainer.run()
    events = [next(run) for _ in range(3)]
    assert [e.step for e in events] == [1, 2, 3]
    assert all(math.isfinite(e.loss) and e.learning_rate > 0 and 0 < e.progress < 1 for e in events)
    run.close()  # what the widget's Cancel does
    model = trainer.best_model
    assert model is not None and not model.network.training
    halo = model.model_config.input_halo
    out = model.network(torch.zeros(1, 1, *(s + 2 * h for s, h in zip((8, 16, 16), halo))))
    assert out.shape == (1, 3, 8, 16, 16)


def test_time_budget_stops_training(tiny_volume):
    image, _, annotation = tiny_volume
    trainer = Trainer([image], [annotation], dataclasses.replace(FAST, max_steps=10_000, max_time=1.0))
    events = list(trainer.run())
    assert events and events[-1].elapsed < 3.0
    assert events[-1].progress == pytest.approx(1.0, abs=0.5)


def test_seeded_cpu_run_is_reproducible(tiny_volume):
    image, _, annotation = tiny_volume
    config = dataclasses.replace(FAST, max_steps=3)
    a = train([image], [annotation], config).network.state_dict()
    b = train([image], [annotation], config).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_keeps_classes_and_normalisation(tiny_volume):
    image, _, annotation = tiny_volume
    first = train([image], [annotation], dataclasses.replace(FAST, max_steps=2))
    partial = annotation.copy()
    partial[partial == 3] = 1  # the new annotation need not use every class
    second = train([image * 2 + 5], [partial], dataclasses.replace(FAST, max_steps=2), initial=first)
    assert second.class_values == first.class_values
    assert second.normalization == first.normalization
    assert second.history["steps"] == 4
    assert not torch.equal(first.network.head.weight, second.network.head.weight)  # it trained, from the first


def test_warm_start_rejects_a_new_label(tiny_volume):
    image, _, annotation = tiny_volume
    model = train([image], [annotation], dataclasses.replace(FAST, max_steps=1))
    bad = annotation.copy()
    bad[5, 0, 0] = 7
    with pytest.raises(InputError, match=r"labels \[7\]"):
        Trainer([image], [bad], FAST, initial=model)


def test_validation_slice_is_held_out_and_scored(tiny_volume):
    image, truth, _ = tiny_volume
    annotation = np.zeros_like(truth)
    for z in range(2, 2 + MIN_SLICES_FOR_VALIDATION):
        annotation[z] = truth[z] + 1
    config = dataclasses.replace(FAST, max_steps=20, validation=True, validate_every=10)
    trainer = Trainer([image], [annotation], config)
    assert trainer.data.validation is not None
    held_out = sum(int((v.target >= 0).sum()) for v in trainer.data.volumes)
    assert held_out == (annotation > 0).sum() - 32 * 32  # one slice fewer to train on
    scores = [e.val_dice for e in trainer.run() if e.val_dice is not None]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)


def test_two_dimensional_multichannel_images():
    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32), np.uint8)
    truth[8:20, 8:20] = 1
    image = np.stack([truth * 1.0 + rng.normal(0, 0.1, truth.shape), rng.normal(0, 1, truth.shape)]).astype(np.float32)
    annotation = np.zeros_like(truth)
    annotation[10:30:2] = truth[10:30:2] + 1
    config = dataclasses.replace(FAST, patch_size=(16, 16), max_steps=3)
    model = train([image], [annotation], config)
    assert model.spatial_dims == 2 and model.in_channels == 2
    halo = model.model_config.input_halo
    assert model.network(torch.zeros(1, 2, 16 + 2 * halo[0], 16 + 2 * halo[1])).shape == (1, 2, 16, 16)


def test_several_volumes_and_anisotropic_spacing(tiny_volume):
    image, _, annotation = tiny_volume
    config = dataclasses.replace(FAST, max_steps=2, patch_size=None, patch_voxels=4096)
    trainer = Trainer([image, image[:, ::-1]], [annotation, annotation[:, ::-1]], config, spacing=(4.0, 1.0, 1.0))
    assert trainer.model_config.pool_factors == ((1, 2, 2), (1, 2, 2))
    assert trainer.patch_size[1] > trainer.patch_size[0]
    list(trainer.run())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"config": dataclasses.replace(FAST, patch_size=(8, 15, 16))}, "multiple of"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
    ],
)
def test_bad_settings_name_the_value(tiny_volume, kwargs, message):
    image, _, annotation = tiny_volume
    with pytest.raises(InputError, match=message):
        Trainer([image], [annotation], **kwargs)


def test_mismatched_lists():
    with pytest.raises(InputError, match="one annotation per image"):
        Trainer([np.zeros((4, 4, 4))], [])


def test_lines_from_other_planes_do_not_trigger_a_hold_out(tiny_volume):
    image, truth, _ = tiny_volume
    annotation = np.zeros_like(truth)
    annotation[4] = truth[4] + 1
    for y in range(2, 30, 4):  # Y planes cross every Z plane with a line
        annotation[:, y] = truth[:, y] + 1
    trainer = Trainer([image], [annotation], dataclasses.replace(FAST, validation=True))
    assert trainer.data.validation is None


def test_running_dice_scores_painted_voxels_only():
    from napari_sparse_unet.core.metrics import RunningDice

    running = RunningDice(num_classes=3, window=2)
    assert running.mean_foreground() is None
    target = torch.tensor([[0, 1, 2, -1]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 2]]), 3).movedim(-1, 1).float()
    running.add(logits, target)
    # class 1: 1 hit, 2 predicted, 1 true -> 2/3; class 2: 0 hits -> 0; the unpainted voxel is ignored.
    assert abs(running.mean_foreground() - (2 / 3) / 2) < 1e-9
    for _ in range(2):
        running.add(torch.nn.functional.one_hot(target.clamp(min=0), 3).movedim(-1, 1).float(), target)
    assert running.mean_foreground() == 1.0  # the window forgot the first batch


def test_every_preset_trains_the_measured_engine_with_its_own_budget() -> None:
    # GPU presets may change the budget (patch, batch, width, depth, steps, time), never the kind of network.
    import dataclasses

    from napari_sparse_unet.core.config import PRESETS

    budget = {"max_steps", "max_time", "patch_voxels", "batch_size", "base_channels", "depth", "plane_patch_depth"}
    cpu = PRESETS["cpu"]
    for name, preset in PRESETS.items():
        differing = {f.name for f in dataclasses.fields(preset) if getattr(preset, f.name) != getattr(cpu, f.name)}
        assert differing <= budget, (name, differing - budget)
