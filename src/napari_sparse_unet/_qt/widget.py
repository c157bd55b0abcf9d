"""The Sparse U-Net dock widget: pick layers, train, predict, correct, save.

The widget assembles small panels (``data_panel``, ``training_panel``,
``panels``) and wires their buttons to the flows that turn them into jobs
(``training_flow``, ``prediction_flow``, export in ``panels``).  Layer data are
read and written only through ``_layers``; what input is valid is decided by
``core.rules`` (the command line applies the same rules); every job runs in a
worker owned by ``runner.JobRunner``, one at a time, and its results come back
to the handlers on the main thread.  torch is imported only in the worker
threads, so importing this module (and starting napari) stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .. import _layers
from ..core.annotation import AnnotationStats
from ..core.errors import UserInputError
from ..jobs import ExportJob, Job, PredictJob, TrainJob
from .corrections import CorrectionFeed
from .curves_plot import CurvesPlot
from .data_panel import DataPanel
from .next_panel import InstancesPanel, NextSlicePanel
from .notify import notify
from .panels import NO_IMAGE_TO_EXPORT, ModelPanel, PredictionPanel, ProgressPanel
from .prediction_flow import PredictionFlow
from .runner import JobRunner
from .training_flow import TrainingFlow
from .training_panel import TrainingPanel
from .view import ViewFollower

if TYPE_CHECKING:
    import napari

    from ..core.checkpoint import SegmentationModel

# What a failed job was doing, for its message.
JOB_NAMES = {TrainJob: "Training", PredictJob: "Prediction", ExportJob: "Export"}


class SparseUNetWidget(QWidget):
    """Dock widget: train a 3D U-Net on a few painted slices and predict whole volumes."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: SegmentationModel | None = None
        self.devices: tuple[str, ...] | None = None  # known once torch has been imported in the background
        self.job_image: _layers.ImageSnapshot | None = None  # the image the running job reads
        self.job_annotation: Any = None
        self._shut_down = False

        self.data = DataPanel(napari_viewer)
        self.training = TrainingPanel()
        self.prediction = PredictionPanel()
        self.instances = InstancesPanel()
        self.next_slice = NextSlicePanel()
        self.model_panel = ModelPanel(lambda: self.model, self._selected_image)
        self.progress = ProgressPanel()
        self.curves = CurvesPlot()
        # Progress right under Train: on a laptop's screen the dock scrolls, and the status belongs in sight.
        self._add_panels(self.data, self.training, self.progress, self.prediction, self.instances, self.next_slice,
                         self.model_panel, self.curves)
        self.runner = JobRunner(self)
        self.corrections = CorrectionFeed(self.data.watcher, self)
        self.view = ViewFollower(napari_viewer, self._followed_image, self)
        self.training_flow = TrainingFlow(self)
        self.prediction_flow = PredictionFlow(self)

        self.data.changed.connect(self._update_buttons)
        self.data.changed.connect(self.view.update)
        self.runner.busy_changed.connect(self._on_busy_changed)
        self.training.train_button.clicked.connect(self.train)
        self.training.stop_button.clicked.connect(self.runner.stop)
        self.prediction.predict_button.clicked.connect(self.predict)
        self.prediction.copy_button.clicked.connect(self.copy_slice)
        self.next_slice.slice_chosen.connect(self.prediction_flow.go_to_slice)
        self.model_panel.loaded.connect(self._on_loaded)
        self.model_panel.status_changed.connect(self.progress.status_label.setText)
        self.model_panel.export_requested.connect(self._export)
        self._update_buttons()
        self._detect_devices()

    def _add_panels(self, *panels: QWidget) -> None:
        """Stack the panels in a scroll area: the dock scrolls where napari's window is short.

        Without it, a panel that appears (the training plot) makes napari's window
        grow past the screen, and the canvas is resized and redrawn on the Train click.
        """
        content = QWidget()
        layout = QVBoxLayout(content)
        for panel in panels:
            layout.addWidget(panel)
        layout.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(_VerticalScroll(content))

    # ----------------------------------------------------------------- state
    @property
    def busy(self) -> bool:
        return self.runner.busy

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
        job_image = self.job_image
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
        self.model_panel.export_button.setEnabled(not busy and image and self.model is not None)
        self.data.set_busy(busy)

    def set_model(self, model: SegmentationModel) -> None:
        self.model = model
        self.data.has_model = model is not None
        self.data.model_names = dict(zip(model.class_values, model.class_names)) if model is not None else {}
        self.model_panel.show_model(model)
        if model is not None:
            self.instances.set_classes(model.class_values, model.class_names)
        self._update_buttons()

    def _detect_devices(self) -> None:
        self.runner.run_aside(_available_devices, returned=self._on_devices, failed=self._on_devices_failed)

    def _on_devices_failed(self, error: BaseException) -> None:
        self._on_devices(("cpu",))

    def _on_devices(self, devices: Any) -> None:
        self.devices = tuple(devices)
        self.training.set_devices(self.devices, may_change_preset=not self.busy)
        self.curves.prepare()  # now, not on the Train click: building the plot takes tens of ms

    # ------------------------------------------------------------- the flows
    def train(self) -> bool:
        """Start training (or fine-tuning) in a worker; returns False when the input is refused."""
        return self.training_flow.train()

    def predict(self) -> bool:
        """Predict the whole selected image in a worker; returns False when refused."""
        return self.prediction_flow.predict()

    def predict_config(self) -> Any:
        return self.prediction_flow.predict_config()

    def copy_slice(self) -> int:
        """Copy the prediction of the viewed slice into the annotation; returns voxels changed."""
        return self.prediction_flow.copy_slice()

    # ------------------------------------------------------------------- jobs
    def start_job(
        self, job: Job, image: _layers.ImageSnapshot | None, annotation: Any, status: str, *, yielded: Any,
        returned: Any, before: Sequence[Callable[[], Any]] = (),
    ) -> None:
        """Run ``job`` on ``image`` (the one the previews follow) after the ``before`` steps (JobRunner.start)."""
        self.job_image, self.job_annotation = image, annotation
        steps = [self.view.update, lambda: self.progress.start(status), *before]
        self.runner.start(job, yielded=yielded, returned=returned, failed=self._on_failed, aborted=self._on_aborted,
                          before=steps)

    def _export(self, job: ExportJob) -> None:
        if not self.busy:
            self.start_job(job, None, None, f"Exporting to {job.path}…", yielded=lambda _: None,
                           returned=self.progress.status_label.setText)

    def _keep_best_model(self) -> None:
        job = self.runner.job
        if isinstance(job, TrainJob) and job.best_model is not None:
            self.set_model(job.best_model)

    def _on_failed(self, message: str) -> None:
        what = JOB_NAMES.get(type(self.runner.job), "The job")
        self.progress.status_label.setText(f"{what} failed: {message}")
        notify("error", f"{what} failed: {message}")
        self._keep_best_model()

    def _on_aborted(self) -> None:
        self._keep_best_model()
        self.progress.status_label.setText("Stopped.")

    def _on_busy_changed(self, busy: bool) -> None:
        if not busy:
            self.training_flow.put_back_overlays()
            self.corrections.stop()
            self.curves.stop()
            self.job_image = self.job_annotation = None
            self.view.update()
        self._update_buttons()

    def _on_loaded(self, model: SegmentationModel) -> None:
        self.set_model(model)
        self.curves.show_curves(model.curves)
        if model.in_channels > 1 and not self.data.preselect_channels(model.channel_names):
            notify("info", f"The model needs {model.in_channels} channels ({', '.join(model.channel_names)}): "
                           "pick their image layers in this order, with + beside Image.")
        self.data.update_stats()

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


class _VerticalScroll(QScrollArea):
    """Scrolls ``content`` up and down; as wide as the content needs, never clipping it sideways."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        # napari's style sheet may give the area a frame, whatever its shape says.
        bar = self.verticalScrollBar().sizeHint().width()
        width = self.widget().minimumSizeHint().width() + bar + 2 * self.frameWidth()
        return QSize(width, super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        return QSize(max(hint.width(), self.minimumSizeHint().width()), hint.height())


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
