"""The public Python API: everything the widget and the command line do.

    >>> from napari_sparse_unet.api import Trainer, TrainConfig, predict
    >>> trainer = Trainer([image], [annotation], TrainConfig(max_time=60))
    >>> for event in trainer.run():
    ...     print(event.step, event.loss)
    >>> labels = predict(trainer.best_model, image)

Images are (Z, Y, X) or (C, Z, Y, X) (2-D: (Y, X) or (C, Y, X)); annotations
use 0 = not annotated, 1 = background, 2.. = classes.  Bad input raises a
:class:`UserInputError` (an :class:`InputError`, :class:`ConfigError` or
:class:`CheckpointError`) whose message is the one the command line and the
widget show.
"""

from .core.checkpoint import SegmentationModel, load_network
from .core.training.curves import TrainingCurves
from .core.config import PRESETS, ModelConfig, PredictConfig, TrainConfig
from .core.device import available_devices, resolve_device
from .core.errors import CheckpointError, ConfigError, InputError, UserInputError
from .core.generators import run_to_end
from .jobs import PredictJob, PredictResult, TrainJob
from .core.prediction.predict import PredictEvent, predict, predict_iter
from .core.training.train import TrainEvent, Trainer, train
from .core.training.training_log import TrainingLog, write_curves

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "ModelConfig",
    "PredictConfig",
    "PredictEvent",
    "PredictJob",
    "PredictResult",
    "SegmentationModel",
    "TrainConfig",
    "TrainEvent",
    "TrainJob",
    "Trainer",
    "TrainingCurves",
    "TrainingLog",
    "UserInputError",
    "available_devices",
    "load_network",
    "predict",
    "predict_iter",
    "resolve_device",
    "run_to_end",
    "train",
    "write_curves",
]
