"""The ``predict`` command's instance and uncertainty outputs ("where to paint next").

    napari-sparse-unet predict ... --instances 2 --min-size 50 --instances-out cells.tif
    napari-sparse-unet predict ... --uncertainty-out unsure.tif --labels painted.tif --ranking-out next.csv

The rules (valid class, method, measure) live in :mod:`..core.rules`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InputError
from ..core.analysis.instances import INSTANCE_METHODS, LANDSCAPES, InstanceConfig
from ..core.rules import annotation_shape_problem, check_instance_class
from ..core.analysis.uncertainty import UNCERTAINTY_MEASURES, ranking_csv, rank_slices
from ..io import create_output, read_volume
from .channels import channel_files
from .common import UsageError, non_negative_int

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel

AXES = "zyx"


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the instance and uncertainty options to the ``predict`` parser."""
    group = parser.add_argument_group("instances (one label per object of a class)")
    group.add_argument("--instances", type=int, metavar="CLASS_VALUE",
                       help="make instances of this class (its painted value, 2 or more)")
    group.add_argument("--instances-out", metavar="OUT", help="instances output, int32 (0 = none, 1..N = objects)")
    group.add_argument("--instance-method", choices=INSTANCE_METHODS, default="watershed",
                       help="watershed splits touching objects; components = connected components (default: watershed)")
    group.add_argument("--landscape", choices=LANDSCAPES, default="distance",
                       help="watershed landscape: distance to the object border or the class probability (default: distance)")
    group.add_argument("--min-size", type=non_negative_int, default=0, metavar="N",
                       help="drop objects smaller than N voxels (default: 0)")
    group = parser.add_argument_group("where to paint next")
    group.add_argument("--uncertainty-out", metavar="OUT",
                       help="per-voxel uncertainty, uint8 (0 = sure, 255 = unsure); the least sure slices are printed")
    group.add_argument("--uncertainty", choices=UNCERTAINTY_MEASURES, default="entropy",
                       help="entropy of the class probabilities or 1 - margin between the two best (default: entropy)")
    group.add_argument("--labels", metavar="ANNOT", help="the annotation: its painted slices are left out of the ranking")
    group.add_argument("--rank-axis", choices=tuple(AXES), default="z", help="painting axis to rank slices along (default: z)")
    group.add_argument("--ranking-out", metavar="FILE.csv", help="write the whole slice ranking as CSV")


def requested(args: argparse.Namespace) -> bool:
    return args.instances is not None or args.uncertainty_out is not None


def check(args: argparse.Namespace, model: SegmentationModel, spatial: tuple[int, ...]) -> InstanceConfig | None:
    """Refuse inconsistent options before any work; return the instance settings (or None)."""
    if (args.instances is None) != (args.instances_out is None):
        raise UsageError("--instances CLASS_VALUE and --instances-out OUT go together")
    for option in ("labels", "ranking_out"):
        if getattr(args, option) is not None and args.uncertainty_out is None:
            raise UsageError(f"--{option.replace('_', '-')} is for the slice ranking, which needs --uncertainty-out OUT")
    if args.ranking_out is not None and not Path(args.ranking_out).resolve().parent.is_dir():
        raise UsageError(f"--ranking-out {args.ranking_out!r}: its folder does not exist")
    if rank_axis(args, spatial) < 0:
        raise UsageError(f"--rank-axis {args.rank_axis}: a 2-D image has only the y and x axes")
    args.painted = _painted(args, spatial)  # read now: a wrong annotation is refused before any tile runs
    if args.instances is None:
        return None
    check_instance_class(args.instances, model.class_values)
    return InstanceConfig(args.instances, method=args.instance_method, landscape=args.landscape, min_size=args.min_size)


def rank_axis(args: argparse.Namespace, spatial: tuple[int, ...]) -> int:
    """The spatial axis of ``--rank-axis`` (z, y, x count from the last axis for 2-D images); < 0 if absent."""
    return AXES.index(args.rank_axis) - (3 - len(spatial))


def _painted(args: argparse.Namespace, spatial: tuple[int, ...]) -> Any:
    if args.labels is None:
        return None
    annotation = read_volume(args.labels, lazy=True)
    problem = annotation_shape_problem(spatial, tuple(annotation.shape), f"image {args.image!r}", f"labels {args.labels!r}")
    if problem:
        raise InputError(problem)
    return annotation


def open_outputs(args: argparse.Namespace, stack: contextlib.ExitStack, spatial: tuple[int, ...],
                 spacing: Any, instances: InstanceConfig | None) -> dict[str, Any]:
    """Keyword arguments for :class:`~.jobs.PredictJob`: the instance and uncertainty outputs."""
    kwargs: dict[str, Any] = {}
    like = channel_files(args.image)[0]  # spacing / NIfTI affine of the (first) input file
    if instances is not None:
        kwargs["instances"] = instances
        kwargs["instances_out"] = stack.enter_context(create_output(args.instances_out, spatial, np.int32, like=like, spacing=spacing))
        kwargs["spacing"] = spacing
    if args.uncertainty_out is not None:
        kwargs["uncertainty"] = args.uncertainty
        kwargs["uncertainty_out"] = stack.enter_context(
            create_output(args.uncertainty_out, spatial, np.uint8, like=like, spacing=spacing)
        )
    return kwargs


def report(args: argparse.Namespace, result: Any, spatial: tuple[int, ...], top: int = 5) -> list[str]:
    """Print the instance count and the least sure slices; write the ranking CSV. Returns files written."""
    written = []
    if result.instances is not None:
        print(f"{int(np.max(result.instances, initial=0))} instances of class {args.instances} "
              f"({args.instance_method}, min size {args.min_size})")
        written.append(args.instances_out)
    if result.uncertainty is None:
        return written
    written.append(args.uncertainty_out)
    ranking = rank_slices(result.uncertainty, rank_axis(args, spatial), painted=args.painted)
    shown = ", ".join(f"{args.rank_axis}={s.index} ({s.score:.3f})" for s in ranking[:top])
    skipped = " (painted slices left out)" if args.labels else ""
    print(f"least sure {args.rank_axis} slices, mean {args.uncertainty}{skipped}: {shown or 'none left'}")
    if args.ranking_out is not None:
        from ..core.files import atomic_file

        with atomic_file(args.ranking_out) as temp:
            Path(temp).write_text(ranking_csv(ranking, len(spatial)), encoding="utf-8")
        written.append(args.ranking_out)
    sys.stdout.flush()
    return written
