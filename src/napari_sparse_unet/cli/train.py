"""``napari-sparse-unet train``: a model from images and their sparse annotations."""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..jobs import TrainJob
from ..core.rules import annotation_shape_problem
from ..io import read_volume_with_spacing
from .channels import read_image
from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_command,
    add_common,
    add_training_options,
    check_output_path,
    fmt_shape,
    positive_float,
    say,
    train_config,
    training_precision,
)
from .progress import run_training


def read_training_pairs(
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


def _log_formats(args: argparse.Namespace) -> tuple[str, ...]:
    """The --log-format choice, checked before training; by default CSV, plus TensorBoard when installed."""
    from ..core.training.training_log import check_log_formats, tensorboard_available

    if args.log_format:
        return check_log_formats(dict.fromkeys(args.log_format))
    if args.log_dir is None or tensorboard_available():
        return ("csv", "tensorboard")
    say(args, "note: tensorboard is not installed, writing CSV only (pip install 'napari-sparse-unet[logs]')")
    return ("csv",)


def cmd_train(args: argparse.Namespace) -> int:
    check_output_path(args.model, "--model")
    log_formats = _log_formats(args)
    images, annotations, file_spacing, file_channels = read_training_pairs(args.image, args.labels, args.key, args.labels_key)
    preset, config = train_config(args, annotations[0].ndim)
    spacing = tuple(args.spacing) if args.spacing is not None else file_spacing
    channels = int(np.shape(images[0])[0]) if np.ndim(images[0]) > annotations[0].ndim else 1

    from ..core.checkpoint import SegmentationModel

    initial = SegmentationModel.load(args.resume) if args.resume else None
    job = TrainJob(images, annotations, config, spacing=spacing, initial=initial, class_names=args.class_names or None,
                   channel_names=_channel_names(args, file_channels, channels))
    trainer = job.prepare()  # checks the input before the first line is printed
    say(
        args,
        f"training on {len(images)} volume(s) of {', '.join(fmt_shape(np.shape(i)) for i in images)}, "
        f"spacing {spacing or 'not recorded'}, device {trainer.device} ({training_precision(trainer)}), preset {preset}, "
        f"up to {config.max_steps} steps" + (f" or {config.max_time:g} s" if config.max_time else ""),
    )
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        each = None
        if args.log_dir is not None:
            from ..core.training.training_log import TrainingLog

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


def add_parser(commands: Any) -> None:
    train = add_command(
        commands, "train", "train a model on images and their sparse annotations",
        "Train a 3D U-Net on images and sparse annotations (0 = not painted, 1 = background, 2.. = classes).",
    )
    train.add_argument("--image", action="append", required=True, metavar="IMG",
                       help="image volume (Z, Y, X) or (C, Z, Y, X), or co-registered channel files A,B,... stacked "
                       "in that order; repeat for several, each with its --labels")
    train.add_argument("--labels", action="append", required=True, metavar="ANNOT",
                       help="annotation of the same spatial shape as its --image")
    train.add_argument("--key", metavar="NAME", help="the array to read from a .mat --image holding several")
    train.add_argument("--labels-key", metavar="NAME", help="the array to read from a .mat --labels holding several")
    train.add_argument("--model", required=True, metavar="OUT.pt", help="where to save the trained model")
    train.add_argument("--resume", metavar="MODEL.pt", help="start from this model's weights (fine-tuning)")
    train.add_argument("--spacing", type=positive_float, nargs="+", metavar="S",
                       help="voxel size Z Y X (default: from the image file's metadata, else isotropic)")
    train.add_argument("--class-names", nargs="+", metavar="NAME",
                       help="names of the annotation values in order, starting with background (value 1)")
    train.add_argument("--channel-names", nargs="+", metavar="NAME",
                       help="names of the image channels in order (default: the channel files' names)")
    train.add_argument("--log-dir", metavar="DIR",
                       help="write the training curves there: curves.csv and TensorBoard event files")
    train.add_argument("--log-format", nargs="+", choices=("csv", "tensorboard"), metavar="FORMAT",
                       help="csv and/or tensorboard (default: both when tensorboard is installed, else csv)")
    add_training_options(train)
    add_common(train, cmd_train)
