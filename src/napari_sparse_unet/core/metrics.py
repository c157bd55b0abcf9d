"""Dice, the one overlap score of the project (training's validation and the demo use it)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


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
