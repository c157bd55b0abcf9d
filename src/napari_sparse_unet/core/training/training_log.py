"""Training curves written to a folder: ``curves.csv`` and TensorBoard event files.

Usable from Python as from the command line::

    job = TrainJob(images, annotations, config)
    with TrainingLog("logs") as log:
        for event in job.run():
            if isinstance(event, TrainEvent):
                log.add(job.curves.last())

or, after the fact, ``write_curves("logs", model.curves)``.  TensorBoard
scalars are written as they come (``tensorboard --logdir logs`` follows a
running training); the CSV is written once, whole, when the log is closed
(a temporary file renamed, so it is never half-written).  TensorBoard needs
the optional ``tensorboard`` package (``pip install napari-sparse-unet[logs]``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .curves import COLUMNS, TrainingCurves
from ..errors import ConfigError, missing_package
from ..files import atomic_file

LOG_FORMATS: tuple[str, ...] = ("csv", "tensorboard")
CSV_NAME = "curves.csv"

# Column -> TensorBoard tag (the Dice curves share a section).
TAGS = {"loss": "loss", "fit_dice": "dice/fit", "val_dice": "dice/validation", "learning_rate": "learning_rate"}


def tensorboard_available() -> bool:
    """Whether TensorBoard event files can be written (the ``tensorboard`` package is installed)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def check_log_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """``formats`` if each is known and can be written; ConfigError with the remedy otherwise."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in LOG_FORMATS]
    if unknown:
        raise ConfigError(f"unknown log format {unknown[0]!r}; use {' or '.join(LOG_FORMATS)}")
    if "tensorboard" in formats and not tensorboard_available():
        raise ConfigError(
            missing_package("writing TensorBoard logs", "tensorboard", "pip install 'napari-sparse-unet[logs]', or write CSV only")
        )
    return formats


class TrainingLog:
    """Rows of :data:`~.curves.COLUMNS` to ``log_dir`` as CSV and/or TensorBoard scalars.

    Args:
        log_dir: folder to write into (created, with missing parents).
        formats: any of :data:`LOG_FORMATS`; checked with :func:`check_log_formats`.
    """

    def __init__(self, log_dir: str | os.PathLike[str], formats: Sequence[str] = LOG_FORMATS) -> None:
        self.formats = check_log_formats(formats)
        self.log_dir = Path(log_dir)
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise ConfigError(f"log folder {str(self.log_dir)!r} is a file")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._rows: list[tuple[float, ...]] = []
        self._writer: Any = None
        if "tensorboard" in self.formats:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)

    @property
    def csv_path(self) -> Path:
        return self.log_dir / CSV_NAME

    def add(self, row: Sequence[float]) -> None:
        """One row (step, seconds, loss, fit_dice, val_dice, learning_rate); NaN values are left out."""
        row = tuple(float(v) for v in row)
        self._rows.append(row)
        if self._writer is not None:
            values = dict(zip(COLUMNS, row))
            for column, tag in TAGS.items():
                if not math.isnan(values[column]):
                    self._writer.add_scalar(tag, values[column], global_step=int(values["step"]))

    def close(self) -> list[Path]:
        """Finish the TensorBoard file and write the CSV; returns the files written."""
        written = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            written.extend(sorted(self.log_dir.glob("events.out.tfevents.*")))
        if "csv" in self.formats:
            write_csv(self.csv_path, self._rows)
            written.append(self.csv_path)
        return written

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()  # also after Ctrl-C: the curve so far is worth keeping


def write_csv(path: str | os.PathLike[str], rows: Iterable[Sequence[float]]) -> None:
    """Rows as CSV with a header of :data:`~.curves.COLUMNS`; NaN as an empty field; written atomically."""
    with atomic_file(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(COLUMNS)
        for row in rows:
            out.writerow(["" if math.isnan(v) else (int(v) if i == 0 else f"{v:.6g}") for i, v in enumerate(row)])


def write_curves(
    log_dir: str | os.PathLike[str], curves: Mapping[str, Sequence[float]] | TrainingCurves, formats: Sequence[str] = LOG_FORMATS
) -> list[Path]:
    """Write a whole curve (a model's ``curves``) to ``log_dir``; returns the files written."""
    if not isinstance(curves, TrainingCurves):
        curves = TrainingCurves.from_dict(curves)
    log = TrainingLog(log_dir, formats)
    try:
        for row in curves.rows():
            log.add(row)
    finally:
        written = log.close()
    return written
