"""Dice, the one overlap score of the project (training's validation and fit curve, and the demo use it)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


def dice_per_class(
    predicted: np.ndarray, truth: np.ndarray, classes: Iterable[int], where: np.ndarray | None = None
) -> dict[int, float]:
    """Dice 2|P∩T| / (|P| + |T|) of each value in ``classes``, over the voxels where ``where`` is true.

    ``predicted`` and ``truth`` hold values of the same meaning and shape.  A
    class absent from both gets NaN (there is nothing to score), not 1 or 0.
    """
    if where is not None:
        predicted, truth = predicted[where], truth[where]
    scores = {}
    for value in classes:
        p, t = predicted == value, truth == value
        denominator = int(p.sum()) + int(t.sum())
        scores[int(value)] = 2.0 * int((p & t).sum()) / denominator if denominator else math.nan
    return scores


def mean_dice(scores: dict[int, float]) -> float:
    """Mean over the classes that could be scored; NaN when none could."""
    values = [s for s in scores.values() if not math.isnan(s)]
    return float(np.mean(values)) if values else math.nan


class RunningDice:
    """Foreground Dice of argmax predictions on painted voxels, pooled over the last ``window`` batches.

    Counts are per class index (0 = background, not scored); ``target`` is -1 where unpainted.
    """

    def __init__(self, num_classes: int, window: int = 20) -> None:
        self.num_classes = num_classes
        self.window = window
        self._counts: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        mask = target >= 0
        predicted = logits.argmax(1)[mask]
        truth = target[mask]
        k = self.num_classes
        # Row: intersection, predicted, truth; one column per class.
        counts = torch.stack([
            torch.bincount(truth[predicted == truth], minlength=k),
            torch.bincount(predicted, minlength=k),
            torch.bincount(truth, minlength=k),
        ]).cpu().numpy()
        self._counts = (self._counts + [counts])[-self.window:]

    def mean_foreground(self) -> float | None:
        if not self._counts:
            return None
        both, predicted, truth = np.sum(self._counts, axis=0)[:, 1:]
        scored = (predicted + truth) > 0
        if not scored.any():
            return None
        return float(np.mean(2.0 * both[scored] / (predicted[scored] + truth[scored])))
