"""Counting what is painted, incrementally, for the widget's table and its "what is missing" line.

Numpy only.  Annotations are (Z, Y, X) or (Y, X) with 0 = not painted, 1 =
background, 2.. = classes; slices are counted along axis 0.  What counts as
enough to train is decided by :func:`.rules.annotation_problem`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rules import annotation_problem


@dataclass(frozen=True)
class AnnotationStats:
    """What is painted: voxels per value and, for volumes, axis-0 slices per value."""

    ndim: int
    voxels: dict[int, int] = field(default_factory=dict)
    slices: dict[int, int] = field(default_factory=dict)  # value -> number of Z slices holding it (3-D only)
    annotated_slices: int = 0  # Z slices holding any annotation (3-D only)
    total_slices: int = 0  # Z slices in the volume (3-D only)

    @property
    def class_values(self) -> tuple[int, ...]:
        return tuple(sorted(v for v in self.voxels if v > 0))

    def problem(self) -> str | None:
        """What must be painted before training can start, or None when enough is painted."""
        return annotation_problem(self.voxels)

    def hint(self) -> str | None:
        """Advice that does not block training."""
        if self.problem() is None and self.ndim == 3 and self.annotated_slices == 1:
            return "tip: paint a few more slices spread through the volume"
        return None


def _count_values(block: np.ndarray) -> dict[int, int]:
    """Non-zero value -> count in one block."""
    flat = np.asarray(block).ravel()
    nonzero = flat[flat != 0]  # sparse annotations: this is small, and unique() sorts only it
    if nonzero.size == 0:
        return {}
    values, counts = np.unique(nonzero, return_counts=True)
    return {int(v): int(c) for v, c in zip(values.tolist(), counts.tolist())}


class ChangedRows:
    """Which axis-0 rows (slices) of an annotation were edited since they were last taken.

    A watcher marks what paint events touched; :meth:`take` hands the edited
    rows over as merged ``[start, stop)`` ranges and forgets them.
    """

    def __init__(self) -> None:
        self._rows: set[int] = set()
        self._all = False

    def mark_all(self) -> None:
        self._all = True

    def mark_slices(self, indices: Iterable[int]) -> None:
        self._rows.update(int(i) for i in indices)

    def mark_range(self, start: int, stop: int) -> None:
        self._rows.update(range(max(0, int(start)), int(stop)))

    @property
    def pending(self) -> bool:
        return self._all or bool(self._rows)

    def take(self, size: int) -> list[tuple[int, int]]:
        """The edited ranges within ``[0, size)`` (all of it after :meth:`mark_all`), then none are pending."""
        rows = range(size) if self._all else sorted(r for r in self._rows if 0 <= r < size)
        self._rows.clear()
        self._all = False
        ranges: list[tuple[int, int]] = []
        for r in rows:
            if ranges and ranges[-1][1] == r:
                ranges[-1] = (ranges[-1][0], r + 1)
            else:
                ranges.append((r, r + 1))
        return ranges


class AnnotationCounter(ChangedRows):
    """Counts painted voxels per value and per slice along axis 0, incrementally.

    A full count scans the array once (empty slices are skipped with a vectorised
    ``any``); afterwards only the slices marked dirty by paint events are
    recounted, so a brush stroke on a 100M-voxel volume costs one slice.
    """

    def __init__(self) -> None:
        super().__init__()
        self._per_slice: list[dict[int, int]] = []
        self._ndim = 0
        self._shape: tuple[int, ...] = ()
        self._all = True

    def update(self, data: Any) -> AnnotationStats:
        """Recount what is dirty in ``data`` (Z, Y, X) or (Y, X) and return the statistics."""
        shape = tuple(int(s) for s in data.shape)
        if shape != self._shape or self._all:
            self.take(0)
            self._full_count(data)
        else:
            for start, stop in self.take(len(self._per_slice)):
                for i in range(start, stop):
                    self._per_slice[i] = _count_values(data[i])
        return self.stats()

    def _full_count(self, data: Any) -> None:
        self._shape = tuple(int(s) for s in data.shape)
        self._ndim = len(self._shape)
        n = self._shape[0] if self._shape else 0
        self._per_slice = [{} for _ in range(n)]
        arr = np.asarray(data)
        if n and arr.size:
            painted = np.flatnonzero(arr.reshape(n, -1).any(axis=1))
            for i in painted.tolist():
                self._per_slice[i] = _count_values(arr[i])

    def stats(self) -> AnnotationStats:
        voxels: dict[int, int] = {}
        slices: dict[int, int] = {}
        annotated = 0
        for counts in self._per_slice:
            if counts:
                annotated += 1
            for value, count in counts.items():
                voxels[value] = voxels.get(value, 0) + count
                slices[value] = slices.get(value, 0) + 1
        if self._ndim != 3:
            slices, annotated = {}, 0
        total = len(self._per_slice) if self._ndim == 3 else 0
        return AnnotationStats(ndim=self._ndim, voxels=voxels, slices=slices, annotated_slices=annotated, total_slices=total)

