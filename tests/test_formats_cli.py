"""The command line reads DICOM series and .mat files (``--key``) through the same readers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from conftest import _tiny_pair
from medical_files import matlab_order, write_dicom_series
from test_cli import TINY_TRAIN, assert_one_line_error, run

from napari_sparse_unet import io
from napari_sparse_unet.io.formats.dicom import dicom_affine


def test_train_from_mat_with_keys_then_predict_a_dicom_series_to_nifti(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    image, _, annotation = _tiny_pair()
    scipy.io.savemat(tmp_path / "case.mat", {"image": matlab_order(image), "annotation": matlab_order(annotation),
                                             "spacing": np.array([1.0, 1.0, 2.0])})
    code, _, err = run(["train", "--image", tmp_path / "case.mat", "--labels", tmp_path / "case.mat",
                        "--model", tmp_path / "m.pt", *TINY_TRAIN], capsys)
    assert_one_line_error(code, err, "holds 2 3-D arrays (image, annotation)", "--key NAME")
    assert not (tmp_path / "m.pt").exists()
    code, _, err = run(["train", "--image", tmp_path / "case.mat", "--key", "image", "--labels", tmp_path / "case.mat",
                        "--labels-key", "annotation", "--model", tmp_path / "m.pt", *TINY_TRAIN], capsys)
    assert code == 0, err

    folder = write_dicom_series(tmp_path / "series", image * 1000, (2.0, 1.0, 1.0), intercept=-100.0)
    code, _, err = run(["predict", "--model", tmp_path / "m.pt", "--image", folder, "--out", tmp_path / "pred.nii.gz",
                        "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    saved = nib.load(str(tmp_path / "pred.nii.gz"))
    np.testing.assert_allclose(saved.affine, dicom_affine(folder))  # on the series' own voxel grid
    prediction, spacing = io.read_volume_with_spacing(tmp_path / "pred.nii.gz")
    assert prediction.shape == image.shape and spacing == pytest.approx((2.0, 1.0, 1.0))


def test_bad_dicom_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(["train", "--image", tmp_path / "empty", "--labels", tmp_path / "l.tif",
                        "--model", tmp_path / "m.pt", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "no DICOM image files in folder", "empty")
