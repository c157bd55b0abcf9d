"""The best weights of a training run so far, and the model made from them on demand."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..checkpoint import SegmentationModel


def snapshot(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``network``'s weights on the CPU, unaffected by further training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


class BestWeights:
    """Keeps the weights with the highest score offered so far (ties go to the later ones).

    ``to_model`` turns kept weights into a model; it is called only when the
    model is asked for, once per kept state.
    """

    def __init__(self, to_model: Callable[[dict[str, torch.Tensor]], SegmentationModel]) -> None:
        self._to_model = to_model
        self.state: dict[str, torch.Tensor] | None = None
        self.score = -math.inf
        self._model: SegmentationModel | None = None

    def offer(self, network: torch.nn.Module, score: float) -> None:
        """Keep ``network``'s weights when ``score`` is at least the best so far."""
        if score >= self.score:
            self.score = score
            self.state = snapshot(network)
            self._model = None

    def forget_score(self) -> None:
        """Let the next offer win whatever its score (the data it is scored on changed); the weights stay."""
        self.score = -math.inf

    @property
    def model(self) -> SegmentationModel | None:
        """The model of the kept weights; None before any offer."""
        if self.state is None:
            return None
        if self._model is None:
            self._model = self._to_model(self.state)
        return self._model
