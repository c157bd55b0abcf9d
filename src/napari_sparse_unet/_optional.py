"""Import a format's library when a file of that format is used, saying how to install it if missing."""

from __future__ import annotations

import importlib
from typing import Any

from .core.errors import VolumeIOError


def import_optional(module: str, fmt: str, install: str | None = None) -> Any:
    """``importlib.import_module(module)``, or a VolumeIOError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = install or f"pip install {module.split('.')[0]}"
        raise VolumeIOError(f"reading or writing {fmt} files needs the '{module.split('.')[0]}' package: {how}") from exc
