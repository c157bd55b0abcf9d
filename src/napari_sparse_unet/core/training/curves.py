"""Training curves: one row per training step (thinned when long), kept inside the model file.

A row holds ``step`` (counted over all runs of a model, so fine-tuning
continues the curve), ``seconds`` (training time, also continued), ``loss``,
``fit_dice`` (Dice on the painted voxels of recent batches), ``val_dice``
(Dice on a held-out slice, NaN where not measured) and ``learning_rate``.
No Qt, no torch: the widget's plot, the checkpoint and the log writers read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COLUMNS: tuple[str, ...] = ("step", "seconds", "loss", "fit_dice", "val_dice", "learning_rate")

#: Rows kept in memory and in a model file; beyond this the curve is thinned evenly.
MAX_POINTS = 2000


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


class TrainingCurves:
    """Rows of :data:`COLUMNS`, appended by the training thread and read by others.

    Appending a tuple to a list is atomic in CPython, so a reader in another
    thread (the widget's plot timer) sees whole rows without a lock.

    Args:
        rows: rows to start from (e.g. a loaded model's curve, continued by fine-tuning).
        max_points: rows kept; when twice as many have been added, every other
            old row is dropped (rows that hold a validation Dice are kept).
    """

    def __init__(self, rows: Sequence[Sequence[float]] = (), max_points: int = MAX_POINTS) -> None:
        self._rows: list[tuple[float, ...]] = [tuple(float(v) for v in row) for row in rows]
        self.max_points = max(int(max_points), 2)
        last = self._rows[-1] if self._rows else (0.0, 0.0)
        self._step_offset = int(last[0])
        self._seconds_offset = float(last[1])

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, event: Any) -> tuple[float, ...]:
        """Append the row of a training event (``TrainEvent``: step, elapsed, loss, ...); return it."""
        row = (
            float(self._step_offset + int(event.step)),
            self._seconds_offset + float(event.elapsed),
            _number(event.loss),
            _number(getattr(event, "fit_dice", None)),
            _number(getattr(event, "val_dice", None)),
            _number(getattr(event, "learning_rate", None)),
        )
        self._rows.append(row)
        if len(self._rows) >= 2 * self.max_points:
            self._rows = _thinned(self._rows, self.max_points)
        return row

    def last(self) -> tuple[float, ...] | None:
        """The latest row, or None before the first."""
        rows = self._rows
        return rows[-1] if rows else None

    def rows(self) -> list[tuple[float, ...]]:
        """A snapshot of the rows (safe to call while another thread adds)."""
        return list(self._rows)

    def columns(self) -> dict[str, np.ndarray]:
        """Each column as a float64 array (NaN where a value was not measured)."""
        table = np.asarray(self.rows(), dtype=np.float64).reshape(-1, len(COLUMNS))
        return {name: table[:, i] for i, name in enumerate(COLUMNS)}

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists per column, at most ``max_points`` rows: what a checkpoint stores."""
        rows = self.rows()
        if len(rows) > self.max_points:
            rows = _thinned(rows, self.max_points)
        return {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}

    @classmethod
    def from_dict(cls, columns: Mapping[str, Sequence[float]] | None) -> "TrainingCurves":
        """Rebuild from :meth:`to_dict`'s lists; missing columns become NaN, None or {} gives no rows."""
        if not columns:
            return cls()
        length = max((len(v) for v in columns.values()), default=0)
        table = [
            [_number(v) for v in columns.get(name, ())] + [math.nan] * (length - len(columns.get(name, ())))
            for name in COLUMNS
        ]
        return cls(list(zip(*table)))


def _thinned(rows: list[tuple[float, ...]], target: int) -> list[tuple[float, ...]]:
    """About ``target`` rows spread evenly, always the first and last, plus those with a validation Dice
    (while they are fewer than half of ``target``; beyond that they are thinned like the rest)."""
    keep = set(np.linspace(0, len(rows) - 1, target).round().astype(int).tolist())
    val = COLUMNS.index("val_dice")
    measured = [i for i, row in enumerate(rows) if not math.isnan(row[val])]
    if len(measured) <= target // 2:
        keep.update(measured)
    return [row for i, row in enumerate(rows) if i in keep]
