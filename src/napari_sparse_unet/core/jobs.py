"""Training and prediction as jobs: what the command line and the widget both run.

A job holds its inputs (copies of layer data, or arrays read from files), runs
the engine's generator in whatever thread calls :meth:`Job.run`, yields the
engine's small events (and, while training, previews of the viewed slice) and
returns its result.  :meth:`Job.stop` is honoured at the next step (a training
step or a prediction tile); the engine's generator is then closed, so a
stopped training still returns the best model so far.  No Qt, no napari.

Axis order: images are (C, *spatial) or as the engine accepts them; labels (*spatial).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .curves import TrainingCurves
from .generators import drive, run_to_end
from .rules import as_channel_first

if TYPE_CHECKING:
    from .checkpoint import SegmentationModel
    from .config import PredictConfig, TrainConfig
    from .instances import InstanceConfig
    from .train import Trainer


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

    from . import predict, train  # noqa: F401

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


class TrainJob(Job):
    """Trains (or fine-tunes); yields TrainEvent and, with a preview interval, Preview; returns the best model.

    The Trainer is made by :meth:`prepare`, which :meth:`run` calls when it was
    not called before: in the widget that is the worker thread, because
    checking a large volume and fitting the normalisation take a while.

    Args:
        images, annotations, config, spacing, initial, class_names: as for :class:`~.train.Trainer`.
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
        from .errors import InputError

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
            from .train import Trainer

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
        from .config import PredictConfig
        from .predict import predict_iter

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


class PredictJob(Job):
    """Predicts a whole image; yields PredictEvent; returns a PredictResult (None if stopped).

    Args:
        model: a SegmentationModel.
        image: as :func:`~.predict.predict_iter` takes it.
        config: prediction settings.
        labels_out, probabilities_out: where to write (numpy, zarr...); labels are
            allocated when None.
        probabilities: allocate probabilities in memory when ``probabilities_out`` is None.
        uncertainty: ``"entropy"`` or ``"margin"`` to compute a uint8 uncertainty
            slab by slab (into ``uncertainty_out``, or allocated); None: none.
        instances: make instances of one class after the prediction (into
            ``instances_out``, int32, or allocated); ``spacing`` steers the
            distance landscape (default: the model's training spacing).
    """

    def __init__(
        self,
        model: SegmentationModel,
        image: Any,
        config: PredictConfig,
        *,
        labels_out: Any = None,
        probabilities_out: Any = None,
        probabilities: bool = False,
        uncertainty: str | None = None,
        uncertainty_out: Any = None,
        instances: InstanceConfig | None = None,
        instances_out: Any = None,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.image = image
        self.config = config
        self.labels_out = labels_out
        self.probabilities_out = probabilities_out
        self.probabilities = probabilities
        self.uncertainty = uncertainty
        self.uncertainty_out = uncertainty_out
        self.instances = instances
        self.instances_out = instances_out
        self.spacing = spacing

    def _work(self) -> Generator[Any, None, PredictResult | None]:
        from .instances import ClassProbabilityWriter, segment_instances
        from .predict import predict_iter
        from .rules import check_instance_class
        from .uncertainty import UncertaintyWriter

        start = time.perf_counter()
        spatial = tuple(int(s) for s in self.image.shape[-self.model.spatial_dims :])  # predict_iter checks the image
        probabilities = self.probabilities_out
        if probabilities is None and self.probabilities:
            probabilities = np.zeros((self.model.num_classes, *spatial), dtype=np.float32)
        hooks: list[Any] = []
        if self.uncertainty is not None:
            hooks.append(UncertaintyWriter(spatial, self.uncertainty, self.uncertainty_out))
        keeper = None
        if self.instances is not None:  # a class the model lacks is refused before any tile runs
            index = check_instance_class(self.instances.class_value, self.model.class_values)
            if self.instances.needs_probability:
                keeper = ClassProbabilityWriter(spatial, index)
                hooks.append(keeper)
        tiles = predict_iter(self.model, self.image, self.config, self.labels_out, probabilities, slab_hooks=hooks)
        labels = yield from drive(tiles, lambda: self.stopped)
        if labels is None:
            return None
        instances = None
        if self.instances is not None:
            spacing = self.spacing if self.spacing is not None else self.model.spacing
            found = segment_instances(labels, self.instances, probability=None if keeper is None else keeper.out, spacing=spacing)
            del keeper
            if self.instances_out is not None:
                self.instances_out[...] = found
                instances = self.instances_out
            else:
                instances = found
        uncertainty = hooks[0].out if self.uncertainty is not None else None
        return PredictResult(labels, probabilities, time.perf_counter() - start, uncertainty, instances)
