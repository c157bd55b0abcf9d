"""End to end in napari: a shared CT volume saved as a DICOM series, a NIfTI file and a
MATLAB v7.3 file opens through this plugin's npe2 reader with the same voxels, the same
orientation (an asymmetric marker stays where it was) and its spacing as the layer's
scale; a Labels layer saved with the plugin's writer lands on the scan's voxel grid.

The volume is ``../shared/data/totalseg_ct`` (CI has it): when it is missing this test
fails rather than skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from medical_files import matlab_order, write_dicom_series, write_mat_v73, write_nifti_ras

pytestmark = pytest.mark.gui

CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_ct"
PLUGIN = "napari-sparse-unet"


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> dict:
    """The CT (Z, Y, X) int16 HU with a marker block near one corner, written in three formats."""
    volume = tifffile.imread(CT / "image.tif")  # FileNotFoundError (a failure) when ../shared is absent
    spacing = tuple(json.loads((CT / "meta.json").read_text())["spacing_zyx_mm"])
    volume = np.clip(volume, -1024, 3000)  # the DICOM writer stores HU + 1024 as uint16; 3071 stays unique
    volume[2:5, 3:7, 4:10] = 3071  # no flip or transpose of the axes maps this block onto itself
    labels = (tifffile.imread(CT / "labels.tif") == 1).astype(np.uint8)  # liver
    folder = tmp_path_factory.mktemp("ct")
    write_dicom_series(folder / "dicom", volume, spacing)
    affine = write_nifti_ras(folder / "scan.nii.gz", volume, spacing)
    write_mat_v73(folder / "volume.mat", {"ct": matlab_order(volume).astype(np.float64), "liver": matlab_order(labels)})
    return {"volume": volume, "labels": labels, "spacing": spacing, "affine": affine, "folder": folder}


def test_dicom_nifti_and_mat_open_in_napari_with_orientation_and_scale(make_napari_viewer, ct_files):
    nib = pytest.importorskip("nibabel")
    from napari.plugins import _npe2

    volume, spacing, folder = ct_files["volume"], ct_files["spacing"], ct_files["folder"]
    viewer = make_napari_viewer()
    for name in ("dicom", "scan.nii.gz", "volume.mat"):
        assert PLUGIN in _npe2.get_readers(str(folder / name)), name
    (dicom,) = viewer.open(str(folder / "dicom"), plugin=PLUGIN)
    (nifti,) = viewer.open(str(folder / "scan.nii.gz"), plugin=PLUGIN)
    ct, liver = viewer.open(str(folder / "volume.mat"), plugin=None)  # the only reader of .mat: no choice asked
    for layer in (dicom, nifti, ct):
        assert layer.data.shape == volume.shape, layer.name
        np.testing.assert_array_equal(layer.data, volume, err_msg=layer.name)
        assert tuple(np.argwhere(layer.data == 3071).min(axis=0)) == (2, 3, 4), layer.name  # the marker's corner
    for layer in (dicom, nifti):
        np.testing.assert_allclose(layer.scale, spacing)
        assert np.asarray(layer.metadata["affine"]).shape == (4, 4)
    np.testing.assert_allclose(nifti.metadata["affine"], ct_files["affine"])
    np.testing.assert_array_equal(liver.data, ct_files["labels"])
    assert [ct.name, liver.name] == ["ct", "liver"]

    # The widget's annotation layer for the NIfTI layer keeps its geometry; painted and saved with
    # the plugin's writer, it goes back on the scan's voxel grid.
    from napari_sparse_unet._layers import add_annotation_layer, image_snapshot, show_prediction

    labels = add_annotation_layer(viewer, nifti)
    prediction = show_prediction(viewer, ct_files["labels"], image_snapshot(nifti))
    np.testing.assert_allclose(prediction.metadata["affine"], ct_files["affine"])  # a prediction saves the same way
    np.testing.assert_allclose(labels.scale, spacing)
    labels.data = ct_files["labels"]
    target = folder / "liver.nii.gz"
    labels.save(str(target), plugin=PLUGIN)
    saved = nib.load(str(target))
    np.testing.assert_allclose(saved.affine, ct_files["affine"])
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), ct_files["labels"].T[::-1, ::-1, :])
