"""Channels from separate images: the rule and its messages, and the command line on real MRI.

The BRATS development volume (../shared/data/brats_mri_dev: FLAIR and T1c,
(Z, Y, X) each, labels 0..4) is cropped to (16, 64, 64) around the tumour and
painted on two Z slices (1 = background, 2 = tumour).  Its absence fails the
test: this is the end-to-end check of the feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sparse_unet.cli import main
from napari_sparse_unet.core.checkpoint import SegmentationModel
from napari_sparse_unet.core.errors import InputError
from napari_sparse_unet.core.rules import channels_problem, model_channels_problem, stack_channels

BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats_mri_dev"
CROP = (slice(80, 96), slice(40, 104), slice(64, 128))  # (Z, Y, X) around the tumour
PAINTED = (4, 11)


def brats_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FLAIR, T1c, annotation) cropped; fails (not skips) when the shared volume is missing."""
    assert BRATS.is_dir(), f"the shared BRATS volume is missing: {BRATS}"
    flair = tifffile.imread(BRATS / "flair.tif")[CROP]
    t1c = tifffile.imread(BRATS / "t1c.tif")[CROP]
    truth = tifffile.imread(BRATS / "labels.tif")[CROP]
    annotation = np.zeros(truth.shape, np.uint8)
    for z in PAINTED:
        annotation[z] = (truth[z] > 0) + 1
    return flair, t1c, annotation


def test_channel_rule_messages():
    assert channels_problem(["a", "b"], [(4, 5, 6), (4, 5, 6)]) is None
    assert "'b' has shape (4, 5, 7) but 'a' has (4, 5, 6)" in channels_problem(["a", "b"], [(4, 5, 6), (4, 5, 7)])
    assert "co-registered" in channels_problem(["a", "b"], [(4, 5, 6), (4, 5, 7)])
    assert "'a' is picked twice" in channels_problem(["a", "a"], [(4, 5, 6)] * 2)
    assert "channel 'b' has shape (2, 4, 5, 6)" in channels_problem(["a", "b"], [(4, 5, 6), (2, 4, 5, 6)])
    assert "no channel picked" in channels_problem([], [])
    assert model_channels_problem(("FLAIR", "T1c"), ["x", "y"]) is None
    message = model_channels_problem(("FLAIR", "T1c"), ["flair"])
    assert "trained on 2 channel(s) (FLAIR, T1c) but 1 image(s) are given ('flair')" in message

    a, b = np.zeros((3, 4, 5), np.float32), np.ones((3, 4, 5), np.float32)
    stacked = stack_channels([a, b], ["a", "b"])
    assert stacked.shape == (2, 3, 4, 5) and stacked[1].min() == 1  # order kept
    with pytest.raises(InputError, match="same shape"):
        stack_channels([a, b[:, :3]], ["a", "b"])


def test_cli_trains_and_predicts_on_two_channel_files(tmp_path, capsys):
    flair, t1c, annotation = brats_crop()
    for name, array in (("FLAIR.tif", flair), ("T1c.tif", t1c), ("labels.tif", annotation)):
        tifffile.imwrite(tmp_path / name, array)
    channels = f"{tmp_path / 'FLAIR.tif'},{tmp_path / 'T1c.tif'}"
    tiny = ["--steps", "3", "--patch-size", "8", "16", "16", "--device", "cpu", "--threads", "1", "-q"]
    model_path = tmp_path / "m.pt"
    assert main(["train", "--image", channels, "--labels", str(tmp_path / "labels.tif"), "--model", str(model_path), *tiny]) == 0
    model = SegmentationModel.load(model_path)
    assert model.in_channels == 2 and model.channel_names == ("FLAIR", "T1c")
    assert len(model.curves["step"]) == 3

    out = tmp_path / "prediction.tif"
    assert main(["predict", "--model", str(model_path), "--image", channels, "--out", str(out),
                 "--device", "cpu", "--threads", "1", "-q"]) == 0
    prediction = tifffile.imread(out)
    assert prediction.shape == flair.shape and set(np.unique(prediction)) <= {0, 2}

    # One file where the model wants two: one line that names the model's channels.
    capsys.readouterr()
    assert main(["predict", "--model", str(model_path), "--image", str(tmp_path / "FLAIR.tif"), "--out",
                 str(tmp_path / "p1.tif"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the model's channels: FLAIR, T1c" in err
    assert not (tmp_path / "p1.tif").exists()

    # Channel files of different shapes are refused before training, with the rule's message.
    tifffile.imwrite(tmp_path / "short.tif", t1c[:-1])
    assert main(["train", "--image", f"{tmp_path / 'FLAIR.tif'},{tmp_path / 'short.tif'}", "--labels",
                 str(tmp_path / "labels.tif"), "--model", str(tmp_path / "bad.pt"), *tiny]) == 2
    err = capsys.readouterr().err
    assert "channel 'short' has shape (15, 64, 64) but 'FLAIR' has (16, 64, 64)" in err
    assert not (tmp_path / "bad.pt").exists()
