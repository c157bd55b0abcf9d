"""Planning the network and the training patch for the data (nnU-Net's planner, in small).

A pure function of the painted volumes, their spacing and the training
settings: the network's configuration and the patch it trains on.  Annotations
are (Z, Y, X) or (Y, X), 0 = not annotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import ModelConfig, TrainConfig
from ..network.filters import axis_sigmas
from ..network.model import choose_patch_size, plan_network
from ..rules import check_network_size


@dataclass(frozen=True)
class Plan:
    """What to train: the network's configuration and the patch size in array order."""

    model_config: ModelConfig
    patch_size: tuple[int, ...]


def plan(
    annotations: Sequence[np.ndarray],
    config: TrainConfig,
    *,
    channels: int,
    num_classes: int,
    spacing: Sequence[float] | None,
    model_config: ModelConfig | None = None,
) -> Plan:
    """The network and patch for training on ``annotations`` with ``config``.

    ``model_config``: the configuration of a model being fine-tuned, kept as it
    is; then only the patch is chosen.
    """
    if model_config is None:
        model_config = plan_model(config, channels=channels, num_classes=num_classes, spacing=spacing, dims=annotations[0].ndim)
    return Plan(model_config, training_patch_size(config, model_config, annotations, spacing))


def plan_model(
    config: TrainConfig, *, channels: int, num_classes: int, spacing: Sequence[float] | None, dims: int
) -> ModelConfig:
    """The network for ``config``: down-sampling shaped by the spacing's anisotropy, filters in voxels of it."""
    pool_factors, conv_kernels = plan_network(spacing, config.depth, dims)
    conv_kernels = ((1,) * dims, *conv_kernels[1:])  # the full-resolution level is per-voxel, on the filter features
    return ModelConfig(
        spatial_dims=dims,
        in_channels=channels,
        num_classes=num_classes,
        pool_factors=pool_factors,
        base_channels=config.base_channels,
        norm=config.norm,
        conv_kernels=conv_kernels,
        sigmas=axis_sigmas(config.sigmas, spacing, dims),
        context_sigmas=axis_sigmas(config.context_sigmas, spacing, dims) if config.sigmas else (),
        widths=None if config.channel_growth is None else tuple(
            int(round(config.base_channels * config.channel_growth**level)) for level in range(config.depth + 1)
        ),
        voxel_head_width=config.voxel_head_width if config.sigmas else 0,
        filter_hessian=config.filter_hessian,
    )


def painted_on_few_z_planes(annotations: Sequence[np.ndarray]) -> bool:
    """True when the annotations lie on at most half of their Z planes (a few painted slices)."""
    painted = [np.asarray(a).reshape(a.shape[0], -1).max(axis=1) > 0 for a in annotations]
    return sum(int(p.sum()) for p in painted) <= 0.5 * sum(len(p) for p in painted)


def training_patch_size(
    config: TrainConfig, model_config: ModelConfig, annotations: Sequence[np.ndarray], spacing: Sequence[float] | None
) -> tuple[int, ...]:
    """The configured patch (checked), or one chosen from the annotated volumes' shapes and spacing."""
    multiple = model_config.size_multiple()
    if config.patch_size is not None:
        return check_network_size("patch size", config.patch_size, multiple)
    shapes = [a.shape for a in annotations]
    budget = config.patch_voxels if len(multiple) == 3 else int(round(config.patch_voxels ** (2 / 3))) * 16
    depth = config.plane_patch_depth
    if depth and len(multiple) == 3 and painted_on_few_z_planes(annotations):
        # Thin along Z, wide in-plane: most computed voxels lie on the painted plane and carry a loss.
        depth = int(math.ceil(depth / multiple[0]) * multiple[0])
        in_plane = None if spacing is None else spacing[1:]
        plane = choose_patch_size([s[1:] for s in shapes], multiple[1:], in_plane, budget // depth)
        return (depth, *plane)
    return choose_patch_size(shapes, multiple, spacing, budget)
