"""What every job shares: the stop flag, the events besides the engine's, the viewed slice.

Axis order: images are (C, *spatial) or as the engine accepts them; labels (*spatial).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preview:
    """Labels predicted for ``region`` of the image (a slab around the viewed slice)."""

    region: tuple[slice, ...]
    labels: np.ndarray
    step: int
    seconds: float


@dataclass(frozen=True)
class Corrections:
    """Annotation edits handed to a running training (:meth:`TrainJob.correct`) and taken into it.

    ``painted_voxels``: what the training steps learn from now; ``problem``: why
    the edits were refused (training goes on with what it had), else None.
    """

    painted_voxels: int
    problem: str | None = None


@dataclass(frozen=True)
class PredictResult:
    labels: Any  # (*spatial), painted values, background 0
    probabilities: Any  # (K, *spatial) float32, or None
    seconds: float
    uncertainty: Any = None  # (*spatial) uint8, 0 = sure .. 255 = unsure, or None
    instances: Any = None  # (*spatial) int32, 0 = none, 1..N = objects, or None


Box = tuple[tuple[int, int], ...]  # per spatial axis (start, stop), in voxels


class ViewedSlice:
    """What the user looks at, written by the main thread, read by the worker.

    ``view`` is (spatial axis, index) of the viewed slice; ``box`` the visible
    part of the image per spatial axis (None: all of it).  Both are replaced
    together under a lock, so a read always sees a consistent pair.
    """

    def __init__(self) -> None:
        self._value: tuple[tuple[int, int] | None, Box | None] = (None, None)
        self._lock = threading.Lock()

    def set(self, view: tuple[int, int] | None, box: Box | None = None) -> None:
        with self._lock:
            self._value = (view, box)

    def get(self) -> tuple[int, int] | None:
        return self.snapshot()[0]

    def snapshot(self) -> tuple[tuple[int, int] | None, Box | None]:
        with self._lock:
            return self._value


def preview_region(
    spatial_shape: tuple[int, ...],
    view: tuple[int, int] | None,
    depth: int,
    box: Box | None = None,
    margin: tuple[int, ...] | None = None,
) -> tuple[slice, ...]:
    """Where to preview: a slab ``depth`` thick (clamped to the volume) around the viewed slice.

    Along the other axes, the visible ``box`` grown by ``margin`` voxels of
    context (as ilastik predicts only what is on screen), or the full extent.
    For 2-D images, or when nothing is viewed yet, the slab is centred in axis 0.
    """
    region = [slice(0, s) for s in spatial_shape]
    if box is not None and len(box) == len(spatial_shape):
        margin = margin or (0,) * len(spatial_shape)
        for a, ((lo, hi), size) in enumerate(zip(box, spatial_shape)):
            lo, hi = max(0, int(lo) - margin[a]), min(size, int(hi) + margin[a])
            if hi > lo:
                region[a] = slice(lo, hi)
    if len(spatial_shape) < 3:
        return tuple(region)
    axis, index = view if view is not None else (0, spatial_shape[0] // 2)
    size = spatial_shape[axis]
    depth = max(1, min(int(depth), size))
    start = int(np.clip(index - depth // 2, 0, size - depth))
    region[axis] = slice(start, start + depth)
    return tuple(region)


def import_engine() -> None:
    """Import torch and the engine now, so that the first job does not pay for it.

    A GUI calls this in a background thread when it opens.  Besides torch
    itself, torch's first optimizer imports its compiler stack (seconds of
    imports, which hold the GIL in bursts of up to a few hundred ms); made
    here, a throwaway optimizer moves that out of the first training.
    """
    import torch

    from ..core.prediction import predict  # noqa: F401
    from ..core.training import train  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


class Job:
    """Work that runs as a generator and can be stopped from another thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.done = threading.Event()  # set once run() has finished or been closed

    def stop(self) -> None:
        """Ask the job to end at its next step (thread-safe)."""
        self._stop.set()

    def abandon(self) -> None:
        """End a job whose ``run()`` generator will never start (cancelled before its first step)."""
        self._stop.set()
        self.done.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> Generator[Any, None, Any]:
        """Yield the job's events and return its result (None when stopped before any)."""
        try:
            if self.stopped:
                return None
            return (yield from self._work())
        finally:
            self.done.set()

    def _work(self) -> Generator[Any, None, Any]:
        raise NotImplementedError
