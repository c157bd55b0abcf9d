"""Read and write volumes: TIFF, .npy, NIfTI (.nii, .nii.gz), zarr (a ``*.zarr`` folder),
and read DICOM series (a folder of slices) and MATLAB ``.mat`` files.

Arrays are in napari's axis order: (Z, Y, X) for a volume, (C, Z, Y, X) with channels,
(Y, X) for an image.  NIfTI and DICOM volumes come in radiological display axes (X to
the patient's left, Y posterior, Z superior; see :mod:`.formats`), and a NIfTI written with
a source file's geometry goes back onto that file's voxel grid.  Spacing is a (Z, Y, X)
tuple (or (Y, X)) of voxel sizes in the file's unit, ``None`` where the file does not
record one.  The npe2 reader and writer (``_layers/files.py``) and the command line
both read through this package.

Every write is atomic: the data go to a temporary file or folder beside the target,
which replaces the target only once it is complete, so a failure leaves the old file
(or nothing) and never a half-written one.

Only numpy and tifffile are imported here; nibabel and zarr are imported when a file
of their format is used, with a message saying how to install them if they are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import VolumeIOError
from ..core.files import atomic_file, replace_path, temporary_path_beside

if TYPE_CHECKING:
    from .formats import Volume

PathLike = str | os.PathLike

SUFFIXES = (".tif", ".tiff", ".npy", ".nii", ".nii.gz", ".zarr", ".mat")
#: Formats that are read but never written.
READ_ONLY = ("dicom", "matlab")

#: Formats read with their geometry by :func:`read_volumes` (``formats/``).
MEDICAL = ("nifti", "dicom", "matlab")


def volume_format(path: PathLike) -> str:
    """The format of ``path``: "tiff", "npy", "nifti", "zarr", "matlab" from its name, or
    "dicom" for an existing folder that is not a ``.zarr``.

    Raises:
        VolumeIOError: for any other suffix.
    """
    name = Path(path).name.lower().rstrip("/")
    if name.endswith(".mat"):
        return "matlab"
    if Path(path).is_dir() and not name.endswith(".zarr"):
        return "dicom"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".zarr"):
        return "zarr"
    raise VolumeIOError(
        f"unknown volume format of '{path}': use one of {', '.join(SUFFIXES)} or a folder of DICOM slices"
    )


def _import_optional(module: str, fmt: str) -> Any:
    from .._optional import import_optional

    return import_optional(module, fmt, f'pip install "napari-sparse-unet[io]" (or pip install {module})')


def _spacing_tuple(values: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        return None
    return values[-ndim:] if len(values) >= ndim else None


# --------------------------------------------------------------------------- reading


def read_volume(path: PathLike, *, lazy: bool = False) -> Any:
    """Read the array stored at ``path`` in (Z, Y, X) or (C, Z, Y, X) order.

    Args:
        path: a .tif/.tiff, .npy, .nii/.nii.gz file or a .zarr folder.
        lazy: return a zarr array (zarr) or a read-only memory map (.npy) instead of
            loading everything into memory; other formats are always loaded.

    Raises:
        FileNotFoundError: when nothing is at ``path``.
        VolumeIOError: for an unknown suffix or a file that cannot be decoded.
    """
    return read_volume_with_spacing(path, lazy=lazy)[0]


def read_volume_with_spacing(
    path: PathLike, *, lazy: bool = False, key: str | None = None
) -> tuple[Any, tuple[float, ...] | None]:
    """Like :func:`read_volume`, also returning the spatial voxel size (Z, Y, X) or ``None``.

    Spacing comes from NIfTI's affine, DICOM's PixelSpacing and slice positions,
    ImageJ/TIFF resolution and ``spacing`` metadata, a zarr array's ``spacing``
    attribute (or OME-Zarr scale), or a ``.mat`` file's ``spacing`` variable.

    Args:
        key: the variable to read from a ``.mat`` file holding several 3-D arrays.
    """
    path = Path(path)
    if not path.suffix and not path.exists():  # a DICOM folder that is not there
        raise FileNotFoundError(f"no such file or folder: '{path}'")
    fmt = volume_format(path)
    if key is not None and fmt != "matlab":
        raise VolumeIOError(f"a key ({key!r}) names an array in a .mat file, but '{path}' is not one")
    if fmt in MEDICAL:
        volume = read_volumes(path, key=key)[0]
        return volume.data, volume.spacing
    if not path.exists():
        raise FileNotFoundError(f"no such file: '{path}'")
    try:
        if fmt == "tiff":
            return _read_tiff(path)
        if fmt == "npy":
            array = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
            return array, None
        return _read_zarr(path, lazy)
    except (VolumeIOError, MemoryError):
        raise
    except Exception as exc:  # decoders raise many types; report them as one, naming the file
        raise VolumeIOError(f"cannot read '{path}' as {fmt}: {exc}") from exc


def read_volumes(path: PathLike, *, key: str | None = None, all_arrays: bool = False) -> list[Volume]:
    """The volumes of a NIfTI file, a DICOM folder or a ``.mat`` file, with geometry and metadata.

    Args:
        key: for a ``.mat`` file, the variable to read.
        all_arrays: for a ``.mat`` file, every 3-D array (the napari reader); otherwise
            a file with several needs ``key``.

    Returns:
        One :class:`~napari_sparse_unet.formats.Volume` (several for ``all_arrays``).
    """
    path = Path(path)
    fmt = volume_format(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: '{path}'")
    try:
        if fmt == "dicom":
            from .formats.dicom import read_dicom_series

            return [read_dicom_series(path)]
        if fmt == "matlab":
            from .formats import matlab

            return matlab.read_mat_volumes(path) if all_arrays and key is None else [matlab.read_mat(path, key)]
        if fmt == "nifti":
            from .formats.nifti import read_nifti

            return [read_nifti(path)]
    except (VolumeIOError, MemoryError):
        raise
    except Exception as exc:  # decoders raise many types; report them as one, naming the file
        raise VolumeIOError(f"cannot read '{path}' as {fmt}: {exc}") from exc
    raise VolumeIOError(f"'{path}' is a {fmt} file; read it with read_volume_with_spacing")


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        spacing = _tiff_spacing(tif, tif.pages[0], array.ndim)
        axes = series.axes
    # ImageJ hyperstacks are (Z, C, Y, X) and RGB samples come last: put channels first.
    for channel_axis in ("C", "S"):
        if array.ndim >= 3 and channel_axis in axes and axes.index(channel_axis) != 0 and len(axes) == array.ndim:
            array = np.moveaxis(array, axes.index(channel_axis), 0)
            break
    return array, spacing


def _tiff_spacing(tif: Any, page: Any, ndim: int) -> tuple[float, ...] | None:
    """(Z, Y, X) voxel size from shaped-TIFF, ImageJ or resolution metadata."""
    if tif.shaped_metadata:
        meta = tif.shaped_metadata[0]
        if meta.get("spacing") is not None:
            return _spacing_tuple(meta["spacing"], min(ndim, len(meta["spacing"])))
    yx: tuple[float, float] | None = None
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    # tifffile writes resolution 1/1 with unit NONE by default: that means "not recorded".
    if xres is not None and yres is not None:
        xr, yr = (a / b if b else 0.0 for a, b in (xres.value, yres.value))
        recorded = (unit is not None and int(unit.value) != 1) or (xr, yr) != (1.0, 1.0) or tif.is_imagej
        if recorded and xr > 0 and yr > 0:
            yx = (1.0 / yr, 1.0 / xr)
    if tif.is_imagej:
        z = (tif.imagej_metadata or {}).get("spacing")
        if yx is not None and ndim >= 3:
            return (float(z) if z else 1.0, *yx)
    if yx is None:
        return None
    return yx if ndim == 2 else None


def _open_zarr_array(path: Path) -> tuple[Any, tuple[float, ...] | None]:
    zarr = _import_optional("zarr", "zarr")
    node = zarr.open(str(path), mode="r")
    spacing = None
    if not hasattr(node, "shape"):  # a group: OME-Zarr's full resolution "0", or its only array
        attrs = dict(node.attrs)
        attrs = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs  # OME-Zarr 0.5 nests its metadata
        names = sorted(name for name, _ in node.arrays())
        if "multiscales" in attrs:
            dataset = attrs["multiscales"][0]["datasets"][0]
            for transform in dataset.get("coordinateTransformations", []):
                if transform.get("type") == "scale":
                    spacing = transform["scale"]
            node = node[dataset["path"]]
        elif len(names) == 1:
            node = node[names[0]]
        else:
            raise VolumeIOError(f"zarr group '{path}' holds {len(names)} arrays {names}: point to one of them")
    if node.attrs.get("spacing") is not None:
        spacing = node.attrs["spacing"]
    spatial = min(3, len(node.shape))
    return node, _spacing_tuple(spacing, spatial) if spacing is not None else None


def _read_zarr(path: Path, lazy: bool) -> tuple[Any, tuple[float, ...] | None]:
    array, spacing = _open_zarr_array(path)
    return (array if lazy else np.asarray(array[...])), spacing


# --------------------------------------------------------------------------- writing


def _replace_dir(source: Path, target: Path) -> None:
    """Move folder ``source`` to ``target``, replacing what is there (files cannot be swapped
    atomically with a folder, so the old one is first moved aside, then removed)."""
    old = None
    if target.exists() or target.is_symlink():
        old = temporary_path_beside(target, directory=True)
        old.rmdir()
        replace_path(target, old)
    replace_path(source, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def _check_writable_target(path: Path) -> None:
    if volume_format(path) in READ_ONLY:
        raise VolumeIOError(f"cannot write '{path}': DICOM and .mat are read only; write .tif, .nii.gz, .npy or .zarr")
    if not path.parent.is_dir():
        raise VolumeIOError(f"cannot write '{path}': folder '{path.parent}' does not exist")


def _resolve_geometry(
    like: PathLike | None, spacing: Sequence[float] | None
) -> tuple[tuple[float, ...] | None, Any]:
    """Spacing and NIfTI affine to write, taken from ``like`` where not given.

    The affine is the RAS affine of ``like``'s stored voxel order (a NIfTI file's own, or
    a DICOM series'), so a NIfTI output lands on ``like``'s voxel grid.
    """
    affine = None
    if like is not None:
        like = Path(like)
        fmt = volume_format(like)
        if fmt in ("nifti", "dicom") and like.exists():
            from .formats.orientation import layer_spacing

            if fmt == "nifti":
                affine = _import_optional("nibabel", "NIfTI").load(str(like)).affine
            else:
                from .formats.dicom import dicom_affine

                affine = dicom_affine(like)
            if spacing is None:
                spacing = layer_spacing(affine)
        elif spacing is None and like.exists() and fmt != "matlab":
            spacing = read_volume_with_spacing(like, lazy=True)[1]
    return (tuple(float(s) for s in spacing) if spacing is not None else None), affine


def write_volume(
    path: PathLike,
    array: Any,
    like: PathLike | None = None,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
) -> Path:
    """Write ``array`` ((Z, Y, X), (C, Z, Y, X) or (Y, X)) to ``path`` atomically.

    Args:
        path: target; its suffix picks the format.
        array: numpy or array-like.
        like: a file or DICOM folder whose geometry to copy: its affine (NIfTI output
            lands on its voxel grid), or any file's spacing.
        spacing: voxel size of the last spatial axes, (Z, Y, X); overrides ``like``'s.
        affine: a source's RAS affine of its stored voxel order (a layer's
            ``metadata["affine"]``); overrides ``like``'s.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    fmt = volume_format(path)
    _check_writable_target(path)
    if affine is not None:
        from .formats.orientation import layer_spacing

        spacing = spacing if spacing is not None else layer_spacing(affine)
    else:
        spacing, affine = _resolve_geometry(like, spacing)
    if not hasattr(array, "dtype") or not hasattr(array, "shape"):
        array = np.asarray(array)
    if fmt == "zarr":
        with zarr_output(path, array.shape, array.dtype, spacing) as out:
            step = max(1, out.chunks[0])  # copy chunk by chunk: ``array`` may be larger than memory
            for start in range(0, max(out.shape[0], 1), step):
                out[start : start + step] = np.asarray(array[start : start + step])
        return path
    array = np.asarray(array)
    with atomic_file(path) as temp:
        if fmt == "tiff":
            _write_tiff(temp, array, spacing)
        elif fmt == "npy":
            with open(temp, "wb") as f:
                np.save(f, array, allow_pickle=False)
        else:
            from .formats.nifti import write_nifti

            write_nifti(temp, array, spacing, affine)
    return path


def _write_tiff(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None) -> None:
    import tifffile

    # minisblack: a short first axis must not be taken for RGB samples.
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
    metadata: dict[str, Any] = {}
    if spacing is not None:
        spatial = spacing[-min(len(spacing), 3) :]
        y, x = spatial[-2:]
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        kwargs["resolutionunit"] = "NONE"
        metadata["spacing"] = list(spatial)
    # A shaped TIFF (tifffile's JSON description) keeps any dtype, shape and the spacing.
    tifffile.imwrite(path, array, metadata=metadata or {}, **kwargs)


@contextlib.contextmanager
def zarr_output(path: Path, shape: Sequence[int], dtype: Any, spacing: Sequence[float] | None) -> Iterator[Any]:
    """Yield a zarr array chunked along Z, in a folder beside ``path`` that replaces it when the block ends."""
    zarr = _import_optional("zarr", "zarr")
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    temp = temporary_path_beside(path, directory=True)
    try:
        out = zarr.open_array(
            store=str(temp), mode="w", shape=shape, dtype=dtype, chunks=_z_chunks(shape, dtype.itemsize), fill_value=0
        )
        if spacing is not None:
            out.attrs["spacing"] = list(spacing)
        yield out
        _replace_dir(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _z_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks that split the first spatial axis (Z) into slabs of about 8 MB."""
    shape = tuple(int(s) for s in shape)
    chunk = list(shape)
    spatial0 = 1 if len(shape) == 4 else 0  # (C, Z, Y, X): chunk Z, keep C whole
    # Very large planes are split in Y and X too, so one chunk stays a few MB.
    for axis in (len(shape) - 2, len(shape) - 1):
        chunk[axis] = min(shape[axis], 2048)
    plane = int(np.prod([c for i, c in enumerate(chunk) if i != spatial0])) * itemsize
    chunk[spatial0] = int(max(1, min(shape[spatial0], (8 << 20) // max(plane, 1))))
    return tuple(max(1, c) for c in chunk)
