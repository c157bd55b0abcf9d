"""Readers of DICOM series, NIfTI and MATLAB .mat files; the npe2 reader and writer functions.

Every file is made here (pydicom, nibabel, scipy, h5py).  Layer axes: (Z, Y, X) with X to
the patient's left, Y posterior, Z superior for DICOM and NIfTI; MATLAB's V(row, column,
slice) becomes (slice, row, column).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from medical_files import matlab_order, ras_affine, write_dicom_series, write_mat_v73, write_nifti_ras

from napari_sparse_unet import io
from napari_sparse_unet._layers import files

SPACING = (3.0, 0.75, 0.5)


@pytest.fixture
def volume() -> np.ndarray:
    """(Z, Y, X) = (6, 5, 7) HU-like int16 with a marker at one corner: no flip or transpose maps it to itself."""
    vol = np.random.default_rng(0).integers(-1000, 1500, (6, 5, 7)).astype(np.int16)
    vol[0, 0, 0] = 3000
    return vol


# --------------------------------------------------------------------------- DICOM


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path, volume):
    folder = write_dicom_series(tmp_path / "ct", volume, SPACING, slope=2.0, intercept=-1024.0)
    array, spacing = io.read_volume_with_spacing(folder)
    assert array.dtype == np.int16  # whole-number slope and intercept: integers, Hounsfield units
    np.testing.assert_array_equal(array, np.round((volume + 1024) / 2) * 2 - 1024)
    assert spacing == pytest.approx(SPACING)
    (vol,) = io.read_volumes(folder)
    assert vol.metadata["unit"] == "HU" and vol.metadata["modality"] == "CT"
    np.testing.assert_allclose(vol.affine[:3, 3], (20.0, 30.0, 100.0))  # LPS (-20, -30, 100) in RAS


def test_dicom_fractional_slope_gives_float(tmp_path, volume):
    folder = write_dicom_series(tmp_path / "pet", volume.astype(np.float64) / 4, SPACING, slope=0.25, intercept=-500.0)
    array = io.read_volume(folder)
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, volume / 4, atol=0.13)


def test_dicom_errors_name_the_problem(tmp_path, volume):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    with pytest.raises(io.VolumeIOError, match=r"no DICOM image files .*\(1 other file"):
        io.read_volume(tmp_path / "empty")
    mixed = write_dicom_series(tmp_path / "mixed", volume[:3], SPACING, series_number=3, description="AX")
    write_dicom_series(mixed, volume[:2], SPACING, series_number=7, description="COR", seed=5)
    with pytest.raises(io.VolumeIOError, match=r"mixes 2 DICOM series: series 3 'AX' \(3 files\); series 7 'COR' \(2 files\)"):
        io.read_volume(mixed)
    sizes = write_dicom_series(tmp_path / "sizes", volume[:3], SPACING)
    other = write_dicom_series(tmp_path / "other", volume[:1, :4], SPACING)
    import pydicom

    ds = pydicom.dcmread(next(other.iterdir()))
    ds.SeriesInstanceUID = pydicom.dcmread(next(sizes.iterdir())).SeriesInstanceUID
    ds.save_as(sizes / "odd.dcm")
    with pytest.raises(io.VolumeIOError, match=r"different sizes .*5×7 \(3 files\), 4×7 \(1 files\)"):
        io.read_volume(sizes)


def test_dicom_uneven_or_repeated_positions_refused(tmp_path, volume):
    import pydicom

    folder = write_dicom_series(tmp_path / "gap", volume, SPACING)
    moved = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [-20.0, -30.0, 500.0]
    ds.save_as(moved)
    with pytest.raises(io.VolumeIOError, match="unevenly spaced"):
        io.read_volume(folder)
    ds.ImagePositionPatient = [-20.0, -30.0, 100.0]  # the position of slice 0 again
    ds.save_as(moved)
    with pytest.raises(io.VolumeIOError, match="share one position"):
        io.read_volume(folder)


# --------------------------------------------------------------------------- NIfTI


def test_nifti_ras_file_comes_in_display_axes_and_labels_go_back_on_its_grid(tmp_path, volume):
    nib = pytest.importorskip("nibabel")
    affine = write_nifti_ras(tmp_path / "scan.nii.gz", volume, SPACING)
    (vol,) = io.read_volumes(tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(vol.data, volume)
    assert vol.spacing == pytest.approx(SPACING) and vol.name == "scan"
    np.testing.assert_allclose(vol.affine, affine)

    labels = (volume > 0).astype(np.uint8)
    io.write_volume(tmp_path / "labels.nii.gz", labels, affine=vol.affine)
    out = nib.load(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), labels.T[::-1, ::-1, :])  # the scan's voxel order


def test_nifti_permuted_affine_is_reoriented(tmp_path):
    nib = pytest.importorskip("nibabel")
    # file axes: x -> superior (1.25 mm), y -> anterior (1.5 mm), z -> left (2 mm)
    affine = np.array([[0, 0, -2.0, 10], [0, 1.5, 0, -3], [1.25, 0, 0, 7], [0, 0, 0, 1]])
    xyz = np.zeros((5, 4, 3), np.float32)
    xyz[4, 0, 2] = 9  # most superior, most posterior, most left
    nib.save(nib.Nifti1Image(xyz, affine), str(tmp_path / "p.nii"))
    array, spacing = io.read_volume_with_spacing(tmp_path / "p.nii")
    assert array.shape == (5, 4, 3) and array[4, 3, 2] == 9  # (Z=S, Y=P, X=L): last slice, last row, last column
    assert spacing == pytest.approx((1.25, 1.5, 2.0))


# --------------------------------------------------------------------------- MATLAB


def test_mat_v5_and_v73_give_the_same_layers(tmp_path, volume):
    scipy.io.savemat(tmp_path / "v5.mat", {"ct": matlab_order(volume), "spacing": np.array([0.75, 0.5, 3.0]), "note": "x"})
    write_mat_v73(tmp_path / "v73.mat", {"ct": matlab_order(volume).astype(np.float64), "label": np.zeros((2, 3))})
    for name, spacing in (("v5.mat", SPACING), ("v73.mat", None)):
        array, got = io.read_volume_with_spacing(tmp_path / name)
        np.testing.assert_array_equal(array, volume)  # slice k = MATLAB's V(:,:,k)
        assert got == (pytest.approx(spacing) if spacing else None)


def test_mat_several_arrays_need_a_key_and_none_is_an_error(tmp_path, volume):
    scipy.io.savemat(tmp_path / "two.mat", {"ct": matlab_order(volume), "mask": matlab_order(volume > 0)})
    with pytest.raises(io.VolumeIOError, match=r"holds 2 3-D arrays \(ct, mask\): choose one with --key NAME"):
        io.read_volume(tmp_path / "two.mat")
    np.testing.assert_array_equal(io.read_volume_with_spacing(tmp_path / "two.mat", key="mask")[0], volume > 0)
    with pytest.raises(io.VolumeIOError, match="no 3-D array named 'dose'; its 3-D arrays are: ct, mask"):
        io.read_volume_with_spacing(tmp_path / "two.mat", key="dose")
    assert [v.name for v in io.read_volumes(tmp_path / "two.mat", all_arrays=True)] == ["ct", "mask"]
    scipy.io.savemat(tmp_path / "flat.mat", {"profile": np.arange(5.0), "title": "x"})
    with pytest.raises(io.VolumeIOError, match=r"holds no 3-D numeric array \(it holds profile \(1×5 float64\)"):
        io.read_volume(tmp_path / "flat.mat")
    with pytest.raises(io.VolumeIOError, match="not one"):
        io.read_volume_with_spacing(tmp_path / "x.tif", key="ct")


def test_read_only_formats_are_not_written(tmp_path, volume):
    with pytest.raises(io.VolumeIOError, match="read only"):
        io.write_volume(tmp_path / "out.mat", volume)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- npe2 functions


def test_reader_claims_only_its_formats(tmp_path, volume):
    write_dicom_series(tmp_path / "ct", volume, SPACING)
    (tmp_path / "tiffs").mkdir()
    io.write_volume(tmp_path / "tiffs" / "a.tif", volume)
    assert files.get_reader(str(tmp_path / "ct")) is files.read_layers
    assert files.get_reader(str(tmp_path / "tiffs")) is None
    assert files.get_reader(str(tmp_path / "tiffs" / "a.tif")) is None
    ((data, kwargs, kind),) = files.read_layers(str(tmp_path / "ct"))
    assert kind == "image" and kwargs["scale"] == pytest.approx(SPACING) and kwargs["name"] == "ct"
    assert np.asarray(kwargs["metadata"]["affine"]).shape == (4, 4)
    np.testing.assert_array_equal(data, volume)


def test_labels_writer_tiff_keeps_spacing_and_nifti_the_source_grid(tmp_path, volume):
    nib = pytest.importorskip("nibabel")
    labels = (volume > 0).astype(np.uint8)
    files.write_labels(str(tmp_path / "l.tif"), labels, {"scale": SPACING, "metadata": {}})
    back, spacing = io.read_volume_with_spacing(tmp_path / "l.tif")
    np.testing.assert_array_equal(back, labels)
    assert spacing == pytest.approx(SPACING)
    meta = {"scale": SPACING, "metadata": {"affine": ras_affine(SPACING).tolist()}}
    files.write_labels(str(tmp_path / "l.nii.gz"), labels, meta)
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "l.nii.gz")).dataobj), labels.T[::-1, ::-1, :])
    files.write_labels(str(tmp_path / "plain.nii"), labels, {"scale": SPACING, "metadata": {}})
    assert io.read_volume_with_spacing(tmp_path / "plain.nii")[1] == pytest.approx(SPACING)
    np.testing.assert_array_equal(io.read_volume(tmp_path / "plain.nii"), labels)
