"""Clinical and lab volume formats: DICOM series, NIfTI and MATLAB ``.mat``.

Headless (numpy plus the format's library, imported when a file of that format is
read).  ``napari_sparse_unet.io`` dispatches to these modules for the command line
and the npe2 reader/writer in ``_layers/files.py`` are thin wrappers over ``io``.

Every reader returns :class:`Volume` objects whose ``data`` is in napari's axis order,
(Z, Y, X) or (C, Z, Y, X).  For DICOM and NIfTI the axes are the *display* axes of
radiology: X runs to the patient's left, Y to posterior, Z to superior (the closest
axes to DICOM's LPS; an axial slice then shows anterior up and the patient's right
on the screen's left, as a radiology viewer does).  ``affine`` keeps the file's own
NIfTI-style (RAS) affine of its stored voxel order, so that labels drawn on the layer
can be written back onto the file's voxel grid (:mod:`.nifti`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Volume:
    """One array read from a file, ready to become a napari layer.

    Attributes:
        data: (Z, Y, X) or (C, Z, Y, X) array.
        spacing: voxel size (Z, Y, X) in the file's unit (mm for DICOM and NIfTI), or None.
        name: a layer name (the file's or the array's name).
        affine: 4x4 RAS affine of the file's stored voxel order (x, y, z), or None.
        metadata: small extra facts for the layer's ``metadata`` (modality, units, key).
    """

    data: Any
    spacing: tuple[float, ...] | None
    name: str
    affine: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def layer_metadata(self) -> dict[str, Any]:
        """What the napari layer keeps in ``layer.metadata``; the affine as nested lists."""
        meta = dict(self.metadata)
        if self.affine is not None:
            meta["affine"] = np.asarray(self.affine, dtype=float).tolist()
        return meta
