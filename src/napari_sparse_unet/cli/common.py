"""What the commands share: exit statuses, the usage error, option types and groups, output checks."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import PRESETS, TrainConfig
from ..core.errors import UserInputError
from ..core.presets import default_preset
from ..core.rules import DEVICE_NAMES, parse_patch_size
from ..io import volume_format
from .channels import channel_files

PROG = "napari-sparse-unet"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(UserInputError):
    """A problem with the command line itself that argparse cannot see."""


# Bad input, not a bug: reported in one line, exit status 2.  The operating system's
# refusals name the file; any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserInputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def say(args: argparse.Namespace, message: str) -> None:
    """A note on stderr, unless --quiet."""
    if not args.quiet:
        print(message, file=sys.stderr)


def check_output_path(path: str | None, option: str) -> None:
    """Fail before long work starts if an output could not be written."""
    if path is None:
        return
    target = Path(path)
    if option != "--model":
        volume_format(target)  # unknown suffix -> VolumeIOError naming it
    if not target.parent.is_dir():
        raise UsageError(f"{option} {path!r}: folder {str(target.parent)!r} does not exist")
    if target.is_dir() and not target.name.lower().endswith(".zarr"):
        raise UsageError(f"{option} {path!r} is a folder")


def check_outputs(image: str, outputs: Sequence[tuple[str, str | None]]) -> None:
    """Refuse an output (option, path or None) that cannot be written (:func:`check_output_path`), is one of
    ``image``'s files or is another output's file: nothing is overwritten by mistake."""
    seen: dict[Path, str] = {Path(f).resolve(): "the input image" for f in channel_files(image)}
    for option, value in outputs:
        if value is None:
            continue
        check_output_path(value, option)
        target = Path(value).resolve()
        if target in seen:
            raise UsageError(f"{option} {value!r} is {seen[target]}; choose another file")
        seen[target] = f"the same file as {option}"


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads to torch (imported only when the option is given)."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


# --------------------------------------------------------------------------- training settings


def training_precision(trainer: Any) -> str:
    from ..core.device import precision_name

    return precision_name(trainer.device, trainer.config.mixed_precision, training=True)


def train_config(args: argparse.Namespace, spatial_dims: int) -> tuple[str, TrainConfig]:
    """The preset's name and the settings from it and the command line options."""
    from ..core.device import resolve_device

    preset_name = args.preset or default_preset(resolve_device(args.device).type)
    config = PRESETS[preset_name]
    changes: dict[str, Any] = {"device": args.device}
    if args.steps is not None:
        changes["max_steps"] = args.steps
        # --steps alone means "train this many steps", not "until the preset's time limit".
        changes["max_time"] = args.max_time
    elif args.max_time is not None:
        changes["max_time"] = args.max_time
    if args.patch_size is not None:
        changes["patch_size"] = parse_patch_size(" ".join(args.patch_size), spatial_dims)
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.threads is not None:
        changes["num_threads"] = args.threads
    return preset_name, dataclasses.replace(config, **changes)


# --------------------------------------------------------------------------- option types and groups


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A sub-command's parser: ``summary`` in the command list, ``description`` on its --help page."""
    return commands.add_parser(name, help=summary, description=description)


def add_common(parser: argparse.ArgumentParser, command: Any) -> None:
    """Options every command has, and the function that runs the command."""
    parser.set_defaults(func=command)
    parser.add_argument("--device", choices=DEVICE_NAMES, default="auto",
                        help="where to run (default: auto = cuda, else mps, else cpu)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=tuple(PRESETS), help="named settings (default: cpu, or gpu-small on a GPU)")
    parser.add_argument("--steps", type=positive_int, metavar="N",
                        help="training steps (given alone, training runs all N steps with no time limit)")
    parser.add_argument("--max-time", type=positive_float, metavar="SECONDS",
                        help="stop training after this many seconds (whichever comes first with --steps)")
    parser.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    parser.add_argument("--patch-size", nargs="+", metavar="N",
                        help="training patch, Z Y X (or Y X) voxels, or one size for all axes "
                        "(default: chosen from spacing and the preset)")


def add_model_and_image(parser: argparse.ArgumentParser, image_help: str) -> None:
    """--model, --image (a file, a DICOM folder or channel files A,B,..., read by ``channels.read_image``) and --key."""
    parser.add_argument("--model", required=True, metavar="MODEL.pt",
                        help="a model saved by 'train' or the napari widget (or a bioimage.io .zip that 'export' wrote)")
    parser.add_argument("--image", required=True, metavar="IMG", help=image_help)
    parser.add_argument("--key", metavar="NAME", help="the array to read from a .mat --image holding several")
