"""A trained model and its one-file checkpoint.

The file holds weights, settings, normalisation, class values and names,
channel names, spacing, the training curves and the package version.  Files
written before channel names and curves existed load with generic channel
names ("channel 1", ...) and no curves.  It is read with ``weights_only=True``, so
loading a file never runs pickled code.
"""

from __future__ import annotations

import copy
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .errors import CheckpointError, ConfigError
from .files import atomic_file
from .data import Normalization, label_lut
from .network.model import build_model

FORMAT = "napari-sparse-unet"
FORMAT_VERSION = 1
# This plugin's checkpoint inside a bioimage.io package it exported (see bioimageio/export.py).
PACKAGE_CHECKPOINT = "napari_sparse_unet_model.pt"
_PACKAGE_DESCRIPTIONS = ("rdf.yaml", "bioimageio.yaml")


def generic_channel_names(count: int) -> tuple[str, ...]:
    """"channel 1", "channel 2", ...: the names of channels nobody named."""
    return tuple(f"channel {i + 1}" for i in range(count))


def _package_version() -> str:
    from .. import __version__

    return __version__


@dataclass
class SegmentationModel:
    """A trained network with everything needed to use it on new images.

    Attributes:
        network: U-Net on the CPU in eval mode; (N, C, *spatial) -> logits (N, K, *spatial).
        class_values: annotation value of each network class; ``class_values[0] == 1`` (background).
        spacing: voxel spacing the model was trained at, in array order, if known.
        patch_size: spatial training patch.
        channel_names: name of each input channel, in order (the image layers or
            files it was trained on); generic names when unknown.
        curves: training curves, :meth:`.curves.TrainingCurves.to_dict` columns ({} when none).
    """

    network: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    normalization: Normalization
    class_values: tuple[int, ...]
    class_names: tuple[str, ...] = ()
    spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] = ()
    version: str = field(default_factory=_package_version)
    history: dict[str, Any] = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()
    curves: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.channel_names) != self.model_config.in_channels:
            self.channel_names = generic_channel_names(self.model_config.in_channels)

    @property
    def spatial_dims(self) -> int:
        return self.model_config.spatial_dims

    @property
    def in_channels(self) -> int:
        return self.model_config.in_channels

    @property
    def num_classes(self) -> int:
        return self.model_config.num_classes

    def output_lut(self) -> np.ndarray:
        """Network class index -> output label value (background -> 0)."""
        return label_lut(self.class_values)

    def copy(self) -> "SegmentationModel":
        """An independent copy (the network's weights are cloned)."""
        return copy.deepcopy(self)

    def describe(self) -> str:
        """A few human-readable lines: classes, architecture, training settings."""
        names = self.class_names or tuple(f"class {v}" for v in self.class_values)
        classes = ", ".join(f"{v}: {n}" for v, n in zip(self.class_values, names))
        cfg, tc = self.model_config, self.train_config
        lines = [
            f"classes {classes}",
            f"{cfg.spatial_dims}-D U-Net, {cfg.in_channels} input channel(s) ({', '.join(self.channel_names)}), depth {cfg.depth}, "
            f"base width {cfg.base_channels}, {cfg.norm} norm",
            f"patch {'×'.join(map(str, self.patch_size))}, spacing {self.spacing or 'isotropic'}",
        ]
        steps = self.history.get("steps")
        if steps is not None:
            lines.append(f"trained {steps} steps in {self.history.get('seconds', 0):.0f} s, lr {tc.learning_rate:g}")
        return "\n".join(lines)

    def to_payload(self) -> dict[str, Any]:
        """Plain dict of tensors and built-in types (safe for ``weights_only`` loading)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "normalization": self.normalization.to_dict(),
            "class_values": [int(v) for v in self.class_values],
            "class_names": list(self.class_names),
            "spacing": None if self.spacing is None else [float(s) for s in self.spacing],
            "patch_size": [int(p) for p in self.patch_size],
            "history": dict(self.history),
            "channel_names": list(self.channel_names),
            "curves": {name: [float(v) for v in values] for name, values in self.curves.items()},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the checkpoint atomically: a crash never leaves half a file at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temporary:
            torch.save(self.to_payload(), temporary)

    @classmethod
    def from_payload(cls, payload: Any, source: str = "checkpoint") -> "SegmentationModel":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a napari-sparse-unet model file")
        if int(payload.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} was written by a newer napari-sparse-unet ({payload.get('version')}); please upgrade"
            )
        try:
            model_config = ModelConfig.from_dict(payload["model_config"])
            network = build_model(model_config)
            network.load_state_dict(payload["state_dict"])
            network.eval()
            return cls(
                network=network,
                model_config=model_config,
                train_config=TrainConfig.from_dict(payload["train_config"]),
                normalization=Normalization.from_dict(payload["normalization"]),
                class_values=tuple(int(v) for v in payload["class_values"]),
                class_names=tuple(str(n) for n in payload.get("class_names", ())),
                spacing=None if payload.get("spacing") is None else tuple(float(s) for s in payload["spacing"]),
                patch_size=tuple(int(p) for p in payload.get("patch_size", ())),
                version=str(payload.get("version", "unknown")),
                history=dict(payload.get("history", {})),
                channel_names=tuple(str(n) for n in payload.get("channel_names", ())),
                curves={str(k): [float(v) for v in values] for k, values in dict(payload.get("curves", {})).items()},
            )
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as error:
            raise CheckpointError(f"{source} is damaged or incomplete: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SegmentationModel":
        """Read a checkpoint, or a bioimage.io package this plugin exported; raises :class:`CheckpointError` with a clear message."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file {str(path)!r} does not exist")
        source: Any = _packaged_checkpoint(path) or path
        try:
            payload = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for a corrupt or foreign file
            raise CheckpointError(f"model file {str(path)!r} cannot be read ({type(error).__name__}); it is corrupt or not a model file") from None
        return cls.from_payload(payload, source=f"model file {str(path)!r}")


def _packaged_checkpoint(path: Path) -> io.BytesIO | None:
    """The checkpoint attached to a bioimage.io package (a zip holding rdf.yaml); None for other files.

    A torch checkpoint is a zip too, but never holds a bioimage.io description.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not names.intersection(_PACKAGE_DESCRIPTIONS):
                return None
            if PACKAGE_CHECKPOINT not in names:
                raise CheckpointError(
                    f"model file {str(path)!r} is a bioimage.io package not exported by napari-sparse-unet "
                    f"(it holds no {PACKAGE_CHECKPOINT}); run it with a bioimage.io consumer such as bioimageio.core"
                )
            return io.BytesIO(archive.read(PACKAGE_CHECKPOINT))
    except (zipfile.BadZipFile, OSError):
        return None


def load_network(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, Normalization]:
    """The torch network (CPU, eval) and its input normalisation, for use with other tools.

    Feed it ``normalization.apply(image_cf)`` as (N, C, *spatial) float32; its
    spatial size must be a multiple of ``network.config.size_multiple()``.
    """
    model = SegmentationModel.load(path)
    return model.network, model.normalization
