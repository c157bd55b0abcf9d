"""``napari-sparse-unet demo``: train and predict on the generated sample; print Dice and times."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import PredictConfig
from ..jobs import PredictJob, TrainJob
from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_command,
    add_common,
    add_training_options,
    fmt_shape,
    positive_int,
    train_config,
    training_precision,
)
from .progress import run_prediction, run_training


def cmd_demo(args: argparse.Namespace) -> int:
    from .._sample_data import CLASS_NAMES, SPACING, make_sample_volume, painted_slice_indices

    if args.out_dir is not None and not Path(args.out_dir).parent.is_dir():
        raise UsageError(f"--out-dir {args.out_dir!r}: folder {str(Path(args.out_dir).parent)!r} does not exist")
    preset, config = train_config(args, 3)

    t0 = time.perf_counter()
    image, truth, annotation = make_sample_volume(shape=tuple(args.shape), seed=args.seed or 0)
    t_generate = time.perf_counter() - t0
    painted = annotation > 0
    slices = painted_slice_indices(image.shape[0], 4)
    print(
        f"sample volume {fmt_shape(image.shape)} {image.dtype}, spacing {SPACING} um, classes "
        + ", ".join(f"{v + 1}={n}" for v, n in enumerate(CLASS_NAMES))
        + f"; painted z slices {slices.tolist()} ({100 * painted.mean():.1f} % of voxels)"
    )

    from ..core.device import precision_name
    from ..core.metrics import dice_per_class, mean_dice

    # Name only the painted values: a small --shape may leave a class off the painted slices.
    painted_values = [int(v) for v in np.unique(annotation[painted])]
    names = [CLASS_NAMES[v - 1] for v in painted_values]
    job = TrainJob([image], [annotation], config, spacing=SPACING, class_names=names)
    trainer = job.prepare()
    print(
        f"training on {trainer.device} ({training_precision(trainer)}) for up to {config.max_steps} steps"
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
    print(f"predicted {fmt_shape(prediction.shape)} in {t_predict:.1f} s ({precision})")

    # Predictions show each class with its painted value, ground-truth value + 1.
    scores = dice_per_class(prediction, truth.astype(np.int16) + 1, range(2, len(CLASS_NAMES) + 1), where=~painted)
    print(f"Dice against the ground truth on the {100 * (~painted).mean():.0f} % of voxels that were not painted:")
    for value, score in scores.items():
        print(f"  {CLASS_NAMES[value - 1]:<10} {score:.3f}")
    print(f"  {'mean':<10} {mean_dice(scores):.3f}")
    print(f"times: generate {t_generate:.1f} s, train {t_train:.1f} s, predict {t_predict:.1f} s")

    if args.out_dir is not None:
        from ..io import write_volume

        out = Path(args.out_dir)
        out.mkdir(exist_ok=True)
        for name, array in (("image", image), ("annotation", annotation), ("ground_truth", truth), ("prediction", prediction)):
            write_volume(out / f"{name}.tif", array, spacing=SPACING)
        model.save(out / "model.pt")
        print(f"wrote image, annotation, ground_truth, prediction (.tif) and model.pt to {out}")
    return EXIT_INTERRUPTED if interrupted else 0


def add_parser(commands: Any) -> None:
    demo = add_command(
        commands, "demo", "train and predict on the generated sample; print Dice and times",
        "Generate the sample volume with 4 painted slices, train briefly, predict the whole "
        "volume and report Dice against its ground truth on the voxels that were not painted.",
    )
    add_training_options(demo)
    demo.set_defaults(max_time=90.0)
    demo.add_argument("--shape", type=positive_int, nargs=3, default=(40, 128, 128), metavar=("Z", "Y", "X"),
                      help="size of the generated volume (default: 40 128 128)")
    demo.add_argument("--out-dir", metavar="DIR", help="also save the volumes (.tif) and the model there")
    add_common(demo, cmd_demo)
