"""The command line: help, one-line errors with exit status 2, train -> predict end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sparse_unet
from napari_sparse_unet import io
from napari_sparse_unet.cli import main

TINY_TRAIN = ["--steps", "2", "--patch-size", "8", "16", "16", "--device", "cpu", "--threads", "1", "-q"]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A model trained for two steps from the CLI on a tiny volume, with its input files."""
    from conftest import _tiny_pair

    folder = tmp_path_factory.mktemp("trained")
    image, truth, annotation = _tiny_pair()
    io.write_volume(folder / "image.tif", image, spacing=(2.0, 1.0, 1.0))
    tifffile.imwrite(folder / "labels.tif", annotation)
    code = main(["train", "--image", str(folder / "image.tif"), "--labels", str(folder / "labels.tif"),
                 "--model", str(folder / "model.pt"), *TINY_TRAIN])
    assert code == 0
    return {"image": folder / "image.tif", "labels": folder / "labels.tif", "model": folder / "model.pt"}


# --------------------------------------------------------------------------- help


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "predict", "export", "demo"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "predict", "export", "demo"])
def test_command_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli_without_torch():
    code = (
        "import runpy, sys; sys.argv = ['x', '--version']\n"
        "try: runpy.run_module('napari_sparse_unet', run_name='__main__')\n"
        "except SystemExit as e: print('exit', e.code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    version = f"napari-sparse-unet {napari_sparse_unet.__version__}"  # the one version, as the metadata has it
    assert version in result.stdout and "exit 0 False" in result.stdout, result.stdout + result.stderr


def test_missing_command_or_bad_option_is_a_usage_error(capsys):
    for argv in ([], ["train", "--image", "a.tif"], ["predict", "--model", "m.pt", "--image", "a.tif", "--out", "o.tif",
                                                      "--overlap", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "overlap" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input: training


def _write(path: Path, array) -> Path:
    io.write_volume(path, np.asarray(array))
    return path


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("shape_mismatch", ["(12, 32, 30)", "(12, 32, 32)"]),
        ("one_d", ["1 dimensions"]),
        ("five_d", ["5 dimensions"]),
        ("nothing_painted", ["no annotated voxel"]),
        ("only_background", ["only background"]),
        ("only_one_class", ["[2]", "background"]),
        ("nan", ["NaN", "3 voxels"]),
        ("float_labels", ["float32", "labels.npy"]),
        ("unknown_format", ["image.png"]),
        ("missing_image", ["missing.tif"]),
        ("corrupt_image", ["corrupt.tif"]),
        ("count_mismatch", ["2 --image", "1 --labels"]),
        ("bad_output_folder", ["no/such/folder"]),
        ("bad_spacing", ["spacing", "(2.0, 1.0)"]),
        ("bad_patch", ["patch size", "(5, 16, 16)"]),
        ("cuda_unavailable", ["cuda"]),
    ],
)
def test_bad_training_input_gives_one_line_and_exit_2(tmp_path, capsys, tiny_volume, case, fragments):
    image, _, annotation = tiny_volume
    img = _write(tmp_path / "image.tif", image)
    lab = _write(tmp_path / "labels.tif", annotation)
    model = tmp_path / "model.pt"
    extra: list[str] = []
    if case == "shape_mismatch":
        lab = _write(tmp_path / "labels.tif", annotation[:, :, :30])
    elif case == "one_d":
        img, lab = _write(tmp_path / "image.npy", image.ravel()), _write(tmp_path / "labels.npy", annotation.ravel())
    elif case == "five_d":
        img = _write(tmp_path / "image.npy", image[None, None])
    elif case == "nothing_painted":
        lab = _write(tmp_path / "labels.tif", np.zeros_like(annotation))
    elif case == "only_background":
        lab = _write(tmp_path / "labels.tif", np.where(annotation > 0, 1, 0).astype(np.uint8))
    elif case == "only_one_class":
        lab = _write(tmp_path / "labels.tif", np.where(annotation > 0, 2, 0).astype(np.uint8))
    elif case == "nan":
        bad = image.copy()
        bad[0, 0, :3] = np.nan
        img = _write(tmp_path / "image.tif", bad)
    elif case == "float_labels":
        lab = _write(tmp_path / "labels.npy", annotation.astype(np.float32) + 0.5)
    elif case == "unknown_format":
        img = tmp_path / "image.png"
        img.write_bytes(b"\x89PNG")
    elif case == "missing_image":
        img = tmp_path / "missing.tif"
    elif case == "corrupt_image":
        img = tmp_path / "corrupt.tif"
        img.write_bytes(b"not a tiff at all" * 10)
    elif case == "count_mismatch":
        extra = ["--image", str(img)]
    elif case == "bad_output_folder":
        model = tmp_path / "no" / "such" / "folder" / "model.pt"
    elif case == "bad_spacing":
        extra = ["--spacing", "2", "1"]
    elif case == "bad_patch":
        extra = ["--patch-size", "5", "16", "16"]
    elif case == "cuda_unavailable":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is available here")
        extra = ["--device", "cuda"]
    argv = ["train", "--image", img, "--labels", lab, "--model", model, "--steps", "1", *extra]
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, *fragments)
    assert not model.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


# --------------------------------------------------------------------------- bad input: prediction


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_model", ["nope.pt", "does not exist"]),
        ("corrupt_model", ["corrupt.pt", "cannot be read"]),
        ("not_our_model", ["other.pt", "not a napari-sparse-unet model"]),
        ("channels", ["2 channel", "1"]),
        ("image_2d", ["(32, 32)"]),
        ("nan", ["NaN"]),
        ("unknown_output", ["out.png"]),
        ("output_is_input", ["input image"]),
        ("uncertainty_is_input", ["--uncertainty-out", "input image"]),
        ("probabilities_are_out", ["--probabilities", "same file as --out"]),
        ("bad_tile", ["tile_size", "(3, 16, 16)"]),
        ("small_budget", ["memory_budget_mb", ">= 16", "8"]),
    ],
)
def test_bad_prediction_input_gives_one_line_and_exit_2(tmp_path, capsys, trained, tiny_volume, case, fragments):
    import torch

    image, _, _ = tiny_volume
    model, img, out = trained["model"], trained["image"], tmp_path / "out.tif"
    extra: list[str] = []
    if case == "missing_model":
        model = tmp_path / "nope.pt"
    elif case == "corrupt_model":
        model = tmp_path / "corrupt.pt"
        model.write_bytes(b"\x00garbage" * 100)
    elif case == "not_our_model":
        model = tmp_path / "other.pt"
        torch.save({"weights": torch.zeros(3)}, model)
    elif case == "channels":
        img = _write(tmp_path / "two.tif", np.stack([image, image]))
    elif case == "image_2d":
        img = _write(tmp_path / "flat.tif", image[0])
    elif case == "nan":
        bad = image.copy()
        bad[3, 3, 3] = np.inf
        img = _write(tmp_path / "nan.tif", bad)
    elif case == "unknown_output":
        out = tmp_path / "out.png"
    elif case == "output_is_input":
        img = _write(tmp_path / "same.tif", image)
        out = img
    elif case == "uncertainty_is_input":
        img = _write(tmp_path / "same.tif", image)
        extra = ["--uncertainty-out", str(img)]
    elif case == "probabilities_are_out":
        extra = ["--probabilities", str(out)]
    elif case == "bad_tile":
        extra = ["--tile-size", "3", "16", "16"]
    elif case == "small_budget":
        extra = ["--memory-budget", "8"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(["predict", "--model", model, "--image", img, "--out", out, "-q", *extra], capsys)
    assert_one_line_error(code, err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "prediction failed but wrote something"


# --------------------------------------------------------------------------- end to end


def test_train_then_predict_writes_labels_and_probabilities(tmp_path, capsys, trained):
    import torch

    from napari_sparse_unet.core.checkpoint import SegmentationModel

    model = SegmentationModel.load(trained["model"])
    assert model.class_values == (1, 2, 3)
    assert model.spacing == pytest.approx((2.0, 1.0, 1.0))  # read from the TIFF's metadata
    out, probs = tmp_path / "labels.tif", tmp_path / "probs.npy"
    code, stdout, err = run(["predict", "--model", trained["model"], "--image", trained["image"], "--out", out,
                             "--probabilities", probs, "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    assert "wrote" in stdout
    labels = tifffile.imread(out)
    assert labels.shape == (12, 32, 32) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 2, 3}  # background 0, classes keep their painted values
    p = np.load(probs)
    assert p.shape == (3, 12, 32, 32) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-3)
    assert io.read_volume_with_spacing(out)[1] == pytest.approx((2.0, 1.0, 1.0))
    assert torch.get_num_threads() >= 1


def test_predict_streams_zarr_to_zarr_and_writes_nifti(tmp_path, capsys, trained):
    pytest.importorskip("zarr")
    io.write_volume(tmp_path / "image.zarr", io.read_volume(trained["image"]), spacing=(2.0, 1.0, 1.0))
    code, _, err = run(["predict", "--model", trained["model"], "--image", tmp_path / "image.zarr",
                        "--out", tmp_path / "labels.zarr", "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    labels = io.read_volume(tmp_path / "labels.zarr", lazy=True)
    assert not isinstance(labels, np.ndarray) and labels.shape == (12, 32, 32)
    code, _, err = run(["predict", "--model", trained["model"], "--image", trained["image"],
                        "--out", tmp_path / "labels.nii.gz", "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(io.read_volume(tmp_path / "labels.nii.gz"), np.asarray(labels[...]))


def test_resume_and_spacing_option(tmp_path, capsys, trained):
    from napari_sparse_unet.core.checkpoint import SegmentationModel

    out = tmp_path / "more.pt"
    code, stdout, err = run(["train", "--image", trained["image"], "--labels", trained["labels"], "--model", out,
                             "--resume", trained["model"], "--spacing", "3", "1", "1", *TINY_TRAIN], capsys)
    assert code == 0, err
    assert "saved model" in stdout
    resumed = SegmentationModel.load(out)
    assert resumed.history["steps"] == 4  # 2 before + 2 now
    assert resumed.spacing == pytest.approx((3.0, 1.0, 1.0))


def test_demo_reports_dice_and_times(tmp_path, capsys):
    code, out, err = run(["demo", "--shape", "16", "48", "48", "--steps", "2", "--patch-size", "8", "16", "16",
                          "--device", "cpu", "--threads", "1", "-q", "--out-dir", tmp_path / "demo"], capsys)
    assert code == 0, err
    for needle in ("nuclei", "vesicles", "filaments", "mean", "Dice", "train", "predict"):
        assert needle in out
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {
        "image.tif", "annotation.tif", "ground_truth.tif", "prediction.tif", "model.pt"
    }
