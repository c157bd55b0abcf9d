"""Atomic writing: an output appears complete at its path, or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_path_beside(target: Path, directory: bool = False) -> Path:
    """A new, unused path beside ``target`` keeping its suffix (nibabel picks the format by it)."""
    name = target.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else target.suffix
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=target.parent))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    return Path(temp)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    On any failure (an exception, Ctrl-C) the temporary file is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    temp = temporary_path_beside(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
