"""napari stays smooth while the widget trains and predicts: the event loop never stalls for long.

A 5 ms timer runs in a real napari window (virtual display) from before the
Train click while the widget trains on the generated sample (40×128×128, CPU
preset, previews on) and then predicts it, until the prediction is shown.  Every
gap between two ticks is a stall of the main thread: work done on it, or a
wait for the GIL (a 20 ms timer would add up to 20 ms of its own phase to it).  On a machine shared with other work, the operating system
also keeps our threads waiting; Linux counts that per thread as run-queue time
(/proc/self/task/*/schedstat), and a gap is charged only with what is left
after the longest such wait of any of our threads during it.
"""

from __future__ import annotations

import glob
import json
import os
import time

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TRAIN_SECONDS = 10
# The timer's period, ms: a gap between ticks overstates a stall by up to this much.
TICK_MS = 5
PREVIEW_SECONDS = 2.0
LIMIT = 0.1  # the longest stall allowed from the first training step until the prediction is shown, seconds
# The longest allowed between the Train click and the first step.  The click's own work is
# spread over event-loop turns (JobRunner.start); the longest left is napari adding the new
# prediction layer, 0.03-0.05 s with its repaint (the layer is added hidden, without its
# painting overlays and without becoming the active one: see TrainingFlow).
SETUP_LIMIT = 0.1
RESULTS = os.environ.get("SPARSE_UNET_STALL_RESULTS")  # optional JSON file for the figures


def _run_queue_waits() -> dict[str, int]:
    """Nanoseconds each thread of this process has waited on a run queue so far (Linux)."""
    waits = {}
    for path in glob.glob("/proc/self/task/*/schedstat"):
        try:
            with open(path) as f:
                waits[path] = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile
            pass
    return waits


def test_event_loop_never_stalls_while_training_on_the_sample(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt, QTimer

    from napari_sparse_unet._layers import PREDICTION_KEY
    from napari_sparse_unet._qt.widget import SparseUNetWidget
    from napari_sparse_unet._sample_data import make_sample_data

    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in make_sample_data():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = SparseUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sparse U-Net")
    qtbot.waitUntil(lambda: widget.devices is not None, timeout=180_000)
    training = widget.training
    training.preset_combo.setCurrentIndex(training.preset_combo.findData("cpu"))
    training.time_spin.setValue(TRAIN_SECONDS)
    training.preview_spin.setValue(PREVIEW_SECONDS)
    training.device_combo.setCurrentIndex(training.device_combo.findData("cpu"))
    viewer.dims.set_current_step(0, 21)  # an unpainted slice, so previews show something new
    qtbot.wait(500)

    ticks: list[tuple[float, dict[str, int]]] = []
    statuses: set[str] = set()  # what the status line said while training (a preview says so)

    def tick() -> None:
        ticks.append((time.perf_counter(), _run_queue_waits()))
        statuses.add(widget.progress.status_label.text())

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    qtbot.wait(200)
    clicked = time.perf_counter()
    active = viewer.layers.selection.active
    training.train_button.click()
    click_seconds = time.perf_counter() - clicked
    qtbot.waitUntil(lambda: "step" in widget.progress.loss_label.text(), timeout=60_000)
    first_step = time.perf_counter()
    assert viewer.layers.selection.active is active  # the annotation stays the layer being painted
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    finished = time.perf_counter()
    qtbot.wait(200)
    predict_clicked = time.perf_counter()
    widget.prediction.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    predicted = time.perf_counter()
    qtbot.wait(200)
    timer.stop()

    def ticks_in(start: float, stop: float) -> list[tuple[float, dict[str, int]]]:
        return [(t, w) for t, w in ticks if start <= t <= stop + 0.2]

    def stalls(start: float, stop: float) -> tuple[float, float]:
        """(longest gap, longest gap less the longest run-queue wait in it) between ticks in [start, stop]."""
        window = ticks_in(start, stop)
        raw, charged = 0.0, 0.0
        for (t0, w0), (t1, w1) in zip(window, window[1:]):
            waited = max((w1[k] - w0[k] for k in w1.keys() & w0.keys()), default=0) / 1e9
            raw, charged = max(raw, t1 - t0), max(charged, t1 - t0 - waited)
        return raw, charged

    def longest(start: float, stop: float, count: int = 3) -> list[tuple[float, float]]:
        """The ``count`` longest gaps in [start, stop] as (seconds after the click, gap), to tell stalls apart."""
        times = [t for t, _ in ticks_in(start, stop)]
        gaps = sorted(zip(times, times[1:]), key=lambda pair: pair[0] - pair[1])[:count]
        return [(round(t0 - clicked, 3), round(t1 - t0, 3)) for t0, t1 in gaps]

    training_raw, training_charged = stalls(first_step, finished)
    setup_raw, setup_charged = stalls(clicked - 0.05, first_step)
    predict_raw, predict_charged = stalls(predict_clicked - 0.05, predicted)
    after_raw, after_charged = stalls(first_step, predicted)
    # A preview shown at any time; early ones may rightly be all background.
    previews = any("preview at step" in text for text in statuses)
    figures = {
        "train_seconds": round(finished - first_step, 1),
        "steps": widget.model.history.get("steps") if widget.model else None,
        "click_handler_s": round(click_seconds, 3),
        "setup_longest_gap_s": round(setup_raw, 3),
        "setup_longest_gap_less_run_queue_s": round(setup_charged, 3),
        "training_longest_gap_s": round(training_raw, 3),
        "training_longest_gap_less_run_queue_s": round(training_charged, 3),
        "predict_seconds": round(predicted - predict_clicked, 1),
        "predict_longest_gap_s": round(predict_raw, 3),
        "predict_longest_gap_less_run_queue_s": round(predict_charged, 3),
        "first_step_to_prediction_longest_gap_s": round(after_raw, 3),
        "first_step_to_prediction_longest_gap_less_run_queue_s": round(after_charged, 3),
        "setup_longest_gaps_at": longest(clicked - 0.05, first_step),
        "training_longest_gaps_at": longest(first_step, finished),
        "predict_longest_gaps_at": longest(predict_clicked - 0.05, predicted),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,  # Unix only
        "previews_shown": bool(previews),
    }
    print(json.dumps(figures))
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(figures) + "\n")
    widget.shutdown()
    assert widget.model is not None and previews
    assert any(PREDICTION_KEY in layer.metadata for layer in viewer.layers)
    assert widget.progress.status_label.text().startswith("Predicted"), widget.progress.status_label.text()
    # The timer runs from before the Train click (its set-up counts) until the prediction is shown.
    assert setup_charged < SETUP_LIMIT, f"the event loop stalled while training was set up: {figures}"
    assert after_charged < LIMIT, f"the event loop stalled while training or predicting: {figures}"
