"""napari-sparse-unet: dense 3D segmentation from a few painted slices."""

__version__ = "0.1.0"
