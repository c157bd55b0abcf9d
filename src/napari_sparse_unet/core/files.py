"""Atomic writing: an output appears complete at its path, or not at all."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, not while other threads write files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

# Windows refuses to replace a file that another process has open for a moment (a virus
# scanner or the search indexer looking at the new file, a viewer reading the old one):
# PermissionError, where POSIX would replace it. Waits between the tries, in seconds.
WINDOWS_REPLACE_WAITS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def replace_path(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace``, tried again for a few seconds where Windows refuses it with PermissionError."""
    waits = WINDOWS_REPLACE_WAITS if sys.platform == "win32" else ()
    for wait in waits:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            time.sleep(wait)
    os.replace(source, target)


def temporary_path_beside(target: Path, directory: bool = False) -> Path:
    """A new, unused path beside ``target`` keeping its suffix (nibabel picks the format by it)."""
    name = target.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else target.suffix
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=target.parent))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the output gets the mode any new file of the user's gets.
    os.chmod(temp, 0o666 & ~_UMASK)
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
        replace_path(temp, target)
    except BaseException:
        # Windows cannot delete a file still open or mapped: the error that matters is the one raised.
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
