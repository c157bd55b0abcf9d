"""The Train button's flow: check the input, start a training job, show its steps, previews and corrections."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _layers
from ..core.annotation import AnnotationStats
from ..core.errors import UserInputError
from ..core.rules import finetune_problem
from ..jobs import Corrections, Preview, TrainJob
from .notify import notify

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from .widget import SparseUNetWidget


class TrainingFlow:
    """Training for the dock widget; the widget owns the layers, the panels and the job runner."""

    def __init__(self, widget: SparseUNetWidget) -> None:
        self.widget = widget
        self._correction_problem: str | None = None  # the last one told to the user
        self._put_back_overlays: Callable[[], None] | None = None  # of a new prediction layer, until done

    def train(self) -> bool:
        """Start training (or fine-tuning) in a worker; returns False when the input is refused."""
        w = self.widget
        if w.busy:
            return False
        image_layer, annotation_layer = w.image_layer, w.annotation_layer
        if image_layer is None or annotation_layer is None:
            notify("error", "Pick an image layer and an annotation layer to train.")
            return False
        try:
            image = _layers.channels_snapshot(w.data.channel_layers, w.data.first_axis_is_channel)
            annotation = _layers.annotation_copy(annotation_layer, image)
            config = w.training.train_config(image.spatial_dims)
            stats = w.data.update_stats()
            if stats is not None and stats.problem():
                raise UserInputError(f"Cannot train on '{annotation_layer.name}': {stats.problem()}.")
        except UserInputError as error:
            notify("error", str(error))
            return False
        initial = None
        if w.model is not None and w.training.finetune_check.isChecked():
            reason = finetune_problem(w.model, image.data.shape, stats.class_values if stats else ())
            if reason:
                notify("info", f"Training a new model: {reason}.")
            else:
                initial = w.model
        steps = self._prediction_layer_steps(image, annotation_layer, initial, stats)
        job = TrainJob(
            [image.data], [annotation], config, spacing=image.scale, initial=initial,
            class_names=_layers.class_names_of(annotation_layer, stats.class_values if stats else ()),
            view=w.view.viewed, preview_interval=w.training.preview_spin.value(), channel_names=image.channel_names or None,
        )
        steps.append(lambda: w.curves.follow(job.curves))
        self._correction_problem = None
        steps.append(lambda: w.corrections.follow(job, annotation_layer))
        what = "Fine-tuning the current model" if initial is not None else "Training a new model"
        w.start_job(job, image, annotation_layer, f"{what} on '{image.name}' with '{annotation_layer.name}'…",
                    yielded=self._on_yielded, returned=self._on_returned, before=steps)
        return True

    def _prediction_layer_steps(self, image: Any, annotation_layer: Any, initial: Any, stats: AnnotationStats | None) -> list:
        """Steps that make the previews' layer before the job starts, so no layer is added while training runs."""
        viewer = self.widget.viewer
        if self.widget.training.preview_spin.value() <= 0:
            return []
        dtype = _label_dtype(initial, stats)
        if _layers.find_prediction_layer(viewer, image.name, image.spatial_shape) is None:
            # Made, added hidden, given its painting overlays, then shown, each in a turn of
            # its own: each part takes 20-60 ms on the main thread.
            layer = _layers.new_prediction_layer(
                viewer, np.zeros(image.spatial_shape, dtype), image, annotation_layer, visible=False)
            self._put_back_overlays = _layers.hold_paint_overlays(layer)
            return [lambda: _layers.add_prediction_layer(viewer, layer, activate=False),
                    self.put_back_overlays,
                    lambda: _layers.show_prediction_layer(viewer, image)]
        return [lambda: _layers.ensure_prediction_layer(viewer, image, dtype, annotation_layer)]

    def put_back_overlays(self) -> None:
        """Give the new prediction layer its painting overlays (also when its start was cancelled)."""
        if self._put_back_overlays is not None:
            self._put_back_overlays()
            self._put_back_overlays = None

    def _on_yielded(self, item: Any) -> None:
        if isinstance(item, Preview):
            self._show_preview(item)
        elif isinstance(item, Corrections):
            self._show_corrections(item)
        else:
            self.widget.progress.training_step(item)

    def _show_corrections(self, corrections: Corrections) -> None:
        status = self.widget.progress.status_label
        if corrections.problem is None:
            self._correction_problem = None
            status.setText(f"Training on your corrections too: {corrections.painted_voxels:,} painted voxels.")
            return
        status.setText(f"Corrections not used: {corrections.problem}.")
        if corrections.problem != self._correction_problem:  # once, not on every hand-over while it lasts
            notify("error", f"Corrections painted while training are not used: {corrections.problem}.")
        self._correction_problem = corrections.problem

    def _show_preview(self, preview: Preview) -> None:
        w = self.widget
        image = w.job_image
        if image is None:
            return
        try:
            layer = _layers.ensure_prediction_layer(w.viewer, image, preview.labels.dtype, w.job_annotation)
            _layers.write_preview(layer, preview.region, preview.labels)
        except Exception as error:  # a preview is a courtesy: never let it stop training
            w.progress.status_label.setText(f"Preview skipped: {error}")
            return
        w.progress.status_label.setText(f"Training… preview at step {preview.step} ({preview.seconds:.1f} s)")

    def _on_returned(self, model: SegmentationModel | None) -> None:
        w = self.widget
        if model is None:
            w.progress.status_label.setText("Training stopped before the first step; the model is unchanged.")
            return
        job = w.runner.job
        stopped = job is not None and job.stopped
        text = f"Training {'stopped' if stopped else 'finished'}: {model.history.get('steps', '?')} steps"
        dice = model.history.get("val_dice")
        if dice is not None and dice == dice:
            text += f", validation Dice {dice:.3f}"
        w.progress.status_label.setText(text + ". Predict, or correct and train more.")
        w.set_model(model)


def _label_dtype(initial: Any, stats: AnnotationStats | None) -> Any:
    """The labels' dtype of the model to be (the fine-tuned one's classes, or the painted ones)."""
    from ..core.data import label_lut

    values = initial.class_values if initial is not None else (stats.class_values if stats else (1,))
    return label_lut(values).dtype
