"""Round trips, axis order, spacing and atomic writes of napari_sparse_unet.io."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sparse_unet import io

FORMATS = ["vol.tif", "vol.tiff", "vol.npy", "vol.nii", "vol.nii.gz", "vol.zarr"]
WITH_SPACING = [f for f in FORMATS if not f.endswith(".npy")]


def _volume(dtype, shape=(5, 6, 7)) -> np.ndarray:
    values = np.arange(np.prod(shape)).reshape(shape) % 200
    return (values - (50 if np.issubdtype(dtype, np.signedinteger) else 0)).astype(dtype)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_round_trip_keeps_values_shape_and_dtype(tmp_path, name, dtype):
    data = _volume(dtype)
    io.write_volume(tmp_path / name, data)
    back = io.read_volume(tmp_path / name)
    assert isinstance(back, np.ndarray)
    assert back.shape == data.shape and back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)
    assert not [p for p in _listing(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("shape", [(9, 8), (2, 3, 4, 5)])
def test_round_trip_2d_and_channels(tmp_path, name, shape):
    data = _volume(np.uint16, shape)
    io.write_volume(tmp_path / name, data)
    np.testing.assert_array_equal(io.read_volume(tmp_path / name), data)


@pytest.mark.parametrize("name", WITH_SPACING)
def test_spacing_round_trip(tmp_path, name):
    io.write_volume(tmp_path / name, _volume(np.uint8), spacing=(2.5, 0.5, 0.25))
    _, spacing = io.read_volume_with_spacing(tmp_path / name)
    np.testing.assert_allclose(spacing, (2.5, 0.5, 0.25), rtol=1e-6)


def test_no_spacing_recorded_reads_none(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", _volume(np.uint8))  # tifffile's default resolution 1/1, no unit
    assert io.read_volume_with_spacing(tmp_path / "plain.tif")[1] is None
    io.write_volume(tmp_path / "v.npy", _volume(np.uint8))
    assert io.read_volume_with_spacing(tmp_path / "v.npy")[1] is None


def test_imagej_tiff_spacing_and_channel_order(tmp_path):
    import tifffile

    zcyx = np.zeros((4, 2, 5, 6), np.uint16)
    zcyx[:, 1] = 7
    tifffile.imwrite(
        tmp_path / "ij.tif", zcyx, imagej=True, resolution=(1 / 0.3, 1 / 0.3),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZCYX"},
    )
    array, spacing = io.read_volume_with_spacing(tmp_path / "ij.tif")
    assert array.shape == (2, 4, 5, 6)  # ImageJ's (Z, C, Y, X) comes back channel-first
    assert array[1].min() == 7 and array[0].max() == 0
    np.testing.assert_allclose(spacing, (1.5, 0.3, 0.3), rtol=1e-6)


def test_nifti_axes_are_reversed_both_ways(tmp_path):
    nib = pytest.importorskip("nibabel")
    zyx = _volume(np.int16, (3, 4, 5))
    io.write_volume(tmp_path / "a.nii.gz", zyx, spacing=(3.0, 2.0, 1.0))
    stored = nib.load(str(tmp_path / "a.nii.gz"))
    assert stored.shape == (5, 4, 3)  # NIfTI keeps (X, Y, Z)
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), zyx.T)
    np.testing.assert_allclose(stored.header.get_zooms()[:3], (1.0, 2.0, 3.0))
    # The layer's X runs to the patient's left and Y posterior (radiological display axes).
    np.testing.assert_allclose(np.diag(stored.affine)[:3], (-1.0, -2.0, 3.0))

    # A file made by another tool, stored RAS (x to the right, y anterior): value at voxel
    # (x=4, y=1, z=2) must land at [z=2, y=4-1-1=2, x=5-4-1=0].
    xyz = np.zeros((5, 4, 3), np.float32)
    xyz[4, 1, 2] = 9
    affine = np.diag([0.7, 0.8, 4.0, 1.0])
    nib.save(nib.Nifti1Image(xyz, affine), str(tmp_path / "b.nii"))
    array, spacing = io.read_volume_with_spacing(tmp_path / "b.nii")
    assert array.shape == (3, 4, 5) and array[2, 2, 0] == 9
    np.testing.assert_allclose(spacing, (4.0, 0.8, 0.7), rtol=1e-6)


def test_nifti_output_copies_the_affine_of_like(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.array([[0, 0, -2.0, 10], [0, 1.5, 0, -3], [1.25, 0, 0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), affine), str(tmp_path / "in.nii.gz"))
    labels = np.ones((3, 4, 5), np.uint8)
    io.write_volume(tmp_path / "out.nii.gz", labels, like=tmp_path / "in.nii.gz")
    out = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(io.read_volume(tmp_path / "out.nii.gz"), labels)


def test_spacing_of_like_is_used_for_other_formats(tmp_path):
    io.write_volume(tmp_path / "in.tif", _volume(np.uint8), spacing=(4.0, 1.0, 1.0))
    io.write_volume(tmp_path / "out.nii.gz", _volume(np.uint8), like=tmp_path / "in.tif")
    assert io.read_volume_with_spacing(tmp_path / "out.nii.gz")[1] == pytest.approx((4.0, 1.0, 1.0))


def test_zarr_reads_lazily_and_output_streams_in_z_chunks(tmp_path):
    pytest.importorskip("zarr")
    shape = (64, 512, 512)  # 16 MB: more than one ~8 MB slab
    with io.create_output(tmp_path / "out.zarr", shape, np.uint8, spacing=(2.0, 1.0, 1.0)) as out:
        assert not isinstance(out, np.ndarray)
        assert out.chunks[0] < shape[0] and tuple(out.chunks[1:]) == shape[1:]
        assert not (tmp_path / "out.zarr").exists()  # appears only when complete
        for z in range(0, shape[0], 16):
            out[z : z + 16] = z
    lazy, spacing = io.read_volume_with_spacing(tmp_path / "out.zarr", lazy=True)
    assert not isinstance(lazy, np.ndarray) and lazy.shape == shape
    assert spacing == (2.0, 1.0, 1.0)
    assert lazy[40, 0, 0] == 32
    assert _listing(tmp_path) == ["out.zarr"]


def test_zarr_group_with_one_array(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(2, 3, 4), dtype="uint8") if hasattr(group, "create_array") else group.create_dataset(
        "raw", shape=(2, 3, 4), dtype="uint8"
    )
    group["raw"][:] = 5
    np.testing.assert_array_equal(io.read_volume(tmp_path / "g.zarr"), np.full((2, 3, 4), 5, np.uint8))


@pytest.mark.parametrize("name", ["out.tif", "out.npy", "out.nii.gz", "out.zarr"])
def test_failed_output_leaves_nothing(tmp_path, name):
    with pytest.raises(RuntimeError):
        with io.create_output(tmp_path / name, (4, 5, 6), np.uint8) as out:
            out[:2] = 1
            raise RuntimeError("prediction failed half way")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("name", ["out.tif", "out.npy", "out.nii.gz", "out.zarr"])
def test_output_replaces_an_existing_target_only_when_complete(tmp_path, name):
    io.write_volume(tmp_path / name, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(RuntimeError):
        with io.create_output(tmp_path / name, (4, 5, 6), np.uint8) as out:
            out[:] = 1
            raise RuntimeError("stop")
    assert io.read_volume(tmp_path / name).shape == (2, 3, 4)  # the old file is intact
    with io.create_output(tmp_path / name, (4, 5, 6), np.uint8) as out:
        out[:] = 3
    np.testing.assert_array_equal(io.read_volume(tmp_path / name), np.full((4, 5, 6), 3, np.uint8))
    assert _listing(tmp_path) == [name]


def test_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    import tifffile

    target = tmp_path / "a.tif"
    io.write_volume(target, np.ones((2, 3, 4), np.uint8))

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        io.write_volume(target, np.zeros((2, 3, 4), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(io.read_volume(target), np.ones((2, 3, 4), np.uint8))
    assert _listing(tmp_path) == ["a.tif"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(io.VolumeIOError, match=r"image\.png"):
        io.read_volume(tmp_path / "image.png")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        io.read_volume(tmp_path / "missing.tif")
    for name in ("corrupt.tif", "corrupt.npy", "corrupt.nii.gz"):
        (tmp_path / name).write_bytes(b"this is not an image" * 8)
        with pytest.raises(io.VolumeIOError, match=name.replace(".", r"\.")):
            io.read_volume(tmp_path / name)
    with pytest.raises(io.VolumeIOError, match="does not exist"):
        io.write_volume(tmp_path / "no" / "such" / "dir.tif", np.zeros((2, 2)))
    with pytest.raises(io.VolumeIOError, match=r"\.png"):
        io.write_volume(tmp_path / "out.png", np.zeros((2, 2)))


def test_missing_optional_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # makes "import zarr" fail
    with pytest.raises(io.VolumeIOError, match=r"napari-sparse-unet\[io\]"):
        io.write_volume(tmp_path / "x.zarr", np.zeros((2, 2), np.uint8))
    assert _listing(tmp_path) == []


def test_real_tiff_reads_without_spacing(shared_data):
    image, spacing = io.read_volume_with_spacing(shared_data / "plantseg_ovule" / "image.tif")
    assert image.shape == (32, 128, 128) and image.dtype == np.uint8
    assert spacing is None  # those files record no resolution; meta.json holds it


def test_atomic_outputs_get_the_users_usual_file_mode(tmp_path):
    import os

    from napari_sparse_unet.core.files import atomic_file

    target = tmp_path / "out.bin"
    with atomic_file(target) as temp:
        temp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
