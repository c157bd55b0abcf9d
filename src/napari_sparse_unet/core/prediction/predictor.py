"""The network as the sliding window calls it: a predictor of tile probabilities and a featurizer.

Tensors are (N, C, *tile) in, (N, K, *tile) out; the featurizer computes what
the network computes voxel by voxel (filter features, the voxel head) once per
row of tiles.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable

import torch

from ..device import autocast, autocast_dtype, preferred_memory_format
from ..network.model import fold_batch_norms

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""(N, C, *tile) float32 -> (N, K, *tile) class probabilities (what gets blended)."""


def make_predictor(
    model: Any,
    device: str | torch.device = "cpu",
    mixed_precision: bool = True,
    tta: bool = False,
    on_features: bool = False,
) -> Predictor:
    """Wrap a network as a :data:`Predictor` returning softmax probabilities.

    Args:
        model: a ``SegmentationModel`` (its ``network`` is used) or a bare
            ``torch.nn.Module`` mapping (N, C, *spatial) to logits (N, K, *spatial).
        device: where tiles run.
        mixed_precision: autocast where the device is fast at it (CUDA; CPUs with
            native bfloat16), see :mod:`.device`.
        tta: average over all flips of the spatial axes (2^dims passes).
        on_features: the predictor takes what :func:`make_featurizer` gives, the filter-bank
            features (N, C·F, *tile) followed by the voxel head's logits (N, K, *tile) if the
            network has one, instead of the image; every feature is a flip-invariant map
            (smoothing, magnitudes, eigenvalues), so flipped features are the flipped image's.

    The caller's network is never modified: it is copied when it has to move
    to another device or be put in eval mode (e.g. a network still training).
    """
    network = getattr(model, "network", model)
    device = torch.device(device)
    amp_dtype = autocast_dtype(device, mixed_precision)
    # A bare module carries no config: its first convolution's weight is (out, in, *kernel).
    spatial_dims = next(p for p in network.parameters() if p.ndim > 2).ndim - 2
    memory_format = preferred_memory_format(device, amp_dtype, spatial_dims)
    on_device = all(p.device == device for p in network.parameters())
    if network.training or not on_device or memory_format != torch.contiguous_format or on_features:
        network = copy.deepcopy(network).to(device=device, memory_format=memory_format).eval()
    if on_features:
        network = fold_batch_norms(network)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, amp_dtype):
            if not on_features:
                logits = network(x)
            elif getattr(network, "voxel_head", None) is not None:
                classes = network.config.num_classes
                logits = network.classify(x[:, :-classes], voxel=x[:, -classes:])
            else:
                logits = network.classify(x)
        return torch.softmax(logits.float(), dim=1)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            # Features already in the autocast dtype stay in it (the convolutions would cast them back).
            x = x.to(device=device, dtype=x.dtype if x.dtype == amp_dtype else torch.float32)
            if not tta:
                return forward(x)
            spatial = range(2, x.ndim)
            total: torch.Tensor | None = None
            count = 0
            for r in range(len(spatial) + 1):
                for axes in itertools.combinations(spatial, r):
                    y = forward(torch.flip(x, axes) if axes else x)
                    y = torch.flip(y, axes) if axes else y
                    total = y if total is None else total + y
                    count += 1
            assert total is not None
            return total / count

    return predictor


class Featurizer:
    """What the network computes voxel by voxel, the same in every tile: from (1, C, D + 2·halo[0], *rest)
    normalised planes, its filter-bank features (:meth:`.filters.FilterBank.planes`: valid along the
    first axis, mirrored at the ends of the others), then the voxel head's logits if it has one,
    written into a (C·F (+ K), D, *rest) tensor of :attr:`dtype` (the predictor's precision).

    Planes are best given in :attr:`dtype`: cast once per row, not once per call.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, mixed_precision: bool) -> None:
        self.device = device
        self.amp_dtype = autocast_dtype(device, mixed_precision)
        self.dtype = self.amp_dtype or torch.float32
        self.bank = copy.deepcopy(network.filters).to(device)
        head = getattr(network, "voxel_head", None)
        self.head = copy.deepcopy(head).to(device).eval() if head is not None else None
        self.channels = network.config.in_channels * self.bank.features_per_channel
        self.channels += network.config.num_classes if head is not None else 0

    def __call__(self, x: torch.Tensor, out: torch.Tensor, halo_axes: int = 1) -> None:
        """``x`` carries the halo along its first ``halo_axes`` spatial axes (:meth:`.filters.FilterBank.planes`)."""
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            features = self.bank.planes(x.to(device=self.device, dtype=self.dtype), halo_axes)
            out[: features.shape[1]] = features[0]
            if self.head is not None:
                out[features.shape[1] :] = self.head(features)[0]


def make_featurizer(model: Any, device: str | torch.device = "cpu", mixed_precision: bool = True) -> Featurizer | None:
    """The network's per-voxel part as a :class:`Featurizer` on ``device``; None without a filter bank."""
    network = getattr(model, "network", model)
    if getattr(network, "filters", None) is None:
        return None
    return Featurizer(network, torch.device(device), mixed_precision)
