"""The public Python API: everything the widget and the command line do.

    >>> from napari_sparse_unet.api import Trainer, TrainConfig, predict
    >>> trainer = Trainer([image], [annotation], TrainConfig(max_time=60))
    >>> for event in trainer.run():
    ...     print(event.step, event.loss)
    >>> labels = predict(trainer.best_model, image)

Images are (Z, Y, X) or (C, Z, Y, X) (2-D: (Y, X) or (C, Y, X)); annotations
use 0 = not annotated, 1 = background, 2.. = classes.
"""

from .core.checkpoint import CheckpointError, SegmentationModel, load_model
from .core.config import PRESETS, ConfigError, ModelConfig, PredictConfig, TrainConfig
from .core.data import InputError
from .core.predict import PredictEvent, predict, predict_iter
from .core.device import available_devices, resolve_device
from .core.train import TrainEvent, Trainer, train

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "ModelConfig",
    "PredictConfig",
    "PredictEvent",
    "SegmentationModel",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "available_devices",
    "load_model",
    "predict",
    "predict_iter",
    "resolve_device",
    "train",
]
