"""Export to a bioimage.io package as a job, so the widget runs it like training and prediction."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .base import Job

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel


class ExportJob(Job):
    """Write and validate the package of a copy of ``model`` at ``path``; returns the status line.

    ``image`` (C, *spatial) gives the package's test input.  Tracing and validating take
    seconds and cannot stop halfway: a stop is honoured only before the export starts.
    """

    def __init__(self, model: SegmentationModel, path: str, image: Any) -> None:
        super().__init__()
        self.model, self.path, self.image = model.copy(), path, image

    def _work(self) -> Generator[Any, None, str]:
        from ..bioimageio.export import export_model

        yield from ()  # one step: nothing to report until the package is written
        summary = export_model(self.model, self.path, self.image)
        checked = "tested with bioimageio.core" if summary.status == "passed" else "validated with bioimageio.spec"
        return f"Exported to {self.path} ({checked}: {summary.status})."
