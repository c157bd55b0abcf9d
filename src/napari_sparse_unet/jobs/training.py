"""Training as a job: the trainer's events, previews of the viewed slice, corrections while it runs."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.training.curves import TrainingCurves
from ..core.generators import drive, run_to_end
from ..core.rules import as_channel_first
from .base import Corrections, Job, Preview, ViewedSlice, preview_region

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from ..core.config import TrainConfig
    from ..core.training.train import Trainer


class TrainJob(Job):
    """Trains (or fine-tunes); yields TrainEvent and, with a preview interval, Preview; returns the best model.

    The Trainer is made by :meth:`prepare`, which :meth:`run` calls when it was
    not called before: in the widget that is the worker thread, because
    checking a large volume and fitting the normalisation take a while.

    Args:
        images, annotations, config, spacing, initial, class_names: as for :class:`~.core.training.train.Trainer`.
        view: where the user looks, for previews.
        preview_interval: seconds between previews (0: none).  Slow previews
            are spaced out to at most a quarter of the time.
        channel_names: names of the image channels (layers or files), saved
            in the model; by default a fine-tuned model keeps its own, a new
            one gets generic names.

    ``curves`` receives a row per step while the job runs (other threads may
    read it); fine-tuning continues the initial model's curve.  Models the job
    returns carry the curve and the channel names.

    :meth:`correct` hands over annotation edits made while the job runs (any
    thread); they join the training data between two steps, and the job yields
    a :class:`Corrections` event then.
    """

    def __init__(
        self,
        images: Sequence[Any],
        annotations: Sequence[Any],
        config: TrainConfig,
        *,
        spacing: Sequence[float] | None = None,
        initial: SegmentationModel | None = None,
        class_names: Sequence[str] | None = None,
        view: ViewedSlice | None = None,
        preview_interval: float = 0.0,
        channel_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.images = list(images)
        self.annotations = list(annotations)
        self.config = config
        self.spacing = spacing
        self.initial = initial
        self.class_names = class_names
        self.view = view or ViewedSlice()
        self.preview_interval = preview_interval
        self.trainer: Trainer | None = None
        if channel_names is None and initial is not None:
            channel_names = initial.channel_names
        self.channel_names = tuple(channel_names or ())
        self.curves = TrainingCurves.from_dict(initial.curves if initial is not None else None)
        self._next_preview = 0.0
        self._interval = preview_interval
        self._edits: list[tuple[int, int, np.ndarray]] = []  # (image index, first row, rows), from any thread
        self._edits_lock = threading.Lock()
        self._painted: list[np.ndarray] | None = None  # the annotations with the edits, made at the first edit

    def correct(self, start: int, rows: Any, index: int = 0) -> None:
        """Replace rows ``start:start + len(rows)`` (axis 0) of annotation ``index`` from the next step on.

        Thread-safe and cheap: the rows are applied (and checked, with the rules
        of the start) in the training thread between steps.  ``rows`` must not
        change afterwards: hand over a copy.
        """
        with self._edits_lock:
            self._edits.append((int(index), int(start), np.asarray(rows)))

    def _take_edits(self) -> Iterator[Corrections]:
        """Apply the edits handed over since the last step (training thread)."""
        with self._edits_lock:
            edits, self._edits = self._edits, []
        if not edits or self.trainer is None:
            return
        from ..core.errors import InputError

        if self._painted is None:  # the caller's arrays stay untouched
            self._painted = [np.array(a, copy=True) for a in self.annotations]
        for index, start, rows in edits:
            self._painted[index][start : start + len(rows)] = rows
        try:
            painted = self.trainer.update_annotations(self._painted)
        except InputError as error:
            yield Corrections(self.trainer.painted_voxels, str(error))
            return
        yield Corrections(painted)
        # Show the corrected model soon, not after a whole preview interval.
        self._next_preview = min(self._next_preview, time.perf_counter() + min(self._interval, 1.0))

    def prepare(self) -> Trainer:
        """Check the input and set up the trainer (once); raises UserInputError for bad input."""
        if self.trainer is None:
            from ..core.training.train import Trainer

            self.trainer = Trainer(
                self.images, self.annotations, self.config, spacing=self.spacing, initial=self.initial,
                class_names=self.class_names,
            )
        return self.trainer

    @property
    def best_model(self) -> SegmentationModel | None:
        """The best model so far (also after a stop or a failure), or None before the first step."""
        return self._finished(None if self.trainer is None else self.trainer.best_model)

    def _finished(self, model: SegmentationModel | None) -> SegmentationModel | None:
        """``model`` with this job's curve and channel names (a new object sharing the network)."""
        if model is None:
            return None
        return dataclasses.replace(model, channel_names=self.channel_names, curves=self.curves.to_dict())

    def _work(self) -> Generator[Any, None, SegmentationModel | None]:
        trainer = self.prepare()
        self._next_preview = time.perf_counter() + self.preview_interval
        result = yield from drive(self._recorded(trainer.run()), lambda: self.stopped, self._between_steps)
        return self._finished(result) if result is not None else self.best_model

    def _recorded(self, events: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
        """Re-yield the trainer's events, adding each to ``curves`` (closing this closes ``events``)."""
        with contextlib.closing(events):
            while True:
                try:
                    event = next(events)
                except StopIteration as finished:
                    return finished.value
                self.curves.add(event)
                yield event

    def _between_steps(self, event: Any) -> Iterator[Any]:
        yield from self._take_edits()
        if self.preview_interval > 0:
            yield from self._previews(event)

    def _previews(self, event: Any) -> Iterator[Preview]:
        if time.perf_counter() < self._next_preview or self.stopped:
            return
        preview = self._preview(event.step)
        if preview is not None:
            self._interval = max(self.preview_interval, 3.0 * preview.seconds)
            yield preview
        self._next_preview = time.perf_counter() + self._interval

    def _preview(self, step: int) -> Preview | None:
        """Predict the slab around the viewed slice with the live weights; None if stopped meanwhile."""
        from ..core.config import PredictConfig
        from ..core.prediction.predict import predict_iter

        assert self.trainer is not None
        start = time.perf_counter()
        model = self.trainer.current_model()
        image = as_channel_first(self.images[0], spatial_dims=np.ndim(self.annotations[0]))
        spatial = tuple(int(s) for s in image.shape[1:])
        view, box = self.view.snapshot()
        axis = view[0] if view is not None else 0
        patch = tuple(model.patch_size) if len(model.patch_size) == len(spatial) else (1,) * len(spatial)
        # A slab one training patch deep, and half a patch around what is visible,
        # give the viewed slice the context the network was trained with.
        region = preview_region(spatial, view, patch[axis], box, tuple(p // 2 for p in patch))
        crop = np.asarray(image[(slice(None), *region)])
        config = PredictConfig(device=self.trainer.device.type, mixed_precision=self.config.mixed_precision)
        # Stop is honoured between tiles, not after the whole slab.
        labels = run_to_end(predict_iter(model, crop, config), stopped=lambda: self.stopped)
        if labels is None:
            return None
        return Preview(region=region, labels=labels, step=step, seconds=time.perf_counter() - start)
