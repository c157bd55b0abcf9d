"""Import a format's library when a file of that format is used, saying how to install it if missing."""

from __future__ import annotations

import importlib
from typing import Any

from .core.errors import VolumeIOError, missing_package


def import_optional(module: str, fmt: str, install: str | None = None) -> Any:
    """``importlib.import_module(module)``, or a VolumeIOError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise VolumeIOError(missing_package(f"reading or writing {fmt} files", package, install or f"pip install {package}")) from exc
