"""Choosing and recognising the named presets of :data:`.config.PRESETS`."""

from __future__ import annotations

import dataclasses

from .config import PRESETS, TrainConfig


def default_preset(device_type: str) -> str:
    """The preset for a device type ("cpu", "cuda", "mps"): the CPU one, else the small GPU one."""
    return "cpu" if device_type == "cpu" else "gpu-small"


def preset_of(config: TrainConfig) -> str | None:
    """Name of the preset ``config`` was made from, ignoring its budget and device; None for custom settings."""

    def essentials(c: TrainConfig) -> TrainConfig:
        return dataclasses.replace(c, max_steps=1, max_time=None, device="auto")

    target = essentials(config)
    return next((name for name, preset in PRESETS.items() if essentials(preset) == target), None)
