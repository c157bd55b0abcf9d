"""``python -m napari_sparse_unet``: the same command line as ``napari-sparse-unet``."""

import sys

from .cli import main

sys.exit(main())
