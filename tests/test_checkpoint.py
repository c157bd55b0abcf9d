"""One-file checkpoints: round trip, safe loading, clear errors, atomic writes."""

import pathlib

import numpy as np
import pytest
import torch

from napari_sparse_unet.core.checkpoint import SegmentationModel, load_network
from napari_sparse_unet.core.errors import CheckpointError
from napari_sparse_unet.core.config import ModelConfig, TrainConfig
from napari_sparse_unet.core.data import Normalization
from napari_sparse_unet.core.network.model import build_model


@pytest.fixture
def model() -> SegmentationModel:
    torch.manual_seed(0)
    config = ModelConfig(3, 2, 3, ((1, 2, 2), (2, 2, 2)), base_channels=2)
    return SegmentationModel(
        network=build_model(config).eval(),
        model_config=config,
        train_config=TrainConfig(max_steps=7),
        normalization=Normalization(low=(1.0, 2.0), high=(3.0, 4.0)),
        class_values=(1, 2, 5),
        class_names=("background", "nucleus", "vesicle"),
        spacing=(3.0, 1.0, 1.0),
        patch_size=(8, 16, 16),
        history={"steps": 7, "seconds": 1.5},
    )


def test_round_trip_keeps_everything(tmp_path, model):
    path = tmp_path / "sub" / "model.pt"
    model.save(path)
    loaded = SegmentationModel.load(path)
    x = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.network(x), loaded.network(x))
    for name in ("model_config", "train_config", "normalization", "class_values", "class_names", "spacing", "patch_size", "history"):
        assert getattr(loaded, name) == getattr(model, name), name
    assert loaded.output_lut().tolist() == [0, 2, 5]
    assert "nucleus" in loaded.describe()
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary files left


def test_load_model_gives_network_and_normalisation(tmp_path, model):
    model.save(tmp_path / "m.pt")
    network, normalization = load_network(tmp_path / "m.pt")
    assert isinstance(network, torch.nn.Module) and not network.training
    assert normalization == model.normalization


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SegmentationModel.load(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path, model):
    path = tmp_path / "m.pt"
    model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        SegmentationModel.load(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a napari-sparse-unet model"):
        SegmentationModel.load(path)


class _Booby:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_code_is_never_run(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "code-ran"
    torch.save({"format": "napari-sparse-unet", "payload": _Booby(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        SegmentationModel.load(path)
    assert not marker.exists()


def test_mismatched_weights_are_reported(tmp_path, model):
    payload = model.to_payload()
    payload["model_config"]["base_channels"] = 4
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        SegmentationModel.load(tmp_path / "m.pt")


def test_failed_save_leaves_nothing(tmp_path, model, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous model")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == b"previous model"
    assert list(tmp_path.iterdir()) == [path]


def test_a_checkpoint_saved_before_the_lab_settings_left_still_loads_and_predicts_the_same(tiny_volume):
    """tests/data/checkpoint_c4c448c.pt: saved by the code of c4c448c (150 steps on the tiny volume, voxel head 8,
    base width 4, depth 2), with the training settings that have since left the product (voxel_swap,
    average_weights, top_kernel, max_class_weight, elastic); the .npy beside it is its float32 prediction then."""
    import dataclasses

    from napari_sparse_unet.core.config import RENAMED_TRAIN_SETTINGS, REMOVED_TRAIN_SETTINGS, PredictConfig
    from napari_sparse_unet.core.generators import run_to_end
    from napari_sparse_unet.jobs import PredictJob

    data = pathlib.Path(__file__).parent / "data"
    saved = torch.load(data / "checkpoint_c4c448c.pt", map_location="cpu", weights_only=False)
    assert {"voxel_swap", "average_weights", "top_kernel", "max_class_weight", "elastic"} <= set(saved["train_config"])
    unknown = set(saved["train_config"]) - {f.name for f in dataclasses.fields(TrainConfig)}
    assert unknown <= REMOVED_TRAIN_SETTINGS | set(RENAMED_TRAIN_SETTINGS)
    assert {"filter_scales", "context_scales", "voxel_head"} <= unknown  # saved under their old names

    model = SegmentationModel.load(data / "checkpoint_c4c448c.pt")
    assert model.class_names == ("background", "ball", "box") and model.spacing == (2.0, 1.0, 1.0)
    assert model.train_config.voxel_head_width == 8 and model.history["steps"] == 150
    image = tiny_volume[0]
    labels = run_to_end(PredictJob(model, image, PredictConfig(mixed_precision=False, device="cpu")).run(), lambda e: None).labels
    expected = np.load(data / "checkpoint_c4c448c_labels.npy")
    assert set(np.unique(expected)) == {0, 2, 3}
    assert np.mean(labels == expected) > 0.995


def test_unknown_training_settings_are_refused_but_removed_ones_dropped():
    from napari_sparse_unet.core.errors import ConfigError

    config = TrainConfig.from_dict({**TrainConfig().to_dict(), "voxel_swap": 0.15, "elastic": True})
    assert config == TrainConfig()
    with pytest.raises(ConfigError, match="not_a_setting"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "not_a_setting": 1})
