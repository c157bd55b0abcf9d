"""Prediction as a job: labels, and optionally instances, class probabilities and uncertainty."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.generators import drive
from .base import Job, PredictResult

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from ..core.config import PredictConfig
    from ..core.analysis.instances import InstanceConfig


class PredictJob(Job):
    """Predicts a whole image; yields PredictEvent; returns a PredictResult (None if stopped).

    Args:
        model: a SegmentationModel.
        image: as :func:`~.core.prediction.predict.predict_iter` takes it.
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
        from ..core.analysis.instances import ClassProbabilityWriter, segment_instances
        from ..core.prediction.predict import predict_iter
        from ..core.rules import check_instance_class
        from ..core.analysis.uncertainty import UncertaintyWriter

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
