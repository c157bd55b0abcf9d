"""A DICOM series (a folder of single-frame slices) with pydicom.

pydicom rather than SimpleITK: a pure-Python wheel of a few MB with its own pixel
decoders (SimpleITK is a ~50 MB compiled wheel), and it gives the header fields used
here directly: SeriesInstanceUID to refuse mixed series by name, ImagePositionPatient
and ImageOrientationPatient to sort the slices along the slice normal, and
RescaleSlope/Intercept (pydicom's modality LUT) for Hounsfield units.

The volume is built in the file order (x = column, y = row, z = slice along the normal)
with its RAS affine, then turned to the layer's (Z, Y, X) display axes like NIfTI (see
:mod:`.orientation`); an axial series keeps its slices and in-plane orientation.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import VolumeIOError
from . import Volume
from .orientation import file_to_layer

#: Relative tolerance on the slice step before a series is called unevenly spaced.
STEP_TOLERANCE = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _pydicom() -> Any:
    from ..._optional import import_optional

    return import_optional("pydicom", "DICOM")


def _headers(folder: Path, pixels: bool) -> list[Any]:
    """The image datasets of one series in ``folder`` (not sorted), refusing mixed series."""
    pydicom = _pydicom()
    if not folder.is_dir():
        raise VolumeIOError(f"'{folder}' is not a folder of DICOM files")
    datasets, others = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            others += 1
            continue
        if "Rows" not in ds or "Columns" not in ds:  # DICOMDIR, reports: no image
            others += 1
            continue
        ds.filename = str(path)
        datasets.append(ds)
    if not datasets:
        what = f"{others} other file(s)" if others else "no files"
        raise VolumeIOError(f"no DICOM image files in folder '{folder}' ({what}; sub-folders are not searched)")
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    if len(series) > 1:
        first = {str(ds.get("SeriesInstanceUID", "")): ds for ds in reversed(datasets)}
        names = "; ".join(
            f"series {first[uid].get('SeriesNumber', '?')} '{first[uid].get('SeriesDescription', '')}' ({count} files)"
            for uid, count in series.most_common()
        )
        raise VolumeIOError(f"folder '{folder}' mixes {len(series)} DICOM series: {names}; put each series in its own folder")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise VolumeIOError(f"'{folder}' holds multi-frame DICOM files; only series of single-frame slices are supported")
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for ds in datasets)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}×{c} ({n} files)" for (r, c), n in sizes.most_common())
        raise VolumeIOError(f"the slices in '{folder}' have different sizes (rows×columns): {listed}")
    return datasets


def _floats(ds: Any, keyword: str, default: list[float]) -> np.ndarray:
    value = ds.get(keyword)
    return np.array([float(v) for v in value] if value else default, dtype=float)


def _sorted_with_affine(folder: Path, datasets: list[Any]) -> tuple[list[Any], np.ndarray]:
    """The slices sorted along the slice normal, and the RAS affine of (column, row, slice)."""
    orientation = _floats(datasets[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    if any(not np.allclose(_floats(ds, "ImageOrientationPatient", list(orientation)), orientation, atol=1e-4) for ds in datasets):
        raise VolumeIOError(f"the slices in '{folder}' have different orientations (ImageOrientationPatient)")
    row_dir, column_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, column_dir)
    row_spacing, column_spacing = _floats(datasets[0], "PixelSpacing", [1.0, 1.0])
    if all("ImagePositionPatient" in ds for ds in datasets):
        positions = np.array([_floats(ds, "ImagePositionPatient", [0, 0, 0]) for ds in datasets])
        order = np.argsort(positions @ normal, kind="stable")
        positions = positions[order]
        steps = np.diff(positions @ normal)
        if len(steps) and np.min(steps) < 1e-3:
            raise VolumeIOError(
                f"several slices in '{folder}' share one position: the series holds more than one volume "
                "(echoes, phases or time points); split them into folders"
            )
        if len(steps) and np.ptp(steps) > STEP_TOLERANCE * np.mean(steps):
            raise VolumeIOError(
                f"the slices in '{folder}' are unevenly spaced (steps {steps.min():.3g} to {steps.max():.3g} mm): "
                "a slice is missing or the folder mixes acquisitions"
            )
        origin = positions[0]
        step = (positions[-1] - positions[0]) / (len(positions) - 1) if len(positions) > 1 else None
    else:  # no positions (secondary captures): instance order and the stated spacing
        order = np.argsort([int(ds.get("InstanceNumber", 0) or 0) for ds in datasets], kind="stable")
        origin, step = np.zeros(3), None
    if step is None:
        thickness = float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_dir * column_spacing  # along a row: the column index grows
    lps[:3, 1] = column_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return [datasets[i] for i in order], _LPS_TO_RAS @ lps


def _output_dtype(datasets: list[Any]) -> np.dtype:
    """int16 / int32 when slope and intercept are whole numbers and the range fits, else float32."""
    low, high = np.inf, -np.inf
    for ds in datasets:
        if "ModalityLUTSequence" in ds:
            return np.dtype(np.float32)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != round(slope) or intercept != round(intercept):
            return np.dtype(np.float32)
        bits = int(ds.get("BitsStored", 16) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        values = [slope * s + intercept for s in stored]
        low, high = min(low, *values), max(high, *values)
    for dtype in (np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def dicom_affine(folder: Path) -> np.ndarray:
    """The RAS affine of the series in ``folder`` (headers only, no pixel data read)."""
    folder = Path(folder)
    return _sorted_with_affine(folder, _headers(folder, pixels=False))[1]


def read_dicom_series(folder: Path) -> Volume:
    """The series in ``folder`` as a (Z, Y, X) volume in the display axes, rescaled, spacing in mm.

    Raises:
        VolumeIOError: no DICOM images, several series (named), slices of different sizes
            or orientations, repeated or uneven positions, undecodable pixel data.
    """
    from pydicom.pixels import apply_modality_lut

    folder = Path(folder)
    datasets, affine = _sorted_with_affine(folder, _headers(folder, pixels=True))
    first = datasets[0]
    dtype = _output_dtype(datasets)
    stack = np.empty((len(datasets), int(first.Rows), int(first.Columns)), dtype)  # (slice, row, column)
    for k, ds in enumerate(datasets):
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # missing decoder for a compressed transfer syntax, truncated data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            raise VolumeIOError(f"cannot decode the pixels of '{ds.filename}' (transfer syntax {name}): {exc}") from exc
        if pixels.ndim != 2:
            raise VolumeIOError(f"'{ds.filename}' is not a single grey-value slice (pixel array {pixels.shape})")
        stack[k] = apply_modality_lut(pixels, ds)
    if dtype == np.int32 and stack.size and -(2**15) <= stack.min() and stack.max() < 2**15:
        stack = stack.astype(np.int16)  # 16-bit stored CT whose values fit, the usual case: half the memory
    data, spacing = file_to_layer(stack.T, affine)
    metadata: dict[str, Any] = {"modality": str(first.get("Modality", ""))}
    if metadata["modality"] == "CT" or str(first.get("RescaleType", "")) == "HU":
        metadata["unit"] = "HU"
    if first.get("SeriesDescription"):
        metadata["series_description"] = str(first.SeriesDescription)
    return Volume(data, spacing, folder.name, affine, metadata)


def looks_like_dicom_folder(folder: Path, probe: int = 16) -> bool:
    """Whether one of the first ``probe`` files in ``folder`` has the DICOM preamble ("DICM" at byte 128)."""
    try:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())[:probe]
    except OSError:
        return False
    for path in files:
        try:
            with open(path, "rb") as f:
                f.seek(128)
                if f.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False
