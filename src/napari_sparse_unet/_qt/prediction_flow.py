"""The Predict and Copy buttons' flow: check the input, start a prediction job (or a lazy one), show its layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _layers
from ..core.errors import UserInputError
from ..core.rules import check_instance_class, model_channels_problem, model_image_problem
from ..jobs import PredictJob, PredictResult
from .notify import notify

if TYPE_CHECKING:
    from .widget import SparseUNetWidget

# Largest block of a lazy prediction: napari predicts every block a shown slice touches, whole.
LAZY_BLOCK_VOXELS = 2**22


class PredictionFlow:
    """Prediction for the dock widget; the widget owns the layers, the panels and the job runner."""

    def __init__(self, widget: SparseUNetWidget) -> None:
        self.widget = widget
        self._uncertainty_layer: Any = None  # the layer the ranked slices refer to

    def predict_config(self) -> Any:
        w = self.widget
        return w.training.predict_config(tta=w.prediction.tta_check.isChecked())

    def predict(self) -> bool:
        """Predict the whole selected image in a worker; returns False when refused."""
        w = self.widget
        if w.busy:
            return False
        try:
            image, config, instances = self._checked_input()
        except UserInputError as error:
            notify("error", str(error))
            return False
        probabilities, uncertainty = w.prediction.probabilities_check.isChecked(), w.next_slice.measure()
        if _layers.is_lazy(image.data) and not (probabilities or uncertainty or instances):
            self._predict_lazily(image, config)
            return True
        assert w.model is not None
        job = PredictJob(
            w.model, image.data, config, probabilities=probabilities,
            uncertainty=uncertainty, instances=instances, spacing=image.scale,
        )
        w.start_job(job, image, w.annotation_layer, f"Predicting '{image.name}'…",
                    yielded=w.progress.prediction_step, returned=self._on_returned)
        return True

    def _checked_input(self) -> tuple[_layers.ImageSnapshot, Any, Any]:
        """(image, predict config, instance settings); raises UserInputError with what to do."""
        w = self.widget
        model = w.model
        if model is None:
            raise UserInputError("Train or load a model before predicting.")
        if w.image_layer is None:
            raise UserInputError("Pick an image layer to predict.")
        layers = w.data.channel_layers
        problem = model_channels_problem(model.channel_names, [layer.name for layer in layers]) if len(layers) > 1 else None
        if problem:
            raise UserInputError(f"Cannot predict: {problem}.")
        image = _layers.channels_snapshot(layers, w.data.first_axis_is_channel)
        config = self.predict_config()
        problem = model_image_problem(image.data.shape, model.spatial_dims, model.in_channels)
        if problem and model.in_channels > 1:
            problem += f"; pick the layers of its channels in order ({', '.join(model.channel_names)}) with + beside Image"
        if problem:
            raise UserInputError(f"'{image.name}': {problem}")
        instances = w.instances.settings()
        if instances is not None:
            check_instance_class(instances.class_value, model.class_values)
        return image, config, instances

    def _predict_lazily(self, image: _layers.ImageSnapshot, config: Any) -> None:
        """A lazy (dask) image gets a lazy prediction layer: napari predicts a block (plus its halo)
        of the image when it first shows part of it, so neither volume is ever loaded whole.
        Probabilities, uncertainty and instances need the whole volume: they take the eager path."""
        from ..core.prediction.blockwise import BlockPredictor, predict_lazy

        w = self.widget
        assert w.model is not None
        labels = predict_lazy(BlockPredictor.from_model(w.model, config), image.data, max_block_voxels=LAZY_BLOCK_VOXELS)
        layer = _layers.show_prediction(w.viewer, labels, image, w.annotation_layer)
        blocks = "×".join(str(c[0]) for c in labels.chunks)
        w.progress.status_label.setText(
            f"'{layer.name}' of '{image.name}' is lazy: each {blocks} block is predicted when it is first shown."
        )

    def _on_returned(self, result: PredictResult | None) -> None:
        w = self.widget
        image = w.job_image
        if result is None or image is None:
            w.progress.status_label.setText("Prediction stopped.")
            return
        layer = _layers.show_prediction(w.viewer, result.labels, image, w.job_annotation)
        if result.probabilities is not None and w.model is not None:
            _layers.show_probabilities(w.viewer, result.probabilities, image, w.model.class_values, w.model.class_names)
        found = ""
        if result.instances is not None:
            shown = _layers.show_instances(w.viewer, result.instances, image)
            found = f", {int(result.instances.max(initial=0))} instances into '{shown.name}'"
        if result.uncertainty is not None:
            self._show_uncertainty(result.uncertainty, image)
        w.progress.progress_bar.setValue(1000)
        w.progress.status_label.setText(f"Predicted '{image.name}' in {result.seconds:.1f} s into '{layer.name}'{found}.")

    def _show_uncertainty(self, uncertainty: Any, image: _layers.ImageSnapshot) -> None:
        """The uncertainty layer and the ranking of unpainted slices along the axis the user scrolls."""
        from ..core.analysis.uncertainty import rank_slices

        w = self.widget
        self._uncertainty_layer = _layers.show_uncertainty(w.viewer, uncertainty, image)
        view = _layers.viewed_slice(w.viewer, self._uncertainty_layer)
        axis = view[0] if view is not None else 0
        painted = _layers.annotation_if_fits(w.job_annotation, uncertainty.shape)
        w.next_slice.show_ranking(rank_slices(uncertainty, axis, painted=painted), uncertainty.ndim)

    def go_to_slice(self, axis: int, index: int) -> None:
        """Show slice ``index`` of spatial ``axis`` (a ranked slice) in the viewer."""
        layer, viewer = self._uncertainty_layer, self.widget.viewer
        if layer is None or layer not in viewer.layers:
            return
        _layers.go_to_slice(viewer, layer, axis, index)

    def copy_slice(self) -> int:
        """Copy the prediction of the viewed slice into the annotation; returns voxels changed."""
        w = self.widget
        image_layer, annotation = w.image_layer, w.annotation_layer
        if image_layer is None or annotation is None:
            notify("error", "Pick the image and the annotation layer first.")
            return 0
        image_name, prediction = _layers.prediction_of(w.viewer, image_layer, w.data.first_axis_is_channel)
        if prediction is None:
            notify("error", f"There is no prediction of '{image_name}' yet: press Predict first.")
            return 0
        view = _layers.viewed_slice(w.viewer, prediction)
        axis, index = view if view is not None else (None, 0)
        try:
            changed = _layers.copy_slice_to_annotation(prediction, annotation, axis, index)
        except _layers.LayerError as error:
            notify("error", str(error))
            return 0
        where = "the image" if axis is None else f"slice {'ZYX'[axis]}={index}"
        w.progress.status_label.setText(
            f"Copied {changed:,} voxels of {where} into '{annotation.name}' (Ctrl+Z undoes). Fix the errors, then Train more."
        )
        return changed
