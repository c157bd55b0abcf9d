"""The network a bioimage.io package runs, and what it needs from its input.

:class:`PackagedNetwork` holds a model's input normalisation, the mirrored halo
its filter bank needs and its U-Net, so a consumer feeds raw intensities and
gets per-class probabilities of the same spatial size.  :func:`tile_rules` says
which input sizes work and what halo a tiling consumer should drop.

Tensors are (B, C, Z, Y, X) (2-D models: (B, C, Y, X)); spatial tuples are in
array order.  numpy and torch only.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import SegmentationModel
from ..core.network.model import PlanewiseConv3d, fold_batch_norms
from ..core.rules import image_for_model

# Largest test input per axis (voxels): big enough to show the model working, small enough for a zip.
TEST_EXTENT = 64


# --------------------------------------------------------------------------- the packaged network


class PackagedNetwork(nn.Module):
    """Raw intensities (B, C, *s) float32 -> class probabilities (B, K, *s) float32.

    Applies the model's :class:`~.core.data.Normalization` (in float32, which
    every device has), mirrors the filter bank's halo past the input's border as
    prediction tiles are mirrored at the volume border, and softmaxes the
    U-Net's logits.  Each spatial size must be a multiple of the network's
    ``size_multiple()`` and larger than its input halo.
    """

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        norm = model.normalization
        self.channels = norm.channels
        self.halo = tuple(int(h) for h in model.model_config.input_halo)
        self.equalize = norm.knots is not None
        # Per channel: knots xp, their quantiles fp, and the slope of each segment (outer ones continue the line).
        xps, fps, slopes = [], [], []
        for c in range(self.channels):
            if norm.knots is not None:
                xp = np.asarray(norm.knots[c], np.float64)
                fp = np.linspace(0.0, 1.0, len(xp))
                slope = np.diff(fp) / np.diff(xp)
                slope[0] = (fp[1] - fp[0]) / max(xp[1] - xp[0], 1e-6)
                slope[-1] = (fp[-1] - fp[-2]) / max(xp[-1] - xp[-2], 1e-6)
            else:
                xp = np.asarray([norm.low[c]], np.float64)
                fp = np.zeros(1)
                slope = np.asarray([1.0 / max(np.float32(norm.high[c]) - np.float32(norm.low[c]), 1e-6)])
            # float32: a consumer may move the network to an Apple GPU, which has no float64.
            xps.append(torch.from_numpy(xp.astype(np.float32)))
            fps.append(torch.from_numpy(fp.astype(np.float32)))
            slopes.append(torch.from_numpy(slope.astype(np.float32)))
        for name, values in (("xp", xps), ("fp", fps), ("slope", slopes)):
            for c, v in enumerate(values):
                self.register_buffer(f"{name}{c}", v)
        self.network = _plain_convolutions(model.network)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *s) raw -> (B, C, *s) float32, as ``Normalization.apply``."""
        out = []
        for c in range(self.channels):
            xp, fp, slope = getattr(self, f"xp{c}"), getattr(self, f"fp{c}"), getattr(self, f"slope{c}")
            v = x[:, c]
            if self.equalize:
                # Segment of each value; below the first knot the first, above the last the last.
                i = torch.clamp(torch.searchsorted(xp, v.contiguous(), right=True) - 1, 0, xp.numel() - 2)
                out.append(fp[i] + (v - xp[i]) * slope[i])
            else:
                out.append((v - xp[0]) * slope[0])
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x.float())
        if any(self.halo):
            pad = [p for h in reversed(self.halo) for p in (h, h)]  # F.pad wants the last axis first
            x = F.pad(x, pad, mode="reflect")
        return torch.softmax(self.network(x).float(), dim=1)


def _plain_convolutions(network: nn.Module) -> nn.Module:
    """A copy (CPU, eval) whose plane-wise 3-D convolutions are plain ``Conv3d``, the same function on every device,
    with its batch norms folded into the convolutions as prediction folds them (a map fewer per layer).

    :class:`PlanewiseConv3d` only changes how the CPU computes a 3-D convolution; a
    traced graph would freeze its CPU branch for GPU consumers too.
    """
    network = fold_batch_norms(copy.deepcopy(network).cpu().eval())
    for module in network.modules():
        if isinstance(module, PlanewiseConv3d):
            module.__class__ = nn.Conv3d
    return network


def torchscript_network(model: SegmentationModel, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace :class:`PackagedNetwork` on the smallest valid crop of ``example`` (1, C, *s).

    The graph is then proven general: on a second shape it gives what a trace made on that
    shape gives.  Both run the same operations, so they agree to rounding; the eager module
    does not (its filter bank multiplies banded matrices and its voxel head reads a grid, both
    sized by the input), and comparing with it mistook those roundings for a frozen size.
    """
    module = PackagedNetwork(model).eval()
    rules = tile_rules(model)
    small = torch.from_numpy(_smallest_crop(example.numpy(), rules, module.halo))
    # The next valid size along the first axis: another shape at little more than the first one's memory.
    other = torch.cat([small, small.flip(2)[:, :, : rules.step[0]]], dim=2)
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks inside the filter bank become constants; the second shape below proves the graph general.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, small, check_trace=False)
        expected, got = torch.jit.trace(module, other, check_trace=False)(other), traced(other)
        if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-5):
            raise RuntimeError(f"TorchScript trace differs from the network on input {tuple(other.shape)}")
    return traced


def _smallest_crop(example: np.ndarray, rules: "TileRules", halo: tuple[int, ...]) -> np.ndarray:
    """The centre of ``example`` at the smallest size the network takes: two steps, more than the mirrored halo."""
    size = [s * max(2, math.ceil((h + 1) / s)) for s, h in zip(rules.step, halo)]
    spatial = example.shape[2:]
    start = [max(0, (n - z) // 2) for n, z in zip(spatial, size)]
    crop = example[(slice(None), slice(None), *(slice(a, a + z) for a, z in zip(start, size)))]
    missing = [z - c for z, c in zip(size, crop.shape[2:])]
    return np.ascontiguousarray(np.pad(crop, [(0, 0)] * 2 + [(m // 2, m - m // 2) for m in missing], mode="reflect"))


# --------------------------------------------------------------------------- tile requirements


@dataclass(frozen=True)
class TileRules:
    """What a consumer must feed the packaged network, per spatial axis (array order).

    Attributes:
        minimum: smallest input size.
        step: sizes are ``minimum + n·step``.
        halo: output voxels per side a tiling consumer should crop: the filter
            bank's halo plus an eighth of the training patch of U-Net context,
            rounded up so that 2·halo is a multiple of ``step``.
    """

    minimum: tuple[int, ...]
    step: tuple[int, ...]
    halo: tuple[int, ...]


def _round_up_even_multiple(value: int, step: int) -> int:
    """The smallest halo >= ``value`` with 2·halo a multiple of ``step``."""
    unit = step // math.gcd(2, step)
    return int(math.ceil(value / unit) * unit)


def tile_rules(model: SegmentationModel) -> TileRules:
    """Minimum size, step and halo of the packaged network's input, per spatial axis."""
    step = model.model_config.size_multiple()
    filter_halo = model.model_config.input_halo
    patch = model.patch_size or step
    # 2·halo a multiple of the step: a consumer pads a whole image by the halo and must still get a valid size.
    halo = tuple(_round_up_even_multiple(h + p // 8, m) for h, p, m in zip(filter_halo, patch, step))
    # Reflection needs more than the filter halo; cropping the output halo must leave a voxel.
    minimum = tuple(int(m * math.ceil((max(2 * o, h) + 1) / m)) for m, o, h in zip(step, halo, filter_halo))
    return TileRules(minimum=minimum, step=tuple(int(s) for s in step), halo=halo)


def make_test_input(model: SegmentationModel, image: Any, rules: TileRules) -> np.ndarray:
    """(1, C, *s) float32: the centre of ``image`` (raw intensities) at a valid input size of about TEST_EXTENT.

    An axis shorter than the model's minimum input is mirrored out to it.
    """
    image_cf = image_for_model(image, model.spatial_dims, model.in_channels)
    spatial = image_cf.shape[1:]
    size = []
    for n, lo, step in zip(spatial, rules.minimum, rules.step):
        want = max(lo, min(n, TEST_EXTENT))
        size.append(lo + step * ((want - lo) // step))
    start = [max(0, (n - s) // 2) for n, s in zip(spatial, size)]
    crop = np.asarray(image_cf[(slice(None), *(slice(a, a + s) for a, s in zip(start, size)))], dtype=np.float32)
    missing = [s - c for s, c in zip(size, crop.shape[1:])]
    crop = np.pad(crop, [(0, 0)] + [(m // 2, m - m // 2) for m in missing], mode="reflect")
    return crop[None]
