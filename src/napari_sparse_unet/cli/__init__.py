"""Command line: train a model from painted slices, predict whole volumes, run a demo.

    napari-sparse-unet train   --image IMG --labels ANNOT [...] --model OUT.pt
    napari-sparse-unet predict --model MODEL.pt --image IMG --out OUT.tif
    napari-sparse-unet export  --model MODEL.pt --image IMG --out MODEL.zip
    napari-sparse-unet demo

One module per command (:mod:`.train`, :mod:`.predict`, :mod:`.export`, :mod:`.demo`),
the options and checks they share in :mod:`.common`, and the parser in :mod:`.main`.
Bad input ends the program with one line ``error: ...`` on stderr and exit status 2,
before anything is written.  Progress bars go to stderr, results to stdout.  torch
is imported only when a command needs it, so ``--help`` answers at once.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
