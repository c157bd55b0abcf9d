"""Writers of small clinical and lab files for the tests: DICOM series (pydicom), NIfTI, .mat.

Each takes a volume in the layer's axes (Z, Y, X) -- X to the patient's left, Y posterior,
Z superior for the medical formats -- and stores it the way a scanner or tool would, so
a reader must undo the storage order to get the volume back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (3.0, 0.75, 0.5),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_number: int = 1,
    description: str = "AX CT",
    seed: int = 0,
) -> Path:
    """Write (Z, Y, X) values as an axial CT series of uint16 slices with rescale slope/intercept.

    Files get shuffled names (their order on disk is not the slice order) and slice z sits
    at ImagePositionPatient z = 100 + z * spacing[0]: sorting by name would scramble it.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    stored = np.round((volume.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 2**16, "values do not fit uint16 with this slope/intercept"
    stored = stored.astype(np.uint16)
    series_uid = generate_uid()
    names = np.random.default_rng(seed).permutation(volume.shape[0])
    for z in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.InstanceNumber = int(names[z]) + 1  # deliberately not the slice order either
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.PixelSpacing = [spacing[1], spacing[2]]  # (between rows, between columns)
        ds.SliceThickness = spacing[0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-20.0, -30.0, 100.0 + z * spacing[0]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored[z].tobytes()
        ds.save_as(folder / f"S{series_number}_{names[z]:04d}.dcm", enforce_file_format=True)
    return folder


def ras_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float] = (10.0, -20.0, 30.0)) -> np.ndarray:
    """The affine of a file stored the common NIfTI way: x to the right, y anterior, z superior."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = origin
    return affine


def write_nifti_ras(path: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Store (Z, Y, X) = (S, P, L) as a RAS NIfTI (x and y flipped against the layer); returns the affine."""
    import nibabel as nib

    affine = ras_affine(spacing)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.T[::-1, ::-1, :]), affine), str(path))
    return affine


def matlab_order(volume: np.ndarray) -> np.ndarray:
    """(Z, Y, X) as MATLAB's V(row, column, slice)."""
    return np.ascontiguousarray(np.transpose(volume, (1, 2, 0)))


def write_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file (HDF5): each array in MATLAB order, stored transposed as MATLAB does."""
    import h5py

    classes = {"f": "double", "i": "int16", "u": "uint8", "b": "logical"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            data = f.create_dataset(name, data=np.asarray(array).T)
            data.attrs["MATLAB_class"] = np.bytes_(classes[np.asarray(array).dtype.kind] if np.asarray(array).dtype.kind != "f" else "double")
