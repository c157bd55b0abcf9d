"""Command line: train a model from painted slices, predict whole volumes, run a demo.

    napari-sparse-unet train   --image IMG --labels ANNOT [...] --model OUT.pt
    napari-sparse-unet predict --model MODEL.pt --image IMG --out OUT.tif
    napari-sparse-unet export  --model MODEL.pt --image IMG --out MODEL.zip
    napari-sparse-unet demo

Bad input ends the program with one line ``error: ...`` on stderr and exit status 2,
before anything is written.  Progress bars go to stderr, results to stdout.  torch
is imported only when a command needs it, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__, _cli_distributed, _cli_next
from ._cli_channels import channel_files, read_image
from .core.config import PRESETS, PredictConfig, TrainConfig
from .core.errors import InputError, UserInputError
from .core.jobs import PredictJob, TrainJob
from .core.presets import default_preset
from .core.rules import (
    DEVICE_NAMES,
    annotation_shape_problem,
    model_channels_problem,
    model_image_problem,
    parse_patch_size,
)
from ._cli_progress import run_prediction, run_training
from .io import SUFFIXES, create_output, read_volume_with_spacing, volume_format

if TYPE_CHECKING:
    from .core.checkpoint import SegmentationModel

PROG = "napari-sparse-unet"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(UserInputError):
    """A problem with the command line itself that argparse cannot see."""


# Bad input, not a bug: reported in one line, exit status 2.  The operating system's
# refusals name the file; any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserInputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


# --------------------------------------------------------------------------- helpers


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _check_output_path(path: str | None, option: str) -> None:
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


# --------------------------------------------------------------------------- train


def _training_precision(trainer: Any) -> str:
    from .core.device import precision_name

    return precision_name(trainer.device, trainer.config.mixed_precision, training=True)


def _train_config(args: argparse.Namespace, spatial_dims: int) -> tuple[str, TrainConfig]:
    """The preset's name and the settings from it and the command line options."""
    from .core.device import resolve_device

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


def _read_training_pairs(
    images: list[str], labels: list[str], key: str | None = None, labels_key: str | None = None
) -> tuple[list[Any], list[np.ndarray], tuple[float, ...] | None, tuple[str, ...] | None]:
    """(images, annotations, spacing, channel names of the first image when it came from several files)."""
    if len(images) != len(labels):
        raise UsageError(f"got {len(images)} --image but {len(labels)} --labels: give one --labels per --image")
    arrays, annotations = [], []
    spacing = channel_names = None
    for image_path, labels_path in zip(images, labels):
        image, image_spacing, names = read_image(image_path, key=key)
        channel_names = channel_names or names
        annotation, labels_spacing = read_volume_with_spacing(labels_path, key=labels_key)
        annotation = np.asarray(annotation)
        if not (np.issubdtype(annotation.dtype, np.integer) or annotation.dtype == bool):
            if np.issubdtype(annotation.dtype, np.floating) and np.all(np.mod(annotation, 1) == 0):
                annotation = annotation.astype(np.int64)  # labels saved as float by some tools
            else:
                raise InputError(f"labels file {labels_path!r} has dtype {annotation.dtype}; integer labels were expected")
        problem = annotation_shape_problem(
            np.shape(image)[-annotation.ndim :], annotation.shape, f"image {image_path!r}", f"labels {labels_path!r}"
        )
        if problem:
            raise InputError(problem)
        spacing = spacing or image_spacing or labels_spacing
        arrays.append(image)
        annotations.append(annotation)
    return arrays, annotations, spacing, channel_names


def _channel_names(args: argparse.Namespace, from_files: tuple[str, ...] | None, channels: int) -> tuple[str, ...] | None:
    """--channel-names (one per channel), else the names of the channel files, else None (generic or the resumed model's)."""
    if args.channel_names:
        if len(args.channel_names) != channels:
            raise UsageError(f"--channel-names gives {len(args.channel_names)} name(s) but the image has {channels} channel(s)")
        return tuple(args.channel_names)
    return from_files


def cmd_train(args: argparse.Namespace) -> int:
    _check_output_path(args.model, "--model")
    log_formats = _log_formats(args)
    images, annotations, file_spacing, file_channels = _read_training_pairs(args.image, args.labels, args.key, args.labels_key)
    preset, config = _train_config(args, annotations[0].ndim)
    spacing = tuple(args.spacing) if args.spacing is not None else file_spacing
    channels = int(np.shape(images[0])[0]) if np.ndim(images[0]) > annotations[0].ndim else 1

    from .core.checkpoint import SegmentationModel

    initial = SegmentationModel.load(args.resume) if args.resume else None
    job = TrainJob(images, annotations, config, spacing=spacing, initial=initial, class_names=args.class_names or None,
                   channel_names=_channel_names(args, file_channels, channels))
    trainer = job.prepare()  # checks the input before the first line is printed
    _say(
        args,
        f"training on {len(images)} volume(s) of {', '.join(_fmt_shape(np.shape(i)) for i in images)}, "
        f"spacing {spacing or 'not recorded'}, device {trainer.device} ({_training_precision(trainer)}), preset {preset}, "
        f"up to {config.max_steps} steps" + (f" or {config.max_time:g} s" if config.max_time else ""),
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        each = None
        if args.log_dir is not None:
            from .core.training_log import TrainingLog

            log = stack.enter_context(TrainingLog(args.log_dir, log_formats))
            for row in job.curves.rows():  # the resumed model's curve, continued by this run
                log.add(row)
            each = lambda event: log.add(job.curves.last())  # noqa: E731
        model, interrupted = run_training(job, args.quiet, each)
    model.save(args.model)
    steps = model.history.get("steps", "?")
    what = "interrupted; saved the best model so far" if interrupted else "saved model"
    logged = f"; curves in {args.log_dir} ({', '.join(log_formats)})" if args.log_dir is not None else ""
    print(f"{what} to {args.model} ({steps} steps, {time.perf_counter() - start:.1f} s){logged}")
    return EXIT_INTERRUPTED if interrupted else 0


def _log_formats(args: argparse.Namespace) -> tuple[str, ...]:
    """The --log-format choice, checked before training; by default CSV, plus TensorBoard when installed."""
    from .core.training_log import check_log_formats, tensorboard_available

    if args.log_format:
        return check_log_formats(dict.fromkeys(args.log_format))
    if args.log_dir is None or tensorboard_available():
        return ("csv", "tensorboard")
    _say(args, "note: tensorboard is not installed, writing CSV only (pip install 'napari-sparse-unet[logs]')")
    return ("csv",)


# --------------------------------------------------------------------------- predict


def _spatial_shape(model: SegmentationModel, image: Any, file_channels: tuple[str, ...] | None) -> tuple[int, ...]:
    """Check the image (and its channel files) against the model before outputs are created; return its spatial shape."""
    problem = model_channels_problem(model.channel_names, file_channels) if file_channels else None
    if problem is None:
        problem = model_image_problem(image.shape, model.spatial_dims, model.in_channels)
        if problem and model.in_channels > 1:
            problem += f" (the model's channels: {', '.join(model.channel_names)}; give separate files as --image A,B)"
    if problem:
        raise InputError(problem)
    return tuple(int(s) for s in image.shape[-model.spatial_dims :])


def _predict_config(args: argparse.Namespace) -> PredictConfig:
    """Prediction settings from the predict command's options."""
    return PredictConfig(
        overlap=args.overlap,
        tta=args.tta,
        device=args.device,
        tile_size=tuple(args.tile_size) if args.tile_size else None,
        batch_size=args.batch_size,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    for option, value in (("--out", args.out), ("--probabilities", args.probabilities)):
        _check_output_path(value, option)
        if value is not None and any(Path(value).resolve() == Path(f).resolve() for f in channel_files(args.image)):
            raise UsageError(f"{option} {value!r} is the input image; choose another file")
    if args.probabilities is not None and Path(args.probabilities).resolve() == Path(args.out).resolve():
        raise UsageError(f"--probabilities {args.probabilities!r} is the same file as --out")
    config = _predict_config(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    from .core.checkpoint import SegmentationModel
    from .core.device import precision_name, resolve_device

    device = resolve_device(args.device)  # an unavailable GPU is bad input, not a crash inside torch
    model = SegmentationModel.load(args.model)
    image, spacing, file_channels = read_image(args.image, lazy=True, key=args.key)
    spatial = _spatial_shape(model, image, file_channels)
    if spacing and model.spacing and len(spacing) == len(model.spacing) and not np.allclose(spacing, model.spacing, rtol=0.05):
        _say(args, f"warning: image spacing {spacing} differs from the model's training spacing {model.spacing}")

    if _cli_distributed.requested(args):  # --workers, --scheduler, --block-size, --resume
        if file_channels:
            raise UsageError("block-wise prediction reads one image file; write the channels into one (C, Z, Y, X) file first")
        if _cli_next.requested(args):
            raise UsageError("--instances and --uncertainty-out work without --workers/--scheduler/--block-size/--resume")
        return _cli_distributed.run(args, model, config, UsageError)
    instances = _cli_next.check(args, model, spatial, UsageError, _check_output_path)
    lut = model.output_lut()
    like = channel_files(args.image)[0]  # spacing / NIfTI affine of the (first) input file
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        labels_out = stack.enter_context(create_output(args.out, spatial, lut.dtype, like=like, spacing=spacing))
        probabilities_out = None
        if args.probabilities:
            probabilities_out = stack.enter_context(
                create_output(args.probabilities, (model.num_classes, *spatial), np.float32, like=like, spacing=spacing)
            )
        extra = _cli_next.open_outputs(args, stack, spatial, spacing, instances)
        result = run_prediction(
            PredictJob(model, image, config, labels_out=labels_out, probabilities_out=probabilities_out, **extra), args.quiet
        )
        written = "".join(f", {path}" for path in _cli_next.report(args, result, spatial))
    written += f" and {args.probabilities}" if args.probabilities else ""
    print(f"wrote {args.out}{written} ({_fmt_shape(spatial)}, {time.perf_counter() - start:.1f} s, "
          f"{device} {precision_name(device, config.mixed_precision)})")
    return 0


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from .bioimageio_export import export_model

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    image, _, _ = read_image(args.image, lazy=True, key=args.key)
    summary = export_model(
        args.model, args.out, image, name=args.name, authors=args.author or (), license=args.license,
        run_test=False if args.no_test else None,
    )
    checked = "tested with bioimageio.core" if summary.status == "passed" else "validated with bioimageio.spec"
    print(f"wrote {args.out} (bioimage.io model package, {checked}: {summary.status})")
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from ._sample_data import CLASS_NAMES, SPACING, make_sample_volume, painted_slice_indices

    if args.out_dir is not None and not Path(args.out_dir).parent.is_dir():
        raise UsageError(f"--out-dir {args.out_dir!r}: folder {str(Path(args.out_dir).parent)!r} does not exist")
    preset, config = _train_config(args, 3)

    t0 = time.perf_counter()
    image, truth, annotation = make_sample_volume(shape=tuple(args.shape), seed=args.seed or 0)
    t_generate = time.perf_counter() - t0
    painted = annotation > 0
    slices = painted_slice_indices(image.shape[0], 4)
    print(
        f"sample volume {_fmt_shape(image.shape)} {image.dtype}, spacing {SPACING} um, classes "
        + ", ".join(f"{v + 1}={n}" for v, n in enumerate(CLASS_NAMES))
        + f"; painted z slices {slices.tolist()} ({100 * painted.mean():.1f} % of voxels)"
    )

    from .core.device import precision_name
    from .core.metrics import dice_per_class, mean_dice

    # Name only the painted values: a small --shape may leave a class off the painted slices.
    painted_values = [int(v) for v in np.unique(annotation[painted])]
    names = [CLASS_NAMES[v - 1] for v in painted_values]
    job = TrainJob([image], [annotation], config, spacing=SPACING, class_names=names)
    trainer = job.prepare()
    print(
        f"training on {trainer.device} ({_training_precision(trainer)}) for up to {config.max_steps} steps"
        + (f" or {config.max_time:g} s" if config.max_time else "")
        + f" (preset {preset})"
    )
    sys.stdout.flush()
    t0 = time.perf_counter()
    model, interrupted = run_training(job, args.quiet)
    t_train = time.perf_counter() - t0
    steps = model.history.get("steps", "?")
    print(f"trained {steps} steps in {t_train:.1f} s" + (" (interrupted)" if interrupted else ""))
    sys.stdout.flush()

    t0 = time.perf_counter()
    predict_config = PredictConfig(device=args.device)
    prediction = run_prediction(PredictJob(model, image, predict_config), args.quiet).labels
    t_predict = time.perf_counter() - t0
    precision = precision_name(trainer.device, predict_config.mixed_precision)
    print(f"predicted {_fmt_shape(prediction.shape)} in {t_predict:.1f} s ({precision})")

    # Predictions show each class with its painted value, ground-truth value + 1.
    scores = dice_per_class(prediction, truth.astype(np.int16) + 1, range(2, len(CLASS_NAMES) + 1), where=~painted)
    print(f"Dice against the ground truth on the {100 * (~painted).mean():.0f} % of voxels that were not painted:")
    for value, score in scores.items():
        print(f"  {CLASS_NAMES[value - 1]:<10} {score:.3f}")
    print(f"  {'mean':<10} {mean_dice(scores):.3f}")
    print(f"times: generate {t_generate:.1f} s, train {t_train:.1f} s, predict {t_predict:.1f} s")

    if args.out_dir is not None:
        from .io import write_volume

        out = Path(args.out_dir)
        out.mkdir(exist_ok=True)
        for name, array in (("image", image), ("annotation", annotation), ("ground_truth", truth), ("prediction", prediction)):
            write_volume(out / f"{name}.tif", array, spacing=SPACING)
        model.save(out / "model.pt")
        print(f"wrote image, annotation, ground_truth, prediction (.tif) and model.pt to {out}")
    return EXIT_INTERRUPTED if interrupted else 0


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


# --------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _add_common(parser: argparse.ArgumentParser, command: Any) -> None:
    """Options every command has, and the function that runs the command."""
    parser.set_defaults(func=command)
    parser.add_argument("--device", choices=DEVICE_NAMES, default="auto",
                        help="where to run (default: auto = cuda, else mps, else cpu)")
    parser.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes on stderr")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=tuple(PRESETS), help="named settings (default: cpu, or gpu-small on a GPU)")
    parser.add_argument("--steps", type=_positive_int, metavar="N",
                        help="training steps (given alone, training runs all N steps with no time limit)")
    parser.add_argument("--max-time", type=_positive_float, metavar="SECONDS",
                        help="stop training after this many seconds (whichever comes first with --steps)")
    parser.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    parser.add_argument("--patch-size", nargs="+", metavar="N",
                        help="training patch, Z Y X (or Y X) voxels, or one size for all axes "
                        "(default: chosen from spacing and the preset)")


# Command -> (one-line help, description of its --help page).
COMMANDS = {
    "train": (
        "train a model on images and their sparse annotations",
        "Train a 3D U-Net on images and sparse annotations (0 = not painted, 1 = background, 2.. = classes).",
    ),
    "predict": (
        "segment a whole volume with a trained model",
        "Segment a volume with a trained model. The output holds 0 for background and "
        "the painted value of each class elsewhere.",
    ),
    "export": (
        "write a trained model as a bioimage.io model package (.zip)",
        "Write a trained model as a bioimage.io model package: TorchScript weights (normalisation, "
        "halo and U-Net inside), a test input cropped from --image and its output, a README. It is "
        "validated with bioimageio.spec (and tested with bioimageio.core when installed); "
        "'predict --model' and the widget load it back.",
    ),
    "demo": (
        "train and predict on the generated sample; print Dice and times",
        "Generate the sample volume with 4 painted slices, train briefly, predict the whole "
        "volume and report Dice against its ground truth on the voxels that were not painted.",
    ),
}


def _command(commands: Any, name: str) -> argparse.ArgumentParser:
    summary, description = COMMANDS[name]
    return commands.add_parser(name, help=summary, description=description)


def _add_train_command(commands: Any) -> None:
    train = _command(commands, "train")
    train.add_argument("--image", action="append", required=True, metavar="IMG",
                       help="image volume (Z, Y, X) or (C, Z, Y, X), or co-registered channel files A,B,... stacked "
                       "in that order; repeat for several, each with its --labels")
    train.add_argument("--labels", action="append", required=True, metavar="ANNOT",
                       help="annotation of the same spatial shape as its --image")
    train.add_argument("--key", metavar="NAME", help="the array to read from a .mat --image holding several")
    train.add_argument("--labels-key", metavar="NAME", help="the array to read from a .mat --labels holding several")
    train.add_argument("--model", required=True, metavar="OUT.pt", help="where to save the trained model")
    train.add_argument("--resume", metavar="MODEL.pt", help="start from this model's weights (fine-tuning)")
    train.add_argument("--spacing", type=_positive_float, nargs="+", metavar="S",
                       help="voxel size Z Y X (default: from the image file's metadata, else isotropic)")
    train.add_argument("--class-names", nargs="+", metavar="NAME",
                       help="names of the annotation values in order, starting with background (value 1)")
    train.add_argument("--channel-names", nargs="+", metavar="NAME",
                       help="names of the image channels in order (default: the channel files' names)")
    train.add_argument("--log-dir", metavar="DIR",
                       help="write the training curves there: curves.csv and TensorBoard event files")
    train.add_argument("--log-format", nargs="+", choices=("csv", "tensorboard"), metavar="FORMAT",
                       help="csv and/or tensorboard (default: both when tensorboard is installed, else csv)")
    _add_training_options(train)
    _add_common(train, cmd_train)


def _add_model_and_image(parser: argparse.ArgumentParser, image_help: str) -> None:
    """--model, --image (read by :func:`read_image`: a file, a DICOM folder or channel files A,B,...) and --key."""
    parser.add_argument("--model", required=True, metavar="MODEL.pt",
                        help="a model saved by 'train' or the napari widget (or a bioimage.io .zip that 'export' wrote)")
    parser.add_argument("--image", required=True, metavar="IMG", help=image_help)
    parser.add_argument("--key", metavar="NAME", help="the array to read from a .mat --image holding several")


def _add_predict_command(commands: Any) -> None:
    """The predict command; options that shape prediction go to :func:`_predict_config`."""
    pred = _command(commands, "predict")
    _add_model_and_image(pred, "volume to segment (a file or a DICOM series folder), or its channel files A,B,... "
                         "in the model's channel order")
    pred.add_argument("--out", required=True, metavar="OUT", help="labels output (.tif, .npy, .nii.gz, .zarr)")
    pred.add_argument("--probabilities", metavar="OUT", help="also write class probabilities (K, Z, Y, X) float32")
    pred.add_argument("--overlap", type=_fraction, default=0.25, metavar="F",
                      help="overlap of neighbouring tiles as a fraction of the model's training patch (default: 0.25)")
    pred.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation; slower)")
    pred.add_argument("--tile-size", type=_positive_int, nargs="+", metavar="N",
                      help="tile Z Y X (default: the tiling that computes the fewest voxels within the memory budget)")
    pred.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="tiles per batch (default: 1)")
    _cli_distributed.add_options(pred, _positive_int)
    _cli_next.add_options(pred, _non_negative_int)
    _add_common(pred, cmd_predict)


def _add_export_command(commands: Any) -> None:
    export = _command(commands, "export")
    _add_model_and_image(export, "an image like the training images (e.g. one of them), or its channel files A,B,...; "
                         "its centre is the test input")
    export.add_argument("--out", required=True, metavar="OUT.zip", help="the package to write")
    export.add_argument("--name", help="model name, at least 5 characters (default: OUT's file name)")
    export.add_argument("--author", action="append", metavar="NAME", help="an author's name; repeat for several (default: your login name)")
    export.add_argument("--license", default="CC-BY-4.0", metavar="SPDX", help="license of the weights, an SPDX id (default: CC-BY-4.0)")
    export.add_argument("--no-test", action="store_true", help="skip bioimageio.core's test run even when it is installed")
    _add_common(export, cmd_export)


def _add_demo_command(commands: Any) -> None:
    demo = _command(commands, "demo")
    _add_training_options(demo)
    demo.set_defaults(max_time=90.0)
    demo.add_argument("--shape", type=_positive_int, nargs=3, default=(40, 128, 128), metavar=("Z", "Y", "X"),
                      help="size of the generated volume (default: 40 128 128)")
    demo.add_argument("--out-dir", metavar="DIR", help="also save the volumes (.tif) and the model there")
    _add_common(demo, cmd_demo)


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
    for add_command in (_add_train_command, _add_predict_command, _add_export_command, _add_demo_command):
        add_command(commands)
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
