"""Training throughput: steps and voxels per second with 1 thread and with every core.

Usage: python -m benchmarks.train_speed [--steps 20] [--presets cpu gpu-small]

Each configuration runs in a fresh subprocess (torch's thread pool is fixed per
process), trains on the generated sample with the preset's patch and width,
skips the first 3 steps (warm-up) and reports the rest.  Writes the
``train-speed`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from benchmarks.report import machine_summary, write_section

WARMUP = 3


def child(preset: str, steps: int, threads: int) -> dict:
    import torch

    from napari_sparse_unet._sample_data import make_sample_volume
    from napari_sparse_unet.core.config import PRESETS
    from napari_sparse_unet.core.training.train import Trainer

    torch.set_num_threads(threads)
    image, _, annotation = make_sample_volume(seed=0)
    config = dataclasses.replace(PRESETS[preset], max_steps=steps + WARMUP, max_time=None, validation=False)
    trainer = Trainer([image], [annotation], config, spacing=(2.0, 1.0, 1.0))
    times = []
    last = time.perf_counter()
    for _ in trainer.run():
        now = time.perf_counter()
        times.append(now - last)
        last = now
    per_step = sum(times[WARMUP:]) / max(1, len(times) - WARMUP)
    voxels = config.batch_size * int(__import__("math").prod(trainer.patch_size))
    return {"threads": threads, "patch": list(trainer.patch_size), "batch": config.batch_size,
            "seconds_per_step": per_step, "voxels_per_second": voxels / per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=["cpu"], help="presets to time, e.g. cpu gpu-small")
    parser.add_argument("--preset", default="cpu", help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.preset, args.steps, args.child)))
        return
    cores = os.cpu_count() or 1
    rows = []
    for preset in args.presets:
        for threads in sorted({1, cores}):
            command = [sys.executable, "-m", __spec__.name, "--child", str(threads), "--steps", str(args.steps), "--preset", preset]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append({"preset": preset, **json.loads(out.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    lines = [
        "## Training throughput (`benchmarks/train_speed.py`)",
        "",
        f"Presets {', '.join(f'`{p}`' for p in args.presets)} on the generated sample (40×128×128, spacing 2×1×1), "
        f"{args.steps} steps after {WARMUP} warm-up steps, each run in a fresh process. Machine: {machine_summary()}; "
        f"1-minute load average at the end {load:.1f} (2 cores: above 2, other work shared the CPU and the seconds are inflated).",
        "",
        "| preset | threads | patch × batch | s / step | steps / s | voxels / s | speed-up vs 1 thread |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if b["preset"] == r["preset"])["seconds_per_step"]
        lines.append(f"| {r['preset']} | {r['threads']} | {'×'.join(map(str, r['patch']))} × {r['batch']} | "
                     f"{r['seconds_per_step']:.3f} | {1 / r['seconds_per_step']:.2f} | {r['voxels_per_second'] / 1e3:.0f} k | "
                     f"{base / r['seconds_per_step']:.2f}× |")
    write_section("train-speed", "\n".join(lines))


if __name__ == "__main__":
    main()
