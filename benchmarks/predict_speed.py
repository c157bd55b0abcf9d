"""Whole-volume prediction speed: voxels per second, memory per voxel, time by stage, FLOPs against the machine.

1. The machine's compute limit: a 2048² matrix product in float32 and bfloat16 with the
   benchmark's torch threads.
2. A default-engine model (``PRESETS['cpu']``, 80 steps) trained on the ovule's k = 5
   painted z slices with isotropic spacing, so the filter bank's widest context scale
   reaches 60 voxels along every axis (the costliest case).
3. ``napari-sparse-unet predict`` from the command line, each size in a fresh process, on
   the ovule mirrored to D×512×512 uint8: wall time, voxels per second, peak resident
   memory and its growth per added voxel.
4. One in-process prediction of the smallest size timed by stage (reading and
   normalisation, filter bank, voxel head, U-Net levels, blending, writing), with the
   FLOPs of each stage (torch's counter; the voxel head's table lookups counted by hand)
   and the achieved fraction of the matrix-product rate.

    python -m benchmarks.predict_speed [--depths 64 128] [--threads 2]

Time-budgeted figures need the cores to themselves: run it alone.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import protocol
from benchmarks.report import machine_summary, write_section

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "predict_speed"
SECTION = "predict-speed"

CHILD = """
import resource, sys, time
from napari_sparse_unet.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print("RESULT", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
sys.exit(code or 0)
"""


def matmul_rate(threads: int) -> dict[str, float]:
    """GFLOP/s of a 2048² matrix product, float32 and bfloat16 (autocast), best of 5."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rates = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        best = min(_timed(lambda: x @ y) for _ in range(5))
        rates[name] = 2 * 2048**3 / best / 1e9
    return rates


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def make_model(path: Path, threads: int) -> None:
    from napari_sparse_unet.api import PRESETS, Trainer, run_to_end

    volume = protocol.load_volume("plantseg_ovule")
    annotation = protocol.sparse_annotation(volume.labels, protocol.make_plan(volume.labels.shape, (5, 0, 0)))
    config = dataclasses.replace(PRESETS["cpu"], max_steps=80, max_time=None, num_threads=threads)
    trainer = Trainer([volume.image], [annotation], config, spacing=(1.0, 1.0, 1.0))
    run_to_end(trainer.run()).save(path)


def make_volume(path: Path, depth: int) -> tuple[int, ...]:
    import tifffile

    image = protocol.load_volume("plantseg_ovule").image  # (32, 128, 128) uint8
    reps = [-(-n // s) for n, s in zip((depth, 512, 512), image.shape)]
    big = np.tile(np.concatenate([image, image[::-1]]), (max(1, reps[0] // 2 + 1), reps[1], reps[2]))[:depth, :512, :512]
    tifffile.imwrite(path, np.ascontiguousarray(big))
    return big.shape


def command_line_run(model: Path, image: Path, out: Path, threads: int) -> tuple[float, int]:
    """(seconds inside the command, peak resident bytes) of ``napari-sparse-unet predict`` in a fresh process."""
    args = ["predict", "--model", str(model), "--image", str(image), "--out", str(out), "--threads", str(threads), "-q"]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    seconds, peak = line.split()[1:]
    return float(seconds), int(peak)


def stage_profile(model_path: Path, image_path: Path, threads: int) -> dict:
    """Seconds and FLOPs by stage of one in-process prediction."""
    import tifffile
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_sparse_unet.api import PredictConfig, SegmentationModel
    from napari_sparse_unet.core.prediction import predict, row_features
    from napari_sparse_unet.core.prediction import sliding_window as engine

    torch.set_num_threads(threads)
    model = SegmentationModel.load(model_path)
    image = tifffile.imread(image_path)
    seconds: dict[str, float] = collections.defaultdict(float)
    flops: dict[str, float] = collections.defaultdict(float)

    def timed(key, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            seconds[key] += time.perf_counter() - start
            return result
        return wrapper

    network = model.network
    head = network.voxel_head
    hidden, classes = head.mlp[0].out_features, network.config.num_classes

    def module_hooks(module, key):
        module.register_forward_pre_hook(lambda m, i: setattr(m, "_started", time.perf_counter()))
        module.register_forward_hook(lambda m, i, o: seconds.__setitem__(key, seconds[key] + time.perf_counter() - m._started))

    module_hooks(head, "voxel head")
    unet_parts = [("input normalisation", network.input_norm)]
    unet_parts += [(f"U-Net level {i} (encoder)", m) for i, m in enumerate(network.encoders)]
    unet_parts += [("U-Net bottom", network.bottom)]
    unet_parts += [(f"U-Net level {len(network.decoders) - 1 - i} (decoder + up)", m) for i, m in enumerate(network.decoders)]
    unet_parts += [(f"U-Net level {len(network.ups) - 1 - i} (decoder + up)", m) for i, m in enumerate(network.ups)]
    unet_parts += [("U-Net level 0 (decoder + up)", network.head)]
    for key, module in unet_parts:
        module_hooks(module, key)
    original_read, original_write, original_add = row_features.read_tile, engine._write_slab, engine.SlabStitcher.add
    # Tiles are read by the sliding window, rows of planes by the row features: both count as reading.
    engine.read_tile = row_features.read_tile = timed("reading + normalisation", original_read)
    engine._write_slab = timed("labels out (argmax, writing)", original_write)
    engine.SlabStitcher.add = timed("blending", original_add)
    original_featurizer = engine.Featurizer.__call__
    engine.Featurizer.__call__ = timed("filter bank + voxel head (per row)", original_featurizer)
    try:
        start = time.perf_counter()
        predict.predict(model, image, PredictConfig())
        total = time.perf_counter() - start
    finally:
        engine.read_tile = row_features.read_tile = original_read
        engine._write_slab, engine.SlabStitcher.add = original_write, original_add
        engine.Featurizer.__call__ = original_featurizer
    seconds["filter bank"] = seconds.pop("filter bank + voxel head (per row)") - seconds["voxel head"]
    tile, _ = predict.plan_prediction(model, image.shape, PredictConfig())
    voxels = image.size

    # FLOPs per output voxel: the bank on one row of planes, the U-Net on one tile (torch's counter).
    halo = network.input_halo[0]
    planes = torch.zeros(1, 1, 4 + 2 * halo, 512, 512)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        features = network.filters.planes(planes)
    flops["filter bank"] = counter.get_total_flops() / features[0, 0].numel()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network.eval().experts(torch.zeros(1, features.shape[1], *tile), voxel=torch.zeros(1, classes, *tile))
    flops["U-Net"] = counter.get_total_flops() / np.prod(tile)
    # The head: two table rows of H per feature (multiply-add), then H·H and H·K.
    flops["voxel head"] = 2 * (2 * head.features * hidden + hidden * hidden + hidden * classes)
    return {"total": total, "voxels": voxels, "tile": list(tile), "seconds": dict(seconds), "flops": dict(flops)}


def report(results: dict) -> str:
    rate = results["matmul"]
    precision = results["precision"]
    peak = rate[precision]
    lines = [
        "## Prediction speed (`benchmarks/predict_speed.py`)",
        "",
        f"Machine: {results['machine']}; 1-minute load before / after: {results['load_before']} / {results['load_after']}. "
        f"2048² matrix product: {rate['float32']:.0f} GFLOP/s float32, {rate['bfloat16']:.0f} GFLOP/s bfloat16 "
        f"(the network runs in **{precision}** here). Model: `PRESETS['cpu']`, 80 steps on the ovule's 5 painted z slices "
        "with isotropic spacing (the widest context scale reaches 60 voxels along every axis). Volume: the ovule mirrored to "
        "D×512×512 uint8. Each size is `napari-sparse-unet predict --threads "
        f"{results['threads']}` in a fresh process (seconds inside the command: reading the file, predicting, writing the labels).",
        "",
        "| volume | voxels | seconds | M voxels / s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    runs = results["runs"]
    for run in runs:
        lines.append(f"| {run['depth']}×512×512 | {run['voxels']:,} | {run['seconds']:.1f} | {run['voxels'] / run['seconds'] / 1e6:.2f} | {run['peak'] / 2**20:.0f} |")
    if len(runs) >= 2:
        growth = (runs[-1]["peak"] - runs[0]["peak"]) / (runs[-1]["voxels"] - runs[0]["voxels"])
        lines += ["", f"**Peak memory per added voxel: {growth:.2f} bytes** (the uint8 input and labels are 2)."]
    profile = results["profile"]
    total, voxels = profile["total"], profile["voxels"]
    lines += [
        "",
        f"### By stage ({runs[0]['depth']}×512×512, in process, tile {'×'.join(map(str, profile['tile']))}: {total:.1f} s, "
        f"{voxels / total / 1e6:.2f} M voxels/s)",
        "",
        "FLOPs per output voxel: torch's counter for the filter bank (banded matrix products, their zeros included) and the "
        "U-Net on a tile; the voxel head's table lookups by hand. Achieved = FLOPs × output voxels / seconds, "
        f"against the {precision} matrix rate. The U-Net and the filter bank compute a little more than the volume "
        "(tile overlap, rows of whole tiles); achieved rates count output voxels only.",
        "",
        "| stage | seconds | share | FLOPs / voxel | achieved GFLOP/s | of the matrix rate |",
        "|---|---|---|---|---|---|",
    ]
    groups = collections.defaultdict(float)
    for key, value in profile["seconds"].items():
        groups["U-Net" if key.startswith(("U-Net", "input normalisation")) else key] += value
    order = ["reading + normalisation", "filter bank", "voxel head", "U-Net", "blending", "labels out (argmax, writing)"]
    accounted = 0.0
    for key in order:
        value = groups.get(key, 0.0)
        accounted += value
        f = profile["flops"].get(key)
        achieved = f * voxels / value / 1e9 if f and value else None
        lines.append(
            f"| {key} | {value:.2f} | {value / total:.0%} | {f'{f / 1e3:.1f} k' if f else '–'} | "
            f"{f'{achieved:.1f}' if achieved else '–'} | {f'{achieved / peak:.0%}' if achieved else '–'} |"
        )
    lines.append(f"| other (tile cuts, conversions, softmax, Python) | {total - accounted:.2f} | {(total - accounted) / total:.0%} | | | |")
    unet = sorted((k, v) for k, v in profile["seconds"].items() if k.startswith(("U-Net", "input")))
    lines += ["", "U-Net by level: " + "; ".join(f"{k} {v:.2f} s" for k, v in unet) + "."]
    lines += ["", f"Command: `python -m benchmarks.predict_speed --depths {' '.join(str(r['depth']) for r in runs)} --threads {results['threads']}`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from napari_sparse_unet.core.device import autocast_dtype

    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "iso_ovule.pt"
    if not model.exists():
        make_model(model, args.threads)
    results = {"threads": args.threads, "load_before": round(os.getloadavg()[0], 2), "matmul": matmul_rate(args.threads)}
    torch.set_num_threads(args.threads)
    results["machine"] = machine_summary()
    dtype = autocast_dtype(torch.device("cpu"), True)
    results["precision"] = "float32" if dtype is None else "bfloat16"
    runs = []
    for depth in sorted(args.depths):
        image = WORK / f"ovule_{depth}x512x512.tif"
        shape = make_volume(image, depth)
        seconds, peak = command_line_run(model, image, WORK / f"labels_{depth}.tif", args.threads)
        runs.append({"depth": depth, "voxels": int(np.prod(shape)), "seconds": seconds, "peak": peak})
        print(json.dumps(runs[-1]), flush=True)
    results["runs"] = runs
    results["profile"] = stage_profile(model, WORK / f"ovule_{min(args.depths)}x512x512.tif", args.threads)
    results["load_after"] = round(os.getloadavg()[0], 2)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "predict_speed.json").write_text(json.dumps(results, indent=1))
    markdown = report(results)
    print(markdown)
    write_section(SECTION, markdown)


if __name__ == "__main__":
    main()
