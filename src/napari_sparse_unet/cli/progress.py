"""Running a job on the command line: progress bars on stderr, Ctrl-C keeps the best model."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.generators import run_to_end

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from ..jobs import PredictJob, PredictResult, TrainJob


def progress_bar(total: int, desc: str, unit: str, quiet: bool, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=quiet, mininterval=0.5, dynamic_ncols=True, **kwargs
    )


def run_prediction(job: PredictJob, quiet: bool) -> PredictResult:
    """Run the job with a bar counting tiles; returns its result."""
    with contextlib.closing(progress_bar(1, "predicting", "tile", quiet)) as bar:

        def show(event: Any) -> None:
            bar.total = event.tiles_total
            bar.update(event.tiles_done - bar.n)

        return run_to_end(job.run(), show)


def run_training(job: TrainJob, quiet: bool, each: Callable[[Any], None] | None = None) -> tuple[SegmentationModel, bool]:
    """Run the job with a progress bar, calling ``each(event)`` per step too.  Returns (model, interrupted).

    Ctrl-C stops training at the next step and keeps the best model so far.
    """
    # Percent of the budget, not steps: a time limit usually ends training first.
    bar = progress_bar(100, "training", "%", quiet, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
    shown: dict[str, str] = {}

    def show(event: Any) -> None:
        shown.update(step=str(event.step), loss=f"{event.loss:.3f}")
        if event.val_dice is not None:
            shown["val_dice"] = f"{event.val_dice:.3f}"
        bar.set_postfix(shown, refresh=False)
        bar.update(round(100 * event.progress, 1) - bar.n)
        if each is not None:
            each(event)

    try:
        return run_to_end(job.run(), show), False
    except KeyboardInterrupt:
        model = job.best_model  # the trainer's generator was closed on the way out: its best model is kept
        if model is None:
            raise
        return model, True
    finally:
        bar.close()
