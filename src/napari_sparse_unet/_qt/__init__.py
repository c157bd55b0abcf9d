"""The napari dock widget (Qt).  Importing this package imports neither torch nor the core."""
