"""bioimage.io export: offline validation, the TorchScript network against predict, re-import, clear errors.

A tiny model (base 4, depth 2, 3 steps) on the (12, 32, 32) tiny volume; arrays are
(Z, Y, X), tensors (B, C, Z, Y, X).
"""

from __future__ import annotations

import socket
from io import BytesIO as io_bytes
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.spec")

from napari_sparse_unet.bioimageio import export as bx  # noqa: E402
from napari_sparse_unet.bioimageio import network as bn  # noqa: E402
from napari_sparse_unet import io  # noqa: E402
from napari_sparse_unet.cli import main  # noqa: E402
from napari_sparse_unet.core.checkpoint import PACKAGE_CHECKPOINT, SegmentationModel  # noqa: E402
from napari_sparse_unet.core.config import PredictConfig, TrainConfig  # noqa: E402
from napari_sparse_unet.core.data import Normalization  # noqa: E402
from napari_sparse_unet.core.prediction.predict import predict  # noqa: E402
from napari_sparse_unet.core.training.train import train  # noqa: E402

EXACT = PredictConfig(device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A model trained for 3 steps, saved, with its training image as a TIFF."""
    from conftest import _tiny_pair

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bioimageio")
    image, _, annotation = _tiny_pair()
    # Filter scales that leave the tiny volume bigger than the halo (the default context σ 20 reads 60 voxels beyond a tile).
    config = TrainConfig(max_steps=3, patch_size=(8, 16, 16), batch_size=2, base_channels=4, depth=2, device="cpu",
                         sigmas=(1.0, 2.5), context_sigmas=())
    model = train([image], [annotation], config, spacing=(2.0, 1.0, 1.0), class_names=["background", "ball", "box"])
    model.save(folder / "model.pt")
    io.write_volume(folder / "image.tif", image, spacing=(2.0, 1.0, 1.0))
    return {"folder": folder, "model": model, "image": image}


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_validates_offline_and_predicts_like_the_original(trained, tmp_path, capsys, offline):
    folder = trained["folder"]
    package = tmp_path / "tiny.zip"
    code, out, err = run(["export", "--model", folder / "model.pt", "--image", folder / "image.tif", "--out", package,
                          "--name", "tiny ball model", "--author", "A. Tester", "--no-test", "-q"], capsys)
    assert code == 0, err
    assert "valid-format" in out and list(tmp_path.iterdir()) == [package]  # no temporary files left
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        test_input = np.load(io_bytes(archive.read("test_input.npy")))
    assert {"rdf.yaml", "weights.torchscript.pt", "test_input.npy", "test_output.npy", "README.md", PACKAGE_CHECKPOINT} <= names

    from bioimageio.spec import load_description

    descr = load_description(package, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    assert [str(a.id) for a in descr.inputs[0].axes] == ["batch", "channel", "z", "y", "x"]
    assert descr.outputs[0].axes[1].channel_names == ["background", "ball", "box"]
    assert descr.inputs[0].axes[2].scale == 2.0 and descr.inputs[0].axes[3].size.step == 4
    assert descr.inputs[0].pad.mode == "reflect"  # consumers pad a whole image as this plugin does
    # The test input is the training image (12, 32, 32), mirrored out to the minimum size where it is smaller.
    minimum = bn.tile_rules(trained["model"]).minimum
    expected = tuple(max(m, s) for m, s in zip(minimum, trained["image"].shape))
    assert test_input.shape == (1, 1, *expected) and test_input.dtype == np.float32
    inside = tuple(slice((m - n) // 2, (m - n) // 2 + n) for m, n in zip(expected, (12, 32, 32)))
    np.testing.assert_array_equal(test_input[(0, 0, *inside)], trained["image"])

    # Re-import: the attached checkpoint predicts exactly the original labels, in the API and the CLI.
    original = predict(trained["model"], trained["image"], EXACT)
    back = SegmentationModel.load(package)
    assert back.class_names == ("background", "ball", "box")
    np.testing.assert_array_equal(predict(back, trained["image"], EXACT), original)
    code, _, err = run(["predict", "--model", package, "--image", folder / "image.tif", "--out", tmp_path / "p.tif",
                        "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    expected = predict(trained["model"], trained["image"], PredictConfig(device="cpu"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p.tif"), expected)


def test_torchscript_network_equals_predict_on_a_tile(trained):
    model = trained["model"]
    rules = bn.tile_rules(model)
    assert rules.step == (2, 4, 4) and all(m > 2 * h for m, h in zip(rules.minimum, rules.halo))
    assert all(2 * h % s == 0 for h, s in zip(rules.halo, rules.step))  # a consumer may pad a whole image by the halo
    volume = np.pad(trained["image"], ((4, 4), (2, 2), (2, 2)), mode="reflect")  # (20, 36, 36): one valid tile
    probabilities = np.zeros((model.num_classes, *volume.shape), np.float32)
    predict(model, volume, PredictConfig(device="cpu", mixed_precision=False, tile_size=volume.shape),
            probabilities_out=probabilities)
    scripted = bn.torchscript_network(model, torch.from_numpy(volume[None, None]))
    with torch.no_grad():
        packaged = scripted(torch.from_numpy(volume[None, None])).numpy()[0]
    np.testing.assert_allclose(packaged, probabilities, atol=1e-5)
    np.testing.assert_array_equal(packaged.argmax(0), probabilities.argmax(0))
    assert "PlanewiseConv3d" not in str(scripted.inlined_graph)  # plain convolutions, for GPU consumers too


@pytest.mark.parametrize("knots", [None, ((0.0, 1.0, 5.0, 6.0), (-2.0, 0.0, 2.0))])
def test_packaged_normalisation_equals_numpy(trained, knots):
    model = trained["model"].copy()
    model.normalization = Normalization(low=(0.5, -1.0), high=(4.0, 3.0), knots=knots)
    x = np.random.default_rng(0).uniform(-5, 10, (2, 3, 4, 5)).astype(np.float32)  # beyond both ends too
    packaged = bn.PackagedNetwork(model).normalize(torch.from_numpy(x[None]))[0].numpy()
    np.testing.assert_allclose(packaged, model.normalization.apply(x), rtol=1e-6, atol=1e-6)
    # No float64 anywhere: a consumer moving the package to an Apple GPU (no float64) would fail.
    packaged_network = bn.PackagedNetwork(model)
    assert all(t.dtype != torch.float64 for t in [*packaged_network.buffers(), *packaged_network.parameters()])


def test_foreign_package_and_non_model_files_are_clear_errors(tmp_path, capsys, trained):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    image = trained["folder"] / "image.tif"
    for path, fragment in ((foreign, "not exported by napari-sparse-unet"), (text, "not a model file")):
        for argv in (["predict", "--model", path, "--image", image, "--out", tmp_path / "p.tif"],
                     ["export", "--model", path, "--image", image, "--out", tmp_path / "e.zip"]):
            code, _, err = run(argv, capsys)
            assert code == 2 and err.count("\n") == 1 and fragment in err, err
    model = trained["folder"] / "model.pt"
    for extra, fragment in ((["--out", tmp_path / "m.pt"], "must end in .zip"),
                            (["--out", tmp_path / "m.zip", "--license", "no-such-license"], "license"),
                            (["--out", tmp_path / "m.zip", "--name", "abc"], "name")):
        code, _, err = run(["export", "--model", model, "--image", image, "--no-test", *extra], capsys)
        assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.zip", "notes.zip"]  # nothing half-written


def test_missing_bioimageio_spec_is_one_line_saying_what_to_install(trained, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if it were not installed
    code, _, err = run(["export", "--model", trained["folder"] / "model.pt", "--image", trained["folder"] / "image.tif",
                        "--out", tmp_path / "m.zip"], capsys)
    assert code == 2 and err.count("\n") == 1 and "napari-sparse-unet[bioimageio]" in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bioimageio_core_runs_the_package(trained, tmp_path, offline):
    pytest.importorskip("bioimageio.core")
    summary = bx.export_model(trained["model"], tmp_path / "tiny.zip", trained["image"], name="tiny ball model",
                              run_test=True)
    assert summary.status == "passed", summary.format()


@pytest.mark.gui
def test_widget_exports_the_loaded_model(make_napari_viewer, qtbot, trained, tmp_path, monkeypatch):
    pytest.importorskip("pytestqt")
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    viewer = make_napari_viewer()
    viewer.add_image(trained["image"], name="image")
    widget = SparseUNetWidget(viewer)
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=120_000)
    assert not widget.model_panel.export_button.isEnabled()  # no model yet
    monkeypatch.setattr(widget.model_panel, "ask_open_path", lambda: str(trained["folder"] / "model.pt"))
    assert widget.model_panel.load_model() is not None
    assert widget.model_panel.export_button.isEnabled()

    package = tmp_path / "from widget.zip"
    monkeypatch.setattr(widget.model_panel, "ask_export_path", lambda: str(package))
    monkeypatch.setattr(bx, "consumer_available", lambda: False)  # bioimageio.spec's validation only: fast
    assert widget.model_panel.export_model()
    assert not widget.model_panel.export_button.isEnabled()  # one export at a time
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "Exported" in widget.progress.status_label.text() and widget.model_panel.export_button.isEnabled()
    assert SegmentationModel.load(package).class_names == ("background", "ball", "box")
    widget.shutdown()


def test_two_channel_2d_model_round_trip(tmp_path, offline):
    """An untrained 2-D, 2-channel model with a filter bank and equalisation: exported, validated, loaded back."""
    from napari_sparse_unet.core.config import ModelConfig
    from napari_sparse_unet.core.network.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(2, 2, 3, ((2, 2),), base_channels=2, sigmas=((1.0, 1.0),))
    model = SegmentationModel(
        network=build_model(config).eval(), model_config=config, train_config=TrainConfig(),
        normalization=Normalization(low=(0.0, 0.0), high=(1.0, 1.0), knots=((0.0, 0.3, 1.0), (0.0, 2.0))),
        class_values=(1, 2, 4), patch_size=(16, 16),
    )
    image = np.random.default_rng(1).random((2, 40, 36)).astype(np.float32)
    summary = bx.export_model(model, tmp_path / "flat.zip", image, run_test=False)
    assert summary.status == "valid-format"
    with zipfile.ZipFile(tmp_path / "flat.zip") as archive:
        assert np.load(io_bytes(archive.read("test_input.npy"))).shape[:2] == (1, 2)
    np.testing.assert_array_equal(predict(SegmentationModel.load(tmp_path / "flat.zip"), image, EXACT), predict(model, image, EXACT))


def _demo_model(spacing: tuple[float, float, float]) -> tuple[SegmentationModel, np.ndarray]:
    """The CPU preset (the default network, filter bank and voxel head) trained 2 steps on the 16×64×64 sample, as ``demo``."""
    import dataclasses

    from napari_sparse_unet._sample_data import CLASS_NAMES, make_sample_volume
    from napari_sparse_unet.core.config import PRESETS

    image, _, annotation = make_sample_volume(shape=(16, 64, 64), seed=0)
    names = [CLASS_NAMES[v - 1] for v in np.unique(annotation[annotation > 0])]
    config = dataclasses.replace(PRESETS["cpu"], max_steps=2, max_time=None, device="cpu")
    return train([image], [annotation], config, spacing=spacing, class_names=names), image


def test_trace_of_a_demo_model_passes_its_check():
    """The demo model of the bug report: the check compared the trace with the eager module, whose filter bank
    (banded matrices) and voxel head (grid lookups) round differently, and stopped with 'trace differs'."""
    from napari_sparse_unet._sample_data import SPACING

    model, image = _demo_model(SPACING)
    example = torch.from_numpy(bn.make_test_input(model, image, bn.tile_rules(model)))
    traced = bn.torchscript_network(model, example)
    with torch.no_grad():
        packaged, eager = traced(example), bn.PackagedNetwork(model).eval()(example)
    assert packaged.shape == eager.shape and float((packaged - eager).abs().max()) < 1e-2
    assert float((packaged.argmax(1) == eager.argmax(1)).float().mean()) > 0.999


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the peak is read from /proc (Linux)")
def test_export_with_fine_anisotropic_spacing_fits_a_laptop(tmp_path):
    """Spacing 0.3×0.2×0.2: the filter bank's σ in voxels, its halo and so the test input are large (96×144×144).
    Before, tracing encoded 528 floats a voxel at once (killed at 21 GB); the export fits a laptop's 2 GB."""
    import subprocess
    import sys

    model, image = _demo_model((0.3, 0.2, 0.2))
    model.save(tmp_path / "fine.pt")
    io.write_volume(tmp_path / "image.tif", image, spacing=(0.3, 0.2, 0.2))
    # The child reports its own high-water mark (VmHWM): wait4's maxrss would also count this large
    # pytest process, whose memory the child holds between its fork and its exec.
    report = ("import atexit, sys; from napari_sparse_unet.cli import main; atexit.register(lambda: print('VmHWM',"
              " open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)); sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", report, "export", "--model", tmp_path / "fine.pt", "--image",
            tmp_path / "image.tif", "--out", tmp_path / "fine.zip", "--no-test", "-q", "--threads", "2"]
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak = int(done.stderr.split("VmHWM")[-1].split()[0]) * 1024  # kB
    assert peak <= 2e9, f"export peaked at {peak / 1e9:.2f} GB"
