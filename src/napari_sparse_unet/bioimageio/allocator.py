"""Freed memory goes back to the system while a package is made (Linux with glibc; elsewhere nothing changes).

glibc gives freed blocks back to the system only from the top of its heaps.
Tracing and testing the packaged network free hundreds of MB of blocks between
long-lived ones, and the next, larger maps are then mapped afresh beside them:
the resident peak counts both.  ``malloc_trim`` also returns the free pages inside
the heaps; called every 0.2 s from a thread, it keeps the peak near what is alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys
import threading
from collections.abc import Iterator

TRIM_INTERVAL = 0.2  # seconds; more often gave the same peak, slower (a trim locks the heap it trims)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 - it must exist
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """Within: free pages are returned to the system every TRIM_INTERVAL seconds."""
    libc = _glibc()
    if libc is None:
        yield
        return
    stop = threading.Event()
    trimmer = threading.Thread(target=_trim_until, args=(libc, stop), name="malloc_trim", daemon=True)
    trimmer.start()
    try:
        yield
    finally:
        stop.set()
        trimmer.join()


def _trim_until(libc: ctypes.CDLL, stop: threading.Event) -> None:
    while not stop.wait(TRIM_INTERVAL):
        libc.malloc_trim(0)
