"""Run the installed plugin the way napari does, without a window (called by .ci/check_artifacts).

From a folder outside the checkout: the package must come from the environment's
site-packages, napari must find it through its npe2 manifest, and the sample and the
NIfTI reader must give layers. Exits nonzero (an AssertionError) on any failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from npe2 import PluginManager, read

import napari_sparse_unet

PLUGIN = "napari-sparse-unet"


def main(checkout: Path) -> None:
    installed = Path(napari_sparse_unet.__file__).resolve()
    assert Path(sys.prefix).resolve() in installed.parents, f"imported from {installed}, not the environment"
    assert checkout.resolve() not in installed.parents, f"imported from the checkout: {installed}"
    print(f"napari_sparse_unet {napari_sparse_unet.__version__} from {installed.parent}")

    manager = PluginManager.instance()
    manager.discover()
    samples = dict(manager.iter_sample_data())[PLUGIN]
    layers = samples[0].open()
    kinds = [layer_type for _, _, layer_type in layers]
    assert kinds == ["image", "labels"], kinds
    image, annotation = layers[0][0], layers[1][0]
    assert image.ndim == 3 and annotation.shape == image.shape and annotation.max() > 1
    print(f"sample {samples[0].display_name!r}: {kinds}, shape {image.shape}")

    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # NIfTI axes are (X, Y, Z)
    path = Path.cwd() / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 2.0, 1.0])), str(path))
    (data, kwargs, layer_type), = read([str(path)], stack=False, plugin_name=PLUGIN)
    assert layer_type == "image" and np.asarray(data).shape == (4, 5, 6), (layer_type, np.shape(data))
    assert tuple(kwargs["scale"]) == (2.0, 0.5, 0.5), kwargs.get("scale")
    print(f"reader: {path.name} -> {layer_type} {np.asarray(data).shape}, scale {kwargs['scale']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
