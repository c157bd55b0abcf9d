"""Does an exported bioimage.io package run elsewhere as it runs here?  Export time, size, agreement.

A model is trained with the shipped CPU preset (network and filter bank as users get
them, ``--steps`` steps) on the generated sample volume, exported with
``export_model``, then:

* validated with bioimageio.spec (offline) and tested with bioimageio.core's
  ``test_model`` (test input -> test output at several sizes and batch sizes),
* run by bioimageio.core's ``predict`` on the whole volume (it pads by the
  package's halo, mirrored), compared with this plugin's ``predict`` (float32).

The agreement is the share of voxels with the same label; they differ only where
the U-Net's context differs (the consumer pads the whole volume by the halo).

Then, for the memory a laptop has: the same preset trained ``--fine-steps`` steps on a
100³ sample with the fine anisotropic spacing 0.3×0.2×0.2 (the filter bank's σ in voxels,
its halo and so the test input are large) and with isotropic voxels (the largest test input),
and the three models exported by the command line in a child process: wall time and its peak resident memory (the child's own VmHWM).

    python -m benchmarks.bioimageio_export         # ~9 min on 2 cores; needs bioimageio.core
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_summary, write_section

FINE = (0.3, 0.2, 0.2)  # the fine anisotropic spacing
ISOTROPIC = (1.0, 1.0, 1.0)


# The child prints its own high-water mark (VmHWM) at exit: wait4's maxrss would also count this
# process (models trained, GBs resident), whose memory the child holds between its fork and its exec.
REPORT_PEAK = ("import atexit, sys; from napari_sparse_unet.cli import main; atexit.register(lambda: print('VmHWM',"
               " open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)); sys.exit(main(sys.argv[1:]))")


def timed_export(model, image, spacing, folder: Path) -> tuple[float, float]:
    """Seconds and peak resident GB of ``napari-sparse-unet export --no-test`` of ``model`` in a child process (Linux)."""
    import subprocess

    from napari_sparse_unet import io

    model.save(folder / "model.pt")
    io.write_volume(folder / "image.tif", image, spacing=spacing)
    argv = [sys.executable, "-c", REPORT_PEAK, "export", "--model", folder / "model.pt", "--image",
            folder / "image.tif", "--out", folder / "model.zip", "--no-test", "-q"]
    t0 = time.perf_counter()
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr}")
    return seconds, int(done.stderr.split("VmHWM")[-1].split()[0]) * 1024 / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    # At least the package's minimum input (68×152×152 at the sample's spacing): the consumer takes the whole volume.
    parser.add_argument("--shape", type=int, nargs=3, default=(72, 160, 160))
    parser.add_argument("--fine-steps", type=int, default=20)
    parser.add_argument("--fine-shape", type=int, nargs=3, default=(100, 100, 100))
    args = parser.parse_args(argv)

    import torch
    from bioimageio.core import load_model_description
    from bioimageio.core.prediction import predict as consumer_predict

    from napari_sparse_unet._sample_data import CLASS_NAMES, SPACING, make_sample_volume
    from napari_sparse_unet.bioimageio.export import export_model, run_consumer_test
    from napari_sparse_unet.core.config import PRESETS, PredictConfig
    from napari_sparse_unet.core.metrics import dice_per_class, mean_dice
    from napari_sparse_unet.core.prediction.predict import predict
    from napari_sparse_unet.core.training.train import train

    torch.set_num_threads(args.threads)
    image, truth, annotation = make_sample_volume(shape=tuple(args.shape), seed=0)
    names = [CLASS_NAMES[v - 1] for v in np.unique(annotation[annotation > 0])]
    config = dataclasses.replace(PRESETS["cpu"], max_steps=args.steps, max_time=None, device="cpu", num_threads=args.threads)
    t0 = time.perf_counter()
    model = train([image], [annotation], config, spacing=SPACING, class_names=names)
    t_train = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "sample_model.zip"
        t0 = time.perf_counter()
        status = export_model(model, package, image, run_test=False).status
        t_export = time.perf_counter() - t0
        size_mb = os.path.getsize(package) / 2**20
        t0 = time.perf_counter()
        tested = run_consumer_test(package).status
        t_test = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample = consumer_predict(model=load_model_description(package), inputs={"raw": image[None, None].astype(np.float32)})
        probabilities = sample.members["probabilities"].data.values[0]
        t_consumer = time.perf_counter() - t0
    fine_image, _, fine_annotation = make_sample_volume(shape=tuple(args.fine_shape), seed=0)
    fine_names = [CLASS_NAMES[v - 1] for v in np.unique(fine_annotation[fine_annotation > 0])]
    fine = train([fine_image], [fine_annotation], dataclasses.replace(config, max_steps=args.fine_steps), spacing=FINE,
                 class_names=fine_names)
    # Isotropic voxels: the filter bank's halo is as wide along z as across, so the test input is the largest.
    iso = train([fine_image], [fine_annotation], dataclasses.replace(config, max_steps=args.fine_steps), spacing=ISOTROPIC,
                class_names=fine_names)
    exports = []
    models = {"sample": (model, image, SPACING), "fine": (fine, fine_image, FINE), "isotropic": (iso, fine_image, ISOTROPIC)}
    for which, (m, im, spacing) in models.items():
        with tempfile.TemporaryDirectory() as folder:
            load_before = os.getloadavg()[0]
            seconds, peak = timed_export(m, im, spacing, Path(folder))
            exports.append((which, im.shape, spacing, seconds, peak, load_before, os.getloadavg()[0]))
    consumer = model.output_lut()[probabilities.argmax(0)]
    t0 = time.perf_counter()
    ours = predict(model, image, PredictConfig(device="cpu", mixed_precision=False))
    t_ours = time.perf_counter() - t0
    unpainted = annotation == 0
    truth_values = truth.astype(np.int16) + 1
    classes = range(2, len(CLASS_NAMES) + 1)
    dice_ours = mean_dice(dice_per_class(ours, truth_values, classes, where=unpainted))
    dice_consumer = mean_dice(dice_per_class(consumer, truth_values, classes, where=unpainted))
    load = os.getloadavg()[0]
    shape = "×".join(map(str, image.shape))
    markdown = f"""## bioimage.io export (`benchmarks/bioimageio_export.py`)

The generated sample ({shape}, spacing {SPACING}), the CPU preset trained {model.history.get('steps')} steps ({t_train:.0f} s), exported
with `export_model`; bioimageio.core predicts the whole volume from the package alone (mirrored by the package's halo),
this plugin predicts it with its own tiling (float32). Agreement = share of voxels with the same label; Dice = mean
foreground Dice on the unpainted voxels. load = 1-minute load average after the run (2 cores: above 2, timings are inflated).

Machine: {machine_summary()}

| export + spec validation s | zip MB | spec status | bioimageio.core `test_model` s | status | core whole-volume predict s | plugin predict s | label agreement | Dice plugin | Dice core | load |
|---|---|---|---|---|---|---|---|---|---|---|
| {t_export:.1f} | {size_mb:.1f} | {status} | {t_test:.1f} | {tested} | {t_consumer:.1f} | {t_ours:.1f} | {100 * np.mean(consumer == ours):.1f} % | {dice_ours:.3f} | {dice_consumer:.3f} | {load:.1f} |

Export by the command line (`export --no-test`, a child process; threads: torch's choice), time and peak resident memory;
load = 1-minute load before / after:

| model | volume | spacing | export s | peak RSS GB | load |
|---|---|---|---|---|---|
""" + "".join(f"| {w} | {'×'.join(map(str, sh))} | {sp} | {t:.1f} | {p:.2f} | {a:.1f} / {b:.1f} |\n" for w, sh, sp, t, p, a, b in exports)
    print(markdown)
    write_section("bioimageio-export", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
