"""Typed, frozen settings for training and prediction.

Settings are validated once, when they are made, and saved as JSON inside each
checkpoint.  Change one with :func:`dataclasses.replace`, never in place.
Spatial tuples are in array order: (Z, Y, X) for volumes, (Y, X) for images.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .rules import check_device_name

Norm = Literal["instance", "batch"]
Device = Literal["auto", "cpu", "cuda", "mps"]  # rules.DEVICE_NAMES, spelled out for type checkers


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _optional_shape(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = tuple(int(v) for v in value)
    _check(len(shape) in (2, 3), f"{name} must have 2 or 3 values, got {value!r}")
    _check(all(v >= 1 for v in shape), f"{name} values must be >= 1, got {value!r}")
    return shape


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the U-Net (Çiçek et al. 2016).

    ``conv_kernels`` holds the convolution size per level (depth + 1 entries,
    the last for the bottom): 3 everywhere by default; 1 along an axis whose
    voxels are still much coarser than the others at that level (nnU-Net).

    ``pool_factors`` holds one down-sampling factor per level and spatial axis,
    e.g. ``((1, 2, 2), (1, 2, 2), (2, 2, 2))`` for a volume with coarse Z; its
    length is the depth.  An input's spatial size must be a multiple of the
    product of the factors along each axis (:meth:`size_multiple`).
    """

    spatial_dims: int
    in_channels: int
    num_classes: int
    pool_factors: tuple[tuple[int, ...], ...]
    base_channels: int = 16
    norm: Norm = "instance"
    conv_kernels: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        _check(self.spatial_dims in (2, 3), f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        _check(self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}")
        _check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        _check(self.base_channels >= 1, f"base_channels must be >= 1, got {self.base_channels}")
        _check(self.norm in ("instance", "batch"), f"norm must be 'instance' or 'batch', got {self.norm!r}")
        factors = tuple(tuple(int(f) for f in level) for level in self.pool_factors)
        _check(
            all(len(level) == self.spatial_dims and all(f in (1, 2) for f in level) for level in factors),
            f"pool_factors must hold {self.spatial_dims} factors of 1 or 2 per level, got {self.pool_factors!r}",
        )
        object.__setattr__(self, "pool_factors", factors)
        if self.conv_kernels is None:
            kernels = ((3,) * self.spatial_dims,) * (len(factors) + 1)
        else:
            kernels = tuple(tuple(int(k) for k in level) for level in self.conv_kernels)
        _check(
            len(kernels) == len(factors) + 1
            and all(len(level) == self.spatial_dims and all(k in (1, 3) for k in level) for level in kernels),
            f"conv_kernels must hold {len(factors) + 1} levels of {self.spatial_dims} sizes 1 or 3, got {self.conv_kernels!r}",
        )
        object.__setattr__(self, "conv_kernels", kernels)

    @property
    def depth(self) -> int:
        return len(self.pool_factors)

    def size_multiple(self) -> tuple[int, ...]:
        """Per axis, the number every input size must be a multiple of."""
        multiple = [1] * self.spatial_dims
        for level in self.pool_factors:
            multiple = [m * f for m, f in zip(multiple, level)]
        return tuple(multiple)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        data["pool_factors"] = tuple(tuple(level) for level in data["pool_factors"])
        if data.get("conv_kernels") is not None:
            data["conv_kernels"] = tuple(tuple(level) for level in data["conv_kernels"])
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """How to train.  ``None`` for a shape means "choose from the data".

    Training stops at ``max_steps`` or after ``max_time`` seconds, whichever
    comes first.  ``patch_size`` is spatial only, (Z, Y, X) or (Y, X).
    ``mixed_precision`` autocasts on CUDA; CPU training stays float32 (see
    :mod:`.device`), CPU prediction uses bfloat16 where the CPU has it natively.
    """

    max_steps: int = 400
    max_time: float | None = None
    patch_size: tuple[int, ...] | None = None
    patch_voxels: int = 40**3
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    depth: int = 3
    base_channels: int = 8
    norm: Norm = "instance"
    dice_weight: float = 1.0
    max_class_weight: float = 10.0
    augment: bool = True
    elastic: bool = False
    validation: bool = True
    validate_every: int = 50
    seed: int = 0
    device: Device = "auto"
    mixed_precision: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(self.max_time is None or self.max_time > 0, f"max_time must be > 0 seconds, got {self.max_time}")
        object.__setattr__(self, "patch_size", _optional_shape(self.patch_size, "patch_size"))
        _check(self.patch_voxels >= 64, f"patch_voxels must be >= 64, got {self.patch_voxels}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(1 <= self.depth <= 6, f"depth must be between 1 and 6, got {self.depth}")
        _check(self.base_channels >= 1, f"base_channels must be >= 1, got {self.base_channels}")
        _check(self.norm in ("instance", "batch"), f"norm must be 'instance' or 'batch', got {self.norm!r}")
        _check(self.dice_weight >= 0, f"dice_weight must be >= 0, got {self.dice_weight}")
        _check(self.max_class_weight >= 1, f"max_class_weight must be >= 1, got {self.max_class_weight}")
        _check(self.validate_every >= 1, f"validate_every must be >= 1, got {self.validate_every}")
        check_device_name(self.device)
        _check(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class PredictConfig:
    """How to predict a whole volume with overlapping tiles.

    ``overlap`` is a fraction of the model's *training patch*, not of the tile:
    neighbouring tiles share ``overlap`` × patch voxels per axis, the context the
    network was trained with, so big tiles do not pay for a big overlap.
    ``tile_size`` ``None`` picks the tiling that computes the fewest voxels within ``memory_budget_mb``
    (the network is fully convolutional, so it need not equal the training patch).
    """

    overlap: float = 0.25
    tile_size: tuple[int, ...] | None = None
    memory_budget_mb: int = 1024
    batch_size: int = 1
    tta: bool = False
    device: Device = "auto"
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.overlap < 1, f"overlap must be in [0, 1), got {self.overlap}")
        object.__setattr__(self, "tile_size", _optional_shape(self.tile_size, "tile_size"))
        _check(self.memory_budget_mb >= 16, f"memory_budget_mb must be >= 16, got {self.memory_budget_mb}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check_device_name(self.device)


# A few named presets beat twenty knobs.  The CPU preset is sized for a laptop:
# base width 8 and ~40^3-voxel patches train at a few steps per second on 2 cores
# (a base width of 16 costs ~4x more per step for little gain within minutes).
PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(max_steps=10_000, max_time=180.0, patch_voxels=40**3, batch_size=2, base_channels=8, depth=3),
    "gpu-small": TrainConfig(max_steps=10_000, max_time=300.0, patch_voxels=96**3, batch_size=2, base_channels=16, depth=4),
    "gpu-large": TrainConfig(max_steps=20_000, max_time=600.0, patch_voxels=128**3, batch_size=4, base_channels=32, depth=4),
}
