"""Training, prediction and export as jobs: what the command line and the widget both run.

A job holds its inputs (copies of layer data, or arrays read from files), runs
the engine's generator in whatever thread calls :meth:`Job.run`, yields the
engine's small events (and, while training, previews of the viewed slice) and
returns its result.  :meth:`Job.stop` is honoured at the next step (a training
step or a prediction tile); the engine's generator is then closed, so a
stopped training still returns the best model so far.  No Qt, no napari.

Axis order: images are (C, *spatial) or as the engine accepts them; labels (*spatial).
"""

from .base import Corrections, Job, PredictResult, Preview, ViewedSlice, import_engine, preview_region
from .export import ExportJob
from .prediction import PredictJob
from .training import TrainJob

__all__ = [
    "Corrections", "ExportJob", "Job", "PredictJob", "PredictResult", "Preview", "TrainJob", "ViewedSlice", "import_engine",
    "preview_region",
]
