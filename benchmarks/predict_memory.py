"""Peak memory of prediction as the volume grows (uint8 EM volumes, D×512×512).

Each size runs in a fresh child process, which builds the project's U-Net
(3-D, 1→3 classes, depth 3, base 16, instance norm, random weights), makes a
uint8 volume from the ISBI 2012 EM stack, predicts it with the default
``PredictConfig`` (labels only, allocated as uint8) and reports its peak RSS.
The slope of peak RSS against voxels is the memory per added voxel: the
input and the labels are 1 byte each, so 2 B/voxel is the floor.

    python -m benchmarks.predict_memory [--depths 32 64 128] [--budget-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def rss_bytes() -> int:
    from benchmarks.report import proc_bytes

    return proc_bytes("/proc/self/status", "VmRSS")


def child(depth: int, budget: int, threads: int) -> None:
    import tifffile
    import torch

    from napari_sparse_unet.core.checkpoint import SegmentationModel
    from napari_sparse_unet.core.config import ModelConfig, PredictConfig, TrainConfig
    from napari_sparse_unet.core.data import Normalization
    from napari_sparse_unet.core.network.model import build_model
    from napari_sparse_unet.core.prediction.predict import plan_prediction, predict

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ModelConfig(3, 1, 3, ((2, 2, 2),) * 3, base_channels=16, norm="instance")
    model = SegmentationModel(
        network=build_model(config).eval(),
        model_config=config,
        train_config=TrainConfig(),
        normalization=Normalization(low=(0.0,), high=(255.0,)),
        class_values=(1, 2, 3),
        patch_size=(48, 48, 48),
    )
    em = tifffile.imread(DATA / "isbi2012_em" / "image.tif")  # (30, 512, 512) uint8
    before_volume = rss_bytes()
    volume = np.empty((depth, *em.shape[1:]), np.uint8)
    for z in range(depth):  # mirrored repeats of the stack, filled in place (no temporaries)
        k, r = divmod(z, em.shape[0])
        volume[z] = em[r if k % 2 == 0 else em.shape[0] - 1 - r]
    del em
    predict_config = PredictConfig(memory_budget_mb=budget, device="cpu")
    tile, _ = plan_prediction(model, volume.shape, predict_config)
    start = time.perf_counter()
    labels = predict(model, volume, predict_config)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    print(json.dumps({"depth": depth, "voxels": int(volume.size), "peak": peak, "before_volume": before_volume,
                      "tile": tile, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--budget-mb", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    runs = []
    for depth in args.depths:
        print(f"depth {depth}...", flush=True)
        out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", str(depth), str(args.budget_mb), str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    voxels = np.array([r["voxels"] for r in runs], float)
    peaks = np.array([r["peak"] for r in runs], float)
    slope = float(np.polyfit(voxels, peaks, 1)[0]) if len(runs) > 1 else float("nan")

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.report import machine_summary, write_section

    lines = [
        "### Prediction peak memory vs volume size",
        "",
        f"Machine: {machine_summary()}.",
        "",
        "Each size in a fresh process: project U-Net (3-D, 1→3 classes, depth 3, base 16, instance norm, random "
        f"weights), uint8 EM volume D×512×512, `predict()` with `PredictConfig(memory_budget_mb={args.budget_mb})`, "
        "labels only (uint8, allocated by `predict`). Peak = `ru_maxrss` of the child.",
        "",
        "| volume | voxels | tile (chosen) | peak RSS MiB | RSS before the volume MiB | peak − before, B/voxel | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['depth']}×512×512 | {r['voxels']:,} | {'×'.join(map(str, r['tile']))} | {r['peak'] / 2**20:.0f} | "
            f"{r['before_volume'] / 2**20:.0f} | {(r['peak'] - r['before_volume']) / r['voxels']:.1f} | {r['seconds']:.0f} |"
        )
    steps = [
        f"{b['depth']}→{a['depth']}: {(a['peak'] - b['peak']) / (a['voxels'] - b['voxels']):.2f} B"
        for b, a in zip(runs, runs[1:])
    ]
    lines += [
        "",
        f"**Peak memory per added voxel (least-squares slope): {slope:.2f} bytes** (target ≤ 8; the uint8 input and "
        f"uint8 labels alone are 2). Between consecutive sizes: {', '.join(steps)}.",
        "Per-class float buffers exist only for one slab of rows along Z (tile depth × 512 × 512), so the rest of "
        "the peak does not grow with depth.",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        write_section("predict-memory", markdown)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
