"""When the U-Net joins the voxel head.

The voxel head learns from thousands of painted voxels per step in milliseconds; the
U-Net's steps take a tenth of a second or more.  Training the head alone first gives a
useful model within seconds.  The U-Net joins once the head has learned what it can:
its smoothed loss has stopped falling, but never before ``least`` nor after ``most`` of
the budget.  With a short budget, a head that needs long (many classes) gets the time it
needs; one that learns fast (two classes) hands over early.
"""

from __future__ import annotations

import math
from collections import deque

# The smoothed loss has stopped falling when, over WINDOW head steps, it fell by less than
# RELATIVE of itself plus ABSOLUTE (a loss near zero falls by tiny amounts to the end).
SMOOTHING = 0.02
WINDOW = 200
RELATIVE = 0.03
ABSOLUTE = 0.005
LATEST = 0.5


class HeadWarmup:
    """Tracks the head-alone phase: ``head_alone(progress)`` before each step, ``add(loss)`` after a head step.

    ``least`` and ``most`` are fractions of the training budget (``progress`` in [0, 1]).
    Once the U-Net has joined, it stays.
    """

    def __init__(self, least: float, most: float = LATEST) -> None:
        self.least = least
        self.most = max(least, most)
        self._smoothed = math.nan
        self._history: deque[float] = deque(maxlen=WINDOW + 1)
        self.joined = least <= 0.0

    def add(self, loss: float) -> None:
        """Record the loss of a head-alone step."""
        if not math.isfinite(loss):
            return
        self._smoothed = loss if math.isnan(self._smoothed) else (1 - SMOOTHING) * self._smoothed + SMOOTHING * loss
        self._history.append(self._smoothed)

    def plateaued(self) -> bool:
        """True when the smoothed loss fell by less than the tolerance over the last ``WINDOW`` head steps."""
        if len(self._history) <= WINDOW:
            return False
        earlier, now = self._history[0], self._history[-1]
        return earlier - now < RELATIVE * now + ABSOLUTE

    def head_alone(self, progress: float) -> bool:
        """Whether the next step trains the voxel head alone (the U-Net not yet joined)."""
        if not self.joined and progress >= self.least and (progress >= self.most or self.plateaued()):
            self.joined = True
        return not self.joined
