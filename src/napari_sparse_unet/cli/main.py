"""The parser over all commands, and :func:`main`, the console entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..io import SUFFIXES
from . import demo, export, predict, train
from .common import EXIT_INTERRUPTED, EXIT_USAGE, PROG, USER_ERRORS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Dense 3D segmentation from a few painted slices: train a 3D U-Net on sparse "
        "annotations and predict whole volumes.",
        epilog=f"Volume formats: {', '.join(SUFFIXES)} (a .zarr folder), a folder of DICOM slices. Annotations: 0 = not painted, "
        "1 = background, 2.. = classes. Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (train, predict, export, demo):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
