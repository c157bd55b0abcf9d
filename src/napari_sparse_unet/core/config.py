"""Typed, frozen settings for training and prediction.

Settings are validated once, when they are made, and saved as JSON inside each
checkpoint.  Change one with :func:`dataclasses.replace`, never in place.
Spatial tuples are in array order: (Z, Y, X) for volumes, (Y, X) for images.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .rules import check_device_name

if TYPE_CHECKING:
    from .network.filters import FilterBank

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

    ``filter_hessian`` adds the Hessian eigenvalues to the filter bank's
    features (:class:`.filters.FilterBank`) and ``context_sigmas`` its
    smoothing-only scales; checkpoints from before each was an option load without it.

    ``voxel_head_width`` is the hidden width of a per-voxel classifier on the filter
    features whose probabilities multiply the U-Net's (:mod:`.voxel_head`); 0: none.
    """

    spatial_dims: int
    in_channels: int
    num_classes: int
    pool_factors: tuple[tuple[int, ...], ...]
    base_channels: int = 16
    norm: Norm = "batch"
    conv_kernels: tuple[tuple[int, ...], ...] | None = None
    sigmas: tuple[tuple[float, ...], ...] = ()
    widths: tuple[int, ...] | None = None
    voxel_head_width: int = 0
    filter_hessian: bool = False
    context_sigmas: tuple[tuple[float, ...], ...] = ()

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
        if self.widths is not None:
            widths = tuple(int(w) for w in self.widths)
            _check(len(widths) == len(factors) + 1 and min(widths) >= 1, f"widths must hold {len(factors) + 1} positive channel counts, got {self.widths!r}")
            object.__setattr__(self, "widths", widths)
        for name in ("sigmas", "context_sigmas"):
            sigmas = tuple(tuple(float(v) for v in level) for level in getattr(self, name))
            _check(
                all(len(level) == self.spatial_dims and all(v >= 0 for v in level) for level in sigmas),
                f"{name} must hold {self.spatial_dims} non-negative values per scale, got {getattr(self, name)!r}",
            )
            object.__setattr__(self, name, sigmas)
        sigmas = self.sigmas
        _check(not self.context_sigmas or bool(sigmas), "context_sigmas need the filter bank (sigmas)")
        _check(self.voxel_head_width >= 0, f"voxel_head_width must be >= 0, got {self.voxel_head_width}")
        _check(not self.voxel_head_width or bool(sigmas), "a voxel head needs the filter bank (sigmas)")

    @property
    def input_halo(self) -> tuple[int, ...]:
        """Voxels of context the network reads beyond its output on each side, per axis (the filter bank's)."""
        from .network.filters import filter_halo

        return filter_halo(self.sigmas, self.spatial_dims, context_sigmas=self.context_sigmas)

    def filter_bank(self) -> "FilterBank | None":
        """The fixed filter bank these settings describe; None without one."""
        from .network.filters import FilterBank

        if not self.sigmas:
            return None
        return FilterBank(self.sigmas, self.spatial_dims, hessian=self.filter_hessian, context_sigmas=self.context_sigmas)

    @property
    def depth(self) -> int:
        return len(self.pool_factors)

    def level_widths(self) -> tuple[tuple[int, int], ...]:
        """(middle, output) channels of each level's two convolutions, the bottom last.

        Çiçek et al. double the channels before each down-sampling (``b·2^i``
        then ``b·2^(i+1)``); ``widths`` sets each level's channels instead.
        """
        if self.widths is None:
            return tuple((self.base_channels * 2**i, self.base_channels * 2 ** (i + 1)) for i in range(self.depth + 1))
        return tuple((w, w) for w in self.widths)

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
        data = _renamed(data, RENAMED_MODEL_SETTINGS)
        # Structure-tensor features were an experiment that lost (benchmarks/RESULTS.md); models without them load.
        if data.pop("filter_structure_tensor", False):
            raise ConfigError("this model was made with structure-tensor features, which this version no longer computes")
        data["pool_factors"] = tuple(tuple(level) for level in data["pool_factors"])
        if data.get("conv_kernels") is not None:
            data["conv_kernels"] = tuple(tuple(level) for level in data["conv_kernels"])
        # Models saved before the filter bank existed have none.
        for name in ("sigmas", "context_sigmas"):
            data[name] = tuple(tuple(level) for level in data.get(name, ()))
        if data.get("widths") is not None:
            data["widths"] = tuple(data["widths"])
        return cls(**data)


# Old names of settings, as checkpoints saved before issue 23 hold them -> today's.
RENAMED_MODEL_SETTINGS = {"filter_sigmas": "sigmas", "voxel_head": "voxel_head_width"}
RENAMED_TRAIN_SETTINGS = {"filter_scales": "sigmas", "context_scales": "context_sigmas", "voxel_head": "voxel_head_width"}


def _renamed(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """``data`` with its old setting names replaced by today's."""
    return {names.get(key, key): value for key, value in data.items()}


# Settings of experiments that lost and left the product (their figures: benchmarks/RESULTS.md,
# "Settings that left the product").  Checkpoints saved with them load; the names are dropped.
REMOVED_TRAIN_SETTINGS = frozenset(
    {"filter_structure_tensor", "voxel_swap", "average_weights", "top_kernel", "max_class_weight", "elastic"}
)


@dataclass(frozen=True)
class TrainConfig:
    """How to train.  ``None`` for a shape means "choose from the data".

    Training stops at ``max_steps`` or after ``max_time`` seconds, whichever comes first;
    ``patch_size`` is spatial only, (Z, Y, X) or (Y, X).  The defaults are the engine whose
    accuracy ``benchmarks/RESULTS.md`` reports, made to learn from a few painted slices: a fixed
    Gaussian filter bank as the first layer (``sigmas``, ``context_sigmas``,
    ``filter_hessian``), histogram-equalised input, batch norm re-estimated at the end, thin
    patches around painted planes, a per-voxel top level with ``channel_growth`` widths, and a
    per-voxel classifier (``voxel_head_width``) whose probabilities multiply the U-Net's.
    ``mixed_precision`` autocasts on CUDA; CPU training stays float32 (:mod:`.device`).
    """

    max_steps: int = 400
    max_time: float | None = None
    patch_size: tuple[int, ...] | None = None
    patch_voxels: int = 40**3
    batch_size: int = 2
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    depth: int = 3
    base_channels: int = 16
    channel_growth: float | None = 1.5
    norm: Norm = "batch"
    recalibrate_norm: bool = True
    sigmas: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0)
    filter_hessian: bool = True
    context_sigmas: tuple[float, ...] = (10.0, 20.0)
    equalize: bool = True
    plane_patch_depth: int = 8
    voxel_head_width: int = 64
    voxel_batch: int = 8192
    voxel_warmup: float = 0.1  # the voxel head trains alone for this share of the budget
    dice_weight: float = 1.0
    augment: bool = True
    intensity_augment: float = 0.3
    validation: bool = False
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
        object.__setattr__(self, "sigmas", tuple(float(v) for v in self.sigmas))
        _check(all(v > 0 for v in self.sigmas), f"sigmas must be > 0, got {self.sigmas!r}")
        object.__setattr__(self, "context_sigmas", tuple(float(v) for v in self.context_sigmas))
        _check(all(v > 0 for v in self.context_sigmas), f"context_sigmas must be > 0, got {self.context_sigmas!r}")
        _check(self.channel_growth is None or self.channel_growth >= 1, f"channel_growth must be >= 1, got {self.channel_growth}")
        _check(self.plane_patch_depth >= 0, f"plane_patch_depth must be >= 0, got {self.plane_patch_depth}")
        _check(self.voxel_head_width >= 0, f"voxel_head_width must be >= 0, got {self.voxel_head_width}")
        _check(self.voxel_batch >= 1, f"voxel_batch must be >= 1, got {self.voxel_batch}")
        _check(0 <= self.voxel_warmup < 1, f"voxel_warmup must be in [0, 1), got {self.voxel_warmup}")
        _check(self.intensity_augment >= 0, f"intensity_augment must be >= 0, got {self.intensity_augment}")
        _check(self.dice_weight >= 0, f"dice_weight must be >= 0, got {self.dice_weight}")
        _check(self.validate_every >= 1, f"validate_every must be >= 1, got {self.validate_every}")
        check_device_name(self.device)
        _check(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Settings saved in a checkpoint; those of experiments that left (:data:`REMOVED_TRAIN_SETTINGS`) are dropped."""
        data = {k: v for k, v in _renamed(data, RENAMED_TRAIN_SETTINGS).items() if k not in REMOVED_TRAIN_SETTINGS}
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}: saved by a newer napari-sparse-unet?")
        return cls(**data)

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


# A few named presets beat twenty knobs.  The CPU preset is the shipped default,
# sized for 3 minutes on a 2-core laptop CPU (benchmarks/sparse_accuracy.py).  The
# GPU presets are the same engine (filter bank, voxel head, per-voxel top level,
# 1.5x widths) with a bigger budget: longer, larger patches, a deeper and wider U-Net.
PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(max_steps=10_000, max_time=180.0),
    "gpu-small": TrainConfig(
        max_steps=10_000, max_time=300.0, patch_voxels=96**3, batch_size=2, base_channels=16, depth=4, plane_patch_depth=16,
    ),
    "gpu-large": TrainConfig(
        max_steps=20_000, max_time=600.0, patch_voxels=128**3, batch_size=4, base_channels=32, depth=4, plane_patch_depth=32,
    ),
}
