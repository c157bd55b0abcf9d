"""What the training-curve plot costs the GUI thread, and what recording a step costs the trainer.

Usage: QT_QPA_PLATFORM=offscreen python -m benchmarks.curve_plot_cost [--rows 3998] [--repeats 50]

Fills ``TrainingCurves`` with synthetic steps (the most it holds before
thinning is just under 4000 rows), then times the widget's redraw with a
forced repaint, as its timer does twice a second while training.  Writes the
``curve-plot-cost`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

from benchmarks.report import machine_summary, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3998)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    from qtpy.QtWidgets import QApplication

    app = QApplication([])
    from napari_sparse_unet._qt.curves_plot import REDRAW_MS, CurvesPlot
    from napari_sparse_unet.core.training.curves import TrainingCurves

    curves = TrainingCurves()
    start = time.perf_counter()
    for step in range(1, args.rows + 1):
        curves.add(SimpleNamespace(step=step, loss=1 / step, elapsed=0.1 * step, learning_rate=1e-3,
                                   val_dice=0.5 if step % 50 == 0 else None, fit_dice=0.7))
    add_us = (time.perf_counter() - start) / args.rows * 1e6
    plot = CurvesPlot()
    plot.resize(400, 300)
    plot.follow(curves)
    plot.stop()
    plot.show()
    app.processEvents()
    start = time.perf_counter()
    for _ in range(args.repeats):
        plot.redraw()
        plot._plot.repaint()
        app.processEvents()
    redraw_ms = (time.perf_counter() - start) / args.repeats * 1e3
    load = os.getloadavg()[0]
    table = (
        "## Training-curve plot cost (`benchmarks/curve_plot_cost.py`)\n\n"
        f"Machine: {machine_summary()}; Qt platform {os.environ.get('QT_QPA_PLATFORM', 'default')}; "
        f"1-minute load {load:.1f}.\n\n"
        "| rows | record a step | redraw + repaint | share of the GUI thread (every "
        f"{REDRAW_MS} ms) |\n|---|---|---|---|\n"
        f"| {len(curves)} | {add_us:.1f} µs | {redraw_ms:.1f} ms | {100 * redraw_ms / REDRAW_MS:.1f} % |\n"
    )
    print(table)
    write_section("curve-plot-cost", table)


if __name__ == "__main__":
    main()
