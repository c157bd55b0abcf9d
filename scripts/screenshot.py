"""Make docs/screenshot.png: napari with the Sparse U-Net widget docked, after a real
short training on the generated sample and a whole-volume prediction.

Run it from the repository root under a virtual display big enough for the window
(Xvfb + Mesa):

    xvfb-run -a -s "-screen 0 1600x1400x24" python scripts/screenshot.py

It loads the sample (image and four painted slices), trains for ``--seconds`` with the
default preset while the loss and Dice curves fill, predicts the whole volume, shows an
unpainted slice with the prediction over the image, and prints what it did (steps,
timings) so the picture can be reproduced.  The committed picture came from that command
alone on a 2-core CPU (Intel Xeon, torch 2.13): 1713 steps in 300 s, unpainted slice z = 21.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout: float) -> None:
    """Run the Qt event loop until ``condition()`` holds (the widget works in threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for the widget")
        app.processEvents()
        time.sleep(0.02)


def _status(widget) -> str:
    return widget.progress.status_label.text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "screenshot.png")
    parser.add_argument("--seconds", type=int, default=300, help="training time limit")
    parser.add_argument("--slice", type=int, default=None, help="Z slice to show (default: an unpainted one)")
    parser.add_argument("--size", type=int, nargs=2, default=(1560, 1380), metavar=("W", "H"),
                        help="window size; the dock scrolls when it is shorter than the widget")
    parser.add_argument("--base-channels", type=int, default=None, help="override the preset's network width")
    parser.add_argument("--patch", default=None, help="override the preset's patch, e.g. 16,64,64")
    parser.add_argument("--preview", type=float, default=5.0, help="seconds between live previews (0: off)")
    args = parser.parse_args()

    # A throw-away settings file: the user's napari settings are neither read nor changed,
    # and warning toasts (e.g. the PyQt5 deprecation) stay off the picture.
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp()) / "settings.yaml")
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "error"

    from napari_sparse_unet._sample_data import make_sample_data
    from napari_sparse_unet._qt.widget import SparseUNetWidget

    viewer = napari.Viewer(title="napari-sparse-unet", show=True)
    viewer.window.resize(*args.size)
    app = QApplication.instance()
    for data, kwargs, kind in make_sample_data():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse U-Net", area="right")
    _wait(app, lambda: widget.devices is not None, 60)

    training = widget.training  # the Training panel's fields
    training.time_spin.setValue(args.seconds)
    if args.base_channels:
        training.channels_spin.setValue(args.base_channels)
    if args.patch:
        training.patch_edit.setText(args.patch)
    training.preview_spin.setValue(args.preview)
    start = time.perf_counter()
    if not widget.train():
        raise SystemExit("training was refused: " + _status(widget))
    _wait(app, lambda: not widget.busy, args.seconds + 300)
    print(f"trained: {_status(widget)} ({time.perf_counter() - start:.0f} s, {widget.progress.loss_label.text()})")
    if widget.model is None:
        raise SystemExit("no model")

    start = time.perf_counter()
    widget.predict()
    _wait(app, lambda: not widget.busy, 600)
    print(f"predicted: {_status(widget)} ({time.perf_counter() - start:.0f} s)")

    # Show an unpainted slice: what the network filled in from the painted ones.
    annotation = viewer.layers["annotation"]
    painted = set(np.flatnonzero(annotation.data.reshape(annotation.data.shape[0], -1).any(axis=1)).tolist())
    z = args.slice
    if z is None:
        z = min((i for i in range(annotation.data.shape[0]) if i not in painted), key=lambda i: abs(i - 21))
    viewer.dims.set_current_step(0, z)
    prediction = viewer.layers["prediction"]
    prediction.opacity = 0.55
    prediction.contour = 0
    viewer.layers.selection.active = annotation
    widget.update_stats()
    viewer.reset_view()
    _wait(app, lambda: True, 1)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.output), canvas_only=False)
    print(f"wrote {args.output} (slice z={z})")
    widget.shutdown()
    viewer.close()


if __name__ == "__main__":
    main()
