"""Training curves: recorded per step, kept in the model file, written as CSV and TensorBoard logs.

Volumes are the tiny (12, 32, 32) pair of conftest; annotations use 0 = not
painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import csv
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sparse_unet.core.checkpoint import SegmentationModel
from napari_sparse_unet.core.config import TrainConfig
from napari_sparse_unet.core.training.curves import COLUMNS, TrainingCurves
from napari_sparse_unet.core.errors import ConfigError
from napari_sparse_unet.core.generators import run_to_end
from napari_sparse_unet.jobs import TrainJob
from napari_sparse_unet.core.training.training_log import TrainingLog, write_curves

TINY = TrainConfig(max_steps=2, patch_size=(8, 16, 16), base_channels=4, depth=2, validation=False, device="cpu",
                   num_threads=1)


def _event(step, loss=1.0, val=None, fit=0.5, elapsed=None):
    return SimpleNamespace(step=step, loss=loss, elapsed=step * 0.1 if elapsed is None else elapsed,
                           learning_rate=1e-3, val_dice=val, fit_dice=fit)


def test_curves_continue_thin_and_round_trip():
    curves = TrainingCurves(max_points=10)
    for step in range(1, 20):
        curves.add(_event(step, val=0.7 if step == 5 else None))
    # 20 rows would reach twice the cap: thinned to ~10, keeping the first, the last and the validated step.
    assert 10 <= len(curves) < 20
    steps = curves.columns()["step"]
    assert steps[0] == 1 and steps[-1] == 19 and 5 in steps and np.all(np.diff(steps) > 0)

    saved = curves.to_dict()
    assert set(saved) == set(COLUMNS) and len(saved["step"]) <= 10
    again = TrainingCurves.from_dict(saved)
    assert again.rows() == [tuple(r) for r in zip(*(saved[c] for c in COLUMNS))]
    # Fine-tuning continues steps and seconds from the last row.
    row = again.add(_event(1, elapsed=0.5))
    assert row[0] == 20 and row[1] == pytest.approx(1.9 + 0.5)
    assert math.isnan(TrainingCurves.from_dict({"step": [1.0], "loss": [2.0]}).rows()[0][COLUMNS.index("val_dice")])
    assert len(TrainingCurves.from_dict(None)) == 0


def test_job_saves_curves_and_channel_names_in_the_model_file(tmp_path, tiny_volume):
    image, _, annotation = tiny_volume
    two = np.stack([image, 1.0 - image])
    job = TrainJob([two], [annotation], TINY, channel_names=("FLAIR", "T1c"))
    model = run_to_end(job.run())
    assert model.channel_names == ("FLAIR", "T1c")
    assert model.curves["step"] == [1.0, 2.0] and all(v > 0 for v in model.curves["loss"])
    model.save(tmp_path / "m.pt")
    loaded = SegmentationModel.load(tmp_path / "m.pt")
    assert loaded.channel_names == ("FLAIR", "T1c")
    np.testing.assert_equal(loaded.curves, model.curves)  # NaN where no validation Dice was measured
    assert "FLAIR, T1c" in loaded.describe()

    # Fine-tuning keeps the names and continues the curve.
    again = run_to_end(TrainJob([two], [annotation], TINY, initial=loaded).run())
    assert again.channel_names == ("FLAIR", "T1c")
    assert again.curves["step"] == [1.0, 2.0, 3.0, 4.0]
    assert again.curves["seconds"][2] > again.curves["seconds"][1]


def test_old_checkpoint_without_curves_or_channel_names_loads(tmp_path, tiny_volume):
    image, _, annotation = tiny_volume
    model = run_to_end(TrainJob([np.stack([image, image])], [annotation], TINY).run())
    assert model.channel_names == ("channel 1", "channel 2")  # nobody named them
    payload = model.to_payload()
    del payload["channel_names"], payload["curves"]  # as files written before these fields existed
    torch.save(payload, tmp_path / "old.pt")
    old = SegmentationModel.load(tmp_path / "old.pt")
    assert old.channel_names == ("channel 1", "channel 2") and old.curves == {}


def test_log_writes_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = TrainingCurves()
    for step in range(1, 6):
        curves.add(_event(step, loss=1.0 / step, val=0.8 if step == 4 else None))
    written = write_curves(tmp_path / "logs", curves.to_dict())
    assert {p.name for p in written} >= {"curves.csv"} and len(written) == 2
    with open(tmp_path / "logs" / "curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert float(rows[1]["loss"]) == pytest.approx(0.5) and rows[0]["val_dice"] == "" and rows[3]["val_dice"] == "0.8"

    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5] and loss[-1].value == pytest.approx(0.2)
    assert [e.step for e in events.Scalars("dice/validation")] == [4]


def test_missing_tensorboard_is_one_clear_error_and_csv_still_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the 'tensorboard' package.*napari-sparse-unet\[logs\]"):
        TrainingLog(tmp_path / "tb", ("csv", "tensorboard"))
    assert not (tmp_path / "tb").exists()  # refused before anything was made
    with TrainingLog(tmp_path / "csv", ("csv",)) as log:
        log.add((1, 0.1, 0.9, math.nan, math.nan, 1e-3))
    assert (tmp_path / "csv" / "curves.csv").read_text().splitlines()[1] == "1,0.1,0.9,,,0.001"


def test_cli_train_log_dir(tmp_path, tiny_files, capsys, monkeypatch):
    from napari_sparse_unet.cli import main

    base = ["train", "--image", tiny_files["image"], "--labels", tiny_files["labels"], "--model", tmp_path / "m.pt",
            "--steps", "2", "--patch-size", "8", "16", "16", "--device", "cpu", "--threads", "1", "-q"]
    assert main([str(a) for a in [*base, "--log-dir", tmp_path / "logs"]]) == 0
    assert "curves in" in capsys.readouterr().out
    lines = (tmp_path / "logs" / "curves.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3
    assert any(p.stat().st_size > 0 for p in (tmp_path / "logs").glob("events.out.tfevents.*"))

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    code = main([str(a) for a in [*base, "--log-dir", tmp_path / "logs2", "--log-format", "tensorboard"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: writing TensorBoard logs needs")
    assert not (tmp_path / "logs2").exists()
