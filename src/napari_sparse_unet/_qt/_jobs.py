"""The work the widget runs in worker threads, as plain generators.

No Qt and no napari here: a job gets copies of the layer data, yields small
events for the main thread, and returns its result.  ``stop()`` is honoured
at the next step (a training step or a prediction tile), which is well under
a second on a CPU; the job then closes the core generator, so a cancelled
training still returns the best model so far.

Axis order: images are channel-first (C, *spatial); labels are (*spatial).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from ..core.config import PredictConfig, TrainConfig


@dataclass(frozen=True)
class Preview:
    """Labels predicted for ``region`` of the image (a slab around the viewed slice)."""

    region: tuple[slice, ...]
    labels: np.ndarray
    step: int
    seconds: float


@dataclass(frozen=True)
class PredictResult:
    labels: np.ndarray  # (*spatial), painted values, background 0
    probabilities: np.ndarray | None  # (K, *spatial) float32
    seconds: float


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


class _Job:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self.done = threading.Event()  # set when the job's generator has finished or been closed

    def stop(self) -> None:
        """Ask the job to end at its next step (thread-safe)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class TrainJob(_Job):
    """Trains (or fine-tunes) in the worker; yields TrainEvent and Preview; returns the best model.

    The Trainer is built inside the worker, because validating a large volume
    and fitting the normalisation take a while and must not freeze napari.
    """

    def __init__(
        self,
        image_cf: Any,
        annotation: np.ndarray,
        config: TrainConfig,
        *,
        spacing: tuple[float, ...] | None = None,
        initial: SegmentationModel | None = None,
        view: ViewedSlice | None = None,
        preview_interval: float = 5.0,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.image_cf = image_cf
        self.annotation = annotation
        self.config = config
        self.spacing = spacing
        self.initial = initial
        self.view = view or ViewedSlice()
        self.preview_interval = preview_interval
        self.class_names = class_names  # one per painted value, background first; ignored when fine-tuning
        self.trainer: Any = None
        self.device: str | None = None

    def run(self) -> Generator[Any, None, SegmentationModel | None]:
        try:
            if self.stopped:
                return None
            from ..core.train import Trainer

            self.trainer = Trainer(
                [self.image_cf], [self.annotation], self.config, spacing=self.spacing, initial=self.initial,
                class_names=None if self.initial is not None else self.class_names,
            )
            self.device = str(self.trainer.device)
            steps = self.trainer.run()
            result: SegmentationModel | None = None
            try:
                # Previews cost up to a quarter of the time: slow previews are spaced out.
                interval = self.preview_interval
                last_preview = time.perf_counter()
                while not self.stopped:
                    try:
                        event = next(steps)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    yield event
                    if self.preview_interval > 0 and time.perf_counter() - last_preview >= interval and not self.stopped:
                        preview = self._preview(event.step)
                        last_preview = time.perf_counter()
                        if preview is not None:
                            interval = max(self.preview_interval, 3.0 * preview.seconds)
                            yield preview
            finally:
                steps.close()  # on cancel: ends training cleanly and keeps the best weights
            return result if result is not None else self.trainer.best_model
        finally:
            self.done.set()

    def _preview(self, step: int) -> Preview | None:
        """Predict the slab around the viewed slice with the live weights; None if stopped meanwhile."""
        from ..core.config import PredictConfig
        from ..core.predict import predict_iter

        start = time.perf_counter()
        model = self.trainer.current_model()
        spatial = tuple(int(s) for s in self.image_cf.shape[1:])
        view, box = self.view.snapshot()
        axis = view[0] if view is not None else 0
        patch = tuple(model.patch_size) if len(model.patch_size) == len(spatial) else (1,) * len(spatial)
        # A slab one training patch deep, and half a patch around what is visible,
        # give the viewed slice the context the network was trained with.
        region = preview_region(spatial, view, patch[axis], box, tuple(p // 2 for p in patch))
        crop = np.asarray(self.image_cf[(slice(None), *region)])
        device = self.device.split(":")[0] if self.device else "cpu"
        config = PredictConfig(device=device, mixed_precision=self.config.mixed_precision)
        tiles = predict_iter(model, crop, config)
        try:
            while True:
                if self.stopped:  # Stop is honoured between tiles, not after the whole slab
                    return None
                try:
                    next(tiles)
                except StopIteration as done:
                    labels = done.value
                    break
        finally:
            tiles.close()
        return Preview(region=region, labels=labels, step=step, seconds=time.perf_counter() - start)


class PredictJob(_Job):
    """Predicts a whole image in the worker; yields PredictEvent; returns a PredictResult (None if stopped)."""

    def __init__(self, model: SegmentationModel, image_cf: Any, config: PredictConfig, probabilities: bool = False) -> None:
        super().__init__()
        self.model = model
        self.image_cf = image_cf
        self.config = config
        self.probabilities = probabilities

    def run(self) -> Generator[Any, None, PredictResult | None]:
        try:
            if self.stopped:
                return None
            from ..core.predict import predict_iter

            start = time.perf_counter()
            probabilities = None
            if self.probabilities:
                spatial = tuple(int(s) for s in self.image_cf.shape[1:])
                probabilities = np.zeros((self.model.num_classes, *spatial), dtype=np.float32)
            tiles = predict_iter(self.model, self.image_cf, self.config, probabilities_out=probabilities)
            try:
                while not self.stopped:
                    try:
                        event = next(tiles)
                    except StopIteration as stop:
                        return PredictResult(stop.value, probabilities, time.perf_counter() - start)
                    yield event
            finally:
                tiles.close()
            return None
        finally:
            self.done.set()
