"""napari's notifications, imported when first used."""

from __future__ import annotations


def notify(kind: str, message: str) -> None:
    """Show ``message`` as a napari notification of ``kind`` ("error", "info", "warning")."""
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)
