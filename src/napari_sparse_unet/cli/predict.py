"""``napari-sparse-unet predict``: segment a whole volume with a trained model.

Block-wise prediction over Dask workers is in :mod:`.blockwise`; instance and
uncertainty outputs in :mod:`.paint_next`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import PredictConfig
from ..core.errors import InputError
from ..jobs import PredictJob
from ..core.rules import model_channels_problem, model_image_problem
from ..io import create_output
from . import blockwise, paint_next
from .channels import channel_files, read_image
from .common import (
    UsageError,
    add_command,
    add_common,
    add_model_and_image,
    check_outputs,
    fmt_shape,
    fraction,
    positive_int,
    say,
    set_threads,
)
from .progress import run_prediction

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel


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
        memory_budget_mb=args.memory_budget,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    check_outputs(args.image, [("--out", args.out), ("--probabilities", args.probabilities),
                               ("--instances-out", args.instances_out), ("--uncertainty-out", args.uncertainty_out)])
    config = _predict_config(args)
    set_threads(args)

    from ..core.checkpoint import SegmentationModel
    from ..core.device import precision_name, resolve_device

    device = resolve_device(args.device)  # an unavailable GPU is bad input, not a crash inside torch
    model = SegmentationModel.load(args.model)
    image, spacing, file_channels = read_image(args.image, lazy=True, key=args.key)
    spatial = _spatial_shape(model, image, file_channels)
    if spacing and model.spacing and len(spacing) == len(model.spacing) and not np.allclose(spacing, model.spacing, rtol=0.05):
        say(args, f"warning: image spacing {spacing} differs from the model's training spacing {model.spacing}")

    if blockwise.requested(args):  # --workers, --scheduler, --block-size, --resume
        if file_channels:
            raise UsageError("block-wise prediction reads one image file; write the channels into one (C, Z, Y, X) file first")
        if paint_next.requested(args):
            raise UsageError("--instances and --uncertainty-out work without --workers/--scheduler/--block-size/--resume")
        return blockwise.run(args, model, config)
    instances = paint_next.check(args, model, spatial)
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
        extra = paint_next.open_outputs(args, stack, spatial, spacing, instances)
        result = run_prediction(
            PredictJob(model, image, config, labels_out=labels_out, probabilities_out=probabilities_out, **extra), args.quiet
        )
        written = "".join(f", {path}" for path in paint_next.report(args, result, spatial))
    written += f" and {args.probabilities}" if args.probabilities else ""
    print(f"wrote {args.out}{written} ({fmt_shape(spatial)}, {time.perf_counter() - start:.1f} s, "
          f"{device} {precision_name(device, config.mixed_precision)})")
    return 0


def add_parser(commands: Any) -> None:
    """The predict command; options that shape prediction go to :func:`_predict_config`."""
    pred = add_command(
        commands, "predict", "segment a whole volume with a trained model",
        "Segment a volume with a trained model. The output holds 0 for background and "
        "the painted value of each class elsewhere.",
    )
    add_model_and_image(pred, "volume to segment (a file or a DICOM series folder), or its channel files A,B,... "
                        "in the model's channel order")
    pred.add_argument("--out", required=True, metavar="OUT", help="labels output (.tif, .npy, .nii.gz, .zarr)")
    pred.add_argument("--probabilities", metavar="OUT", help="also write class probabilities (K, Z, Y, X) float32")
    pred.add_argument("--overlap", type=fraction, default=0.25, metavar="F",
                      help="overlap of neighbouring tiles as a fraction of the model's training patch (default: 0.25)")
    pred.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation; slower)")
    pred.add_argument("--tile-size", type=positive_int, nargs="+", metavar="N",
                      help="tile Z Y X (default: the tiling that computes the fewest voxels within the memory budget)")
    pred.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="tiles per batch (default: 1)")
    pred.add_argument("--memory-budget", type=positive_int, default=PredictConfig.memory_budget_mb, metavar="MB",
                      help="memory for the tiles and the filter features, each (default: %(default)s); more is "
                           "faster on big planes")
    blockwise.add_options(pred)
    paint_next.add_options(pred)
    add_common(pred, cmd_predict)
