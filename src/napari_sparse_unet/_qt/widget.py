"""The Sparse U-Net dock widget: pick layers, train, predict, correct, save.

The widget assembles small panels (``data_panel``, ``training_panel``,
``panels``) and turns their buttons into jobs.  Layer data are read and written
only through ``_layers``; what input is valid is decided by ``core.rules`` (the
command line applies the same rules); jobs (``jobs``) run in a worker
owned by ``runner.JobRunner``, and their results come back to the handlers
here, on the main thread.  torch is imported only in the worker threads, so
importing this module (and starting napari) stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from .. import _layers
from ..core.annotation import AnnotationStats
from ..core.errors import UserInputError
from ..jobs import Corrections, PredictJob, PredictResult, Preview, TrainJob
from ..core.rules import check_instance_class, finetune_problem, model_channels_problem, model_image_problem
from .corrections import CorrectionFeed
from .curves_plot import CurvesPlot
from .data_panel import DataPanel
from .next_panel import InstancesPanel, NextSlicePanel
from .notify import notify
from .panels import NO_IMAGE_TO_EXPORT, ModelPanel, PredictionPanel, ProgressPanel
from .runner import JobRunner
from .training_panel import TrainingPanel
from .view import ViewFollower

if TYPE_CHECKING:
    import napari

    from ..core.checkpoint import SegmentationModel


# Milliseconds between the steps of a job's start (see SparseUNetWidget._start).
START_STEP_MS = 25
# Largest block of a lazy prediction: napari predicts every block a shown slice touches, whole.
LAZY_BLOCK_VOXELS = 2**22


class SparseUNetWidget(QWidget):
    """Dock widget: train a 3D U-Net on a few painted slices and predict whole volumes."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SegmentationModel | None = None
        self.devices: tuple[str, ...] | None = None  # known once torch has been imported in the background
        self._job_image: _layers.ImageSnapshot | None = None  # the image the running job reads
        self._job_annotation: Any = None
        self._uncertainty_layer: Any = None  # the layer the ranked slices refer to
        self._shut_down = False
        self._starting = False  # a job's start is spread over a few event-loop turns (see _start)
        self._correction_problem: str | None = None

        self.data = DataPanel(napari_viewer)
        self.training = TrainingPanel()
        self.prediction = PredictionPanel()
        self.instances = InstancesPanel()
        self.next_slice = NextSlicePanel()
        self.model_panel = ModelPanel(lambda: self.model, self._selected_image)
        self.progress = ProgressPanel()
        self.curves = CurvesPlot()
        layout = QVBoxLayout(self)
        panels = (self.data, self.training, self.prediction, self.instances, self.next_slice,
                  self.model_panel, self.progress, self.curves)
        for panel in panels:
            layout.addWidget(panel)
        layout.addStretch(1)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.runner = JobRunner(self)
        self.corrections = CorrectionFeed(self.data.watcher, self)
        self.view = ViewFollower(napari_viewer, self._followed_image, self)

        self.data.changed.connect(self._update_buttons)
        self.data.changed.connect(self.view.update)
        self.runner.busy_changed.connect(self._on_busy_changed)
        self.training.train_button.clicked.connect(self.train)
        self.training.stop_button.clicked.connect(self.runner.stop)
        self.prediction.predict_button.clicked.connect(self.predict)
        self.prediction.copy_button.clicked.connect(self.copy_slice)
        self.next_slice.slice_chosen.connect(self.go_to_slice)
        self.model_panel.loaded.connect(self._on_loaded)
        self.model_panel.status_changed.connect(self.progress.status_label.setText)
        self.model_panel.export_finished.connect(self._update_buttons)
        self._update_buttons()
        self._detect_devices()

    # ----------------------------------------------------------------- state
    @property
    def busy(self) -> bool:
        return self._starting or self.runner.busy

    @property
    def image_layer(self) -> Any:
        return self.data.image_layer

    @property
    def annotation_layer(self) -> Any:
        return self.data.annotation_layer

    def update_stats(self) -> AnnotationStats | None:
        return self.data.update_stats()

    def _selected_image(self) -> Any:
        """The selected image layer's data, (C, *spatial); raises UserInputError when there is none."""
        if self.image_layer is None:
            raise UserInputError(NO_IMAGE_TO_EXPORT)
        return _layers.channels_snapshot(self.data.channel_layers, self.data.first_axis_is_channel).data

    def _followed_image(self) -> tuple[Any, bool] | None:
        job_image = self._job_image
        layer = _layers.image_layer_named(self.viewer, job_image.name) if job_image is not None else self.image_layer
        return None if layer is None else (layer, self.data.first_axis_is_channel)

    def _update_buttons(self, *_: Any) -> None:
        busy, image = self.busy, self.image_layer is not None
        annotation = self.annotation_layer is not None
        self.training.set_busy(busy)
        self.training.train_button.setEnabled(not busy and image and annotation)
        self.training.train_button.setText(
            "Train more" if self.model is not None and self.training.finetune_check.isChecked() else "Train"
        )
        self.prediction.predict_button.setEnabled(not busy and image and self.model is not None)
        self.prediction.copy_button.setEnabled(not busy and image and annotation)
        self.model_panel.save_button.setEnabled(not busy and self.model is not None)
        self.model_panel.load_button.setEnabled(not busy)
        exporting = self.model_panel.export_worker is not None
        self.model_panel.export_button.setEnabled(not busy and not exporting and image and self.model is not None)
        self.data.set_busy(busy)

    def _set_model(self, model: SegmentationModel) -> None:
        self.model = model
        self.data.has_model = model is not None
        self.data.model_names = dict(zip(model.class_values, model.class_names)) if model is not None else {}
        self.model_panel.show_model(model)
        if model is not None:
            self.instances.set_classes(model.class_values, model.class_names)
        self._update_buttons()

    def _detect_devices(self) -> None:
        from napari.qt.threading import create_worker

        create_worker(_available_devices, _connect={"returned": self._on_devices, "errored": self._on_devices_failed})

    def _on_devices_failed(self, error: BaseException) -> None:
        self._on_devices(("cpu",))

    def _on_devices(self, devices: Any) -> None:
        self.devices = tuple(devices)
        self.training.set_devices(self.devices, may_change_preset=not self.busy)
        self.curves.prepare()  # now, not on the Train click: building the plot takes tens of ms

    # --------------------------------------------------------------- training
    def train(self) -> bool:
        """Start training (or fine-tuning) in a worker; returns False when the input is refused."""
        if self.busy:
            return False
        image_layer, annotation_layer = self.image_layer, self.annotation_layer
        if image_layer is None or annotation_layer is None:
            notify("error", "Pick an image layer and an annotation layer to train.")
            return False
        try:
            image = _layers.channels_snapshot(self.data.channel_layers, self.data.first_axis_is_channel)
            annotation = _layers.annotation_copy(annotation_layer, image)
            config = self.training.train_config(image.spatial_dims)
            stats = self.data.update_stats()
            if stats is not None and stats.problem():
                raise UserInputError(f"Cannot train on '{annotation_layer.name}': {stats.problem()}.")
        except UserInputError as error:
            notify("error", str(error))
            return False
        initial = None
        if self.model is not None and self.training.finetune_check.isChecked():
            reason = finetune_problem(self.model, image.data.shape, stats.class_values if stats else ())
            if reason:
                notify("info", f"Training a new model: {reason}.")
            else:
                initial = self.model
        preview = self.training.preview_spin.value()
        steps = []
        if preview > 0:  # made before the job starts, so no layer is added while training runs
            dtype = self._label_dtype(initial, stats)
            if _layers.find_prediction_layer(self.viewer, image.name, image.spatial_shape) is None:
                # Added hidden, then shown in a turn of its own: the first draw of a new layer
                # (a GL program to build) and adding it take 30-80 ms each.
                steps.append(lambda: _layers.ensure_prediction_layer(self.viewer, image, dtype, annotation_layer, visible=False))
                steps.append(lambda: _layers.show_prediction_layer(self.viewer, image))
            else:
                steps.append(lambda: _layers.ensure_prediction_layer(self.viewer, image, dtype, annotation_layer))
        job = TrainJob(
            [image.data], [annotation], config, spacing=image.scale, initial=initial,
            class_names=_layers.class_names_of(annotation_layer, stats.class_values if stats else ()),
            view=self.view.viewed, preview_interval=preview, channel_names=image.channel_names or None,
        )
        steps.append(lambda: self.curves.follow(job.curves))
        self._correction_problem = None
        steps.append(lambda: self.corrections.follow(job, annotation_layer))
        what = "Fine-tuning the current model" if initial is not None else "Training a new model"
        self._start(job, image, annotation_layer, f"{what} on '{image.name}' with '{annotation_layer.name}'…",
                    yielded=self._on_train_yielded, returned=self._on_train_returned, before=steps)
        return True

    @staticmethod
    def _label_dtype(initial: Any, stats: AnnotationStats | None) -> Any:
        from ..core.data import label_lut

        values = initial.class_values if initial is not None else (stats.class_values if stats else (1,))
        return label_lut(values).dtype

    def _on_train_yielded(self, item: Any) -> None:
        if isinstance(item, Preview):
            self._show_preview(item)
        elif isinstance(item, Corrections):
            self._show_corrections(item)
        else:
            self.progress.training_step(item)

    def _show_corrections(self, corrections: Corrections) -> None:
        if corrections.problem is None:
            self._correction_problem = None
            self.progress.status_label.setText(f"Training on your corrections too: {corrections.painted_voxels:,} painted voxels.")
            return
        self.progress.status_label.setText(f"Corrections not used: {corrections.problem}.")
        if corrections.problem != self._correction_problem:  # once, not on every hand-over while it lasts
            notify("error", f"Corrections painted while training are not used: {corrections.problem}.")
        self._correction_problem = corrections.problem

    def _show_preview(self, preview: Preview) -> None:
        image = self._job_image
        if image is None:
            return
        try:
            layer = _layers.ensure_prediction_layer(self.viewer, image, preview.labels.dtype, self._job_annotation)
            _layers.write_preview(layer, preview.region, preview.labels)
        except Exception as error:  # a preview is a courtesy: never let it stop training
            self.progress.status_label.setText(f"Preview skipped: {error}")
            return
        self.progress.status_label.setText(f"Training… preview at step {preview.step} ({preview.seconds:.1f} s)")

    def _on_train_returned(self, model: SegmentationModel) -> None:
        if model is None:
            self.progress.status_label.setText("Training stopped before the first step; the model is unchanged.")
            return
        job = self.runner.job
        stopped = job is not None and job.stopped
        text = f"Training {'stopped' if stopped else 'finished'}: {model.history.get('steps', '?')} steps"
        dice = model.history.get("val_dice")
        if dice is not None and dice == dice:
            text += f", validation Dice {dice:.3f}"
        self.progress.status_label.setText(text + ". Predict, or correct and train more.")
        self._set_model(model)

    # ------------------------------------------------------------- prediction
    def predict_config(self) -> Any:
        return self.training.predict_config(tta=self.prediction.tta_check.isChecked())

    def predict(self) -> bool:
        """Predict the whole selected image in a worker; returns False when refused."""
        if self.busy:
            return False
        image_layer = self.image_layer
        try:
            if self.model is None:
                raise UserInputError("Train or load a model before predicting.")
            if image_layer is None:
                raise UserInputError("Pick an image layer to predict.")
            layers = self.data.channel_layers
            problem = model_channels_problem(self.model.channel_names, [layer.name for layer in layers]) if len(layers) > 1 else None
            if problem:
                raise UserInputError(f"Cannot predict: {problem}.")
            image = _layers.channels_snapshot(layers, self.data.first_axis_is_channel)
            config = self.predict_config()
            problem = model_image_problem(image.data.shape, self.model.spatial_dims, self.model.in_channels)
            if problem and self.model.in_channels > 1:
                problem += f"; pick the layers of its channels in order ({', '.join(self.model.channel_names)}) with + beside Image"
            if problem:
                raise UserInputError(f"'{image.name}': {problem}")
            instances = self.instances.settings()
            if instances is not None:
                check_instance_class(instances.class_value, self.model.class_values)
        except UserInputError as error:
            notify("error", str(error))
            return False
        probabilities, uncertainty = self.prediction.probabilities_check.isChecked(), self.next_slice.measure()
        if _layers.is_lazy(image.data) and not (probabilities or uncertainty or instances):
            self._predict_lazily(image, config)
            return True
        job = PredictJob(
            self.model, image.data, config, probabilities=probabilities,
            uncertainty=uncertainty, instances=instances, spacing=image.scale,
        )
        self._start(job, image, self.annotation_layer, f"Predicting '{image.name}'…",
                    yielded=self.progress.prediction_step, returned=self._on_predict_returned)
        return True

    def _predict_lazily(self, image: _layers.ImageSnapshot, config: Any) -> None:
        """A lazy (dask) image gets a lazy prediction layer: napari predicts a block (plus its halo)
        of the image when it first shows part of it, so neither volume is ever loaded whole.
        Probabilities, uncertainty and instances need the whole volume: they take the eager path."""
        from ..core.prediction.blockwise import BlockPredictor, predict_lazy

        assert self.model is not None
        labels = predict_lazy(BlockPredictor.from_model(self.model, config), image.data, max_block_voxels=LAZY_BLOCK_VOXELS)
        layer = _layers.show_prediction(self.viewer, labels, image, self.annotation_layer)
        blocks = "×".join(str(c[0]) for c in labels.chunks)
        self.progress.status_label.setText(
            f"'{layer.name}' of '{image.name}' is lazy: each {blocks} block is predicted when it is first shown."
        )

    def _on_predict_returned(self, result: PredictResult | None) -> None:
        image = self._job_image
        if result is None or image is None:
            self.progress.status_label.setText("Prediction stopped.")
            return
        layer = _layers.show_prediction(self.viewer, result.labels, image, self._job_annotation)
        if result.probabilities is not None and self.model is not None:
            _layers.show_probabilities(self.viewer, result.probabilities, image, self.model.class_values, self.model.class_names)
        found = ""
        if result.instances is not None:
            shown = _layers.show_instances(self.viewer, result.instances, image)
            found = f", {int(result.instances.max(initial=0))} instances into '{shown.name}'"
        if result.uncertainty is not None:
            self._show_uncertainty(result.uncertainty, image)
        self.progress.progress_bar.setValue(1000)
        self.progress.status_label.setText(f"Predicted '{image.name}' in {result.seconds:.1f} s into '{layer.name}'{found}.")

    def _show_uncertainty(self, uncertainty: Any, image: _layers.ImageSnapshot) -> None:
        """The uncertainty layer and the ranking of unpainted slices along the axis the user scrolls."""
        from ..core.analysis.uncertainty import rank_slices

        self._uncertainty_layer = _layers.show_uncertainty(self.viewer, uncertainty, image)
        view = _layers.viewed_slice(self.viewer, self._uncertainty_layer)
        axis = view[0] if view is not None else 0
        painted = _layers.annotation_if_fits(self._job_annotation, uncertainty.shape)
        self.next_slice.show_ranking(rank_slices(uncertainty, axis, painted=painted), uncertainty.ndim)

    def go_to_slice(self, axis: int, index: int) -> None:
        """Show slice ``index`` of spatial ``axis`` (a ranked slice) in the viewer."""
        layer = self._uncertainty_layer
        if layer is None or layer not in self.viewer.layers:
            return
        _layers.go_to_slice(self.viewer, layer, axis, index)

    # ------------------------------------------------------------------- jobs
    def _start(
        self, job: Any, image: _layers.ImageSnapshot, annotation: Any, status: str, *, yielded: Any, returned: Any,
        before: Sequence[Callable[[], Any]] = (),
    ) -> None:
        """Start ``job`` after the ``before`` steps, each in its own event-loop turn.

        Each of them (adding a layer, showing the plot) takes tens of ms on the main
        thread; done in one click handler they stalled napari for 0.3-0.6 s.  They
        run before the worker starts, so they do not wait for the GIL either.
        """
        self._job_image, self._job_annotation = image, annotation
        self._starting = True
        self._update_buttons()
        steps = [self.view.update, lambda: self.progress.start(status), *before]

        def next_step() -> None:
            if self._shut_down:
                self._starting = False
                return
            if steps:
                steps.pop(0)()
                QTimer.singleShot(START_STEP_MS, next_step)  # room for other events (a redraw) in between
                return
            self._starting = False
            self.runner.start(job, yielded=yielded, returned=returned, failed=self._on_failed, aborted=self._on_aborted)

        QTimer.singleShot(0, next_step)

    def _keep_best_model(self) -> None:
        job = self.runner.job
        if isinstance(job, TrainJob) and job.best_model is not None:
            self._set_model(job.best_model)

    def _on_failed(self, message: str) -> None:
        what = "Training" if isinstance(self.runner.job, TrainJob) else "Prediction"
        self.progress.status_label.setText(f"{what} failed: {message}")
        notify("error", f"{what} failed: {message}")
        self._keep_best_model()

    def _on_aborted(self) -> None:
        self._keep_best_model()
        self.progress.status_label.setText("Stopped.")

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy:
            self.corrections.stop()
            self.curves.stop()
            self._job_image = self._job_annotation = None
            self.view.update()
        self._update_buttons()

    def _on_loaded(self, model: SegmentationModel) -> None:
        self._set_model(model)
        self.curves.show_curves(model.curves)
        if model.in_channels > 1 and not self.data.preselect_channels(model.channel_names):
            notify("info", f"The model needs {model.in_channels} channels ({', '.join(model.channel_names)}): "
                           "pick their image layers in this order, with + beside Image.")
        self.data.update_stats()

    # ------------------------------------------------------------------- copy
    def copy_slice(self) -> int:
        """Copy the prediction of the viewed slice into the annotation; returns voxels changed."""
        image_layer, annotation = self.image_layer, self.annotation_layer
        if image_layer is None or annotation is None:
            notify("error", "Pick the image and the annotation layer first.")
            return 0
        image_name, prediction = _layers.prediction_of(self.viewer, image_layer, self.data.first_axis_is_channel)
        if prediction is None:
            notify("error", f"There is no prediction of '{image_name}' yet: press Predict first.")
            return 0
        view = _layers.viewed_slice(self.viewer, prediction)
        axis, index = view if view is not None else (None, 0)
        try:
            changed = _layers.copy_slice_to_annotation(prediction, annotation, axis, index)
        except _layers.LayerError as error:
            notify("error", str(error))
            return 0
        where = "the image" if axis is None else f"slice {'ZYX'[axis]}={index}"
        self.progress.status_label.setText(
            f"Copied {changed:,} voxels of {where} into '{annotation.name}' (Ctrl+Z undoes). Fix the errors, then Train more."
        )
        return changed

    # --------------------------------------------------------------- shutdown
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop a running job and wait for it (closing napari or the widget)."""
        self.runner.shutdown(timeout)

    def closeEvent(self, event: Any) -> None:
        if not self._shut_down:
            self._shut_down = True
            self.shutdown()
            try:
                self.data.shutdown()
                self.view.disconnect_viewer()
            except Exception:  # the viewer may already be closed
                pass
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        # napari's dock close button re-parents the widget to None: stop there.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.busy:
            self.shutdown()
        return super().event(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.window() is not self:
            self.runner.stop_when_closed(self.window())


def _available_devices() -> tuple[str, ...]:
    """Import the engine (seconds: torch) off the main thread; return the devices it can use."""
    from ..core.device import available_devices
    from ..jobs import import_engine

    import_engine()
    try:  # the training plot's library, imported here rather than on the first Train click
        import pyqtgraph  # noqa: F401
    except ImportError:
        pass
    return tuple(available_devices())
