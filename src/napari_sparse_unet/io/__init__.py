"""Readers and writers of volumes, for the command line, the npe2 reader/writer and the API.

- :mod:`.volumes`: read and write TIFF, .npy, NIfTI, zarr, DICOM series and ``.mat``
  volumes with their spacing; every write is atomic.
- :mod:`.output`: an array that streams a prediction to a volume file (:func:`create_output`).
- :mod:`.zarr_files`: zarr / OME-Zarr input and the resumable block-wise outputs of
  ``predict --workers``.
- :mod:`.formats`: DICOM, NIfTI and MATLAB files and their display-axes orientation.

Only numpy and tifffile are imported with this package; the other formats' libraries
when a file of that format is used.
"""

from ..core.errors import VolumeIOError
from .output import create_output
from .volumes import (
    MEDICAL,
    READ_ONLY,
    SUFFIXES,
    read_volume,
    read_volume_with_spacing,
    read_volumes,
    volume_format,
    write_volume,
)

__all__ = [
    "MEDICAL",
    "READ_ONLY",
    "SUFFIXES",
    "VolumeIOError",
    "create_output",
    "read_volume",
    "read_volume_with_spacing",
    "read_volumes",
    "volume_format",
    "write_volume",
]
