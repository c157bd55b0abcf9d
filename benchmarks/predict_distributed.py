"""Block-wise prediction on Dask workers against the single-process ``predict``.

A uint8 volume is generated (the plugin's sample volume, mirrored to the size
asked for) and stored as a zarr v3 array in 64×256×256 chunks.  The network is
the default engine (``TrainConfig()``: Gaussian filter bank, histogram
equalisation, batch-norm U-Net with a per-voxel top level and channel growth)
made small enough to predict 256×1024×1024 three times within about six
minutes on 2 CPU cores: base width 4, depth 2, one filter scale (σ = 1) and
no voxel head, about 0.56 CPU µs per voxel.  The CPU preset costs about 9
(its filter scales up to σ = 20 and its voxel head of 64 most of it), and even
a voxel head of 16 costs 0.46 µs more per voxel here.  Blocks reproduce the
single process's tiles whatever the network, so the benchmark measures the
distribution, not the network.  It is trained for a step count on the
sample's four painted slices.  Then, each in a fresh child process:

- ``single``: ``predict`` over the zarr in one process, torch on all cores;
- ``workers N``: ``predict_zarr`` on a LocalCluster of N worker processes, the
  machine's cores shared among them (torch threads per worker = cores / N).

Blocks compute the single process's tiles, so their labels must equal it:
the differing voxels are counted.  Also reported: wall and CPU time, peak RSS
of the process or of each worker, the measured time per block, and the
scheduler's cost per task (empty tasks through the same cluster); from those a
projection for a 1 TB uint8 volume on 100 workers.

    python -m benchmarks.predict_distributed [--shape 256 1024 1024] [--workers 1 2] [--train-steps 60] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


CHUNKS = (64, 256, 256)
# The default engine, small: see the module docstring.
NETWORK = {"base_channels": 4, "depth": 2, "sigmas": (1.0,), "voxel_head_width": 0}


def peak_rss() -> int:
    from benchmarks.report import proc_bytes

    return proc_bytes("/proc/self/status", "VmHWM")


def make_volume(path: Path, shape: tuple[int, ...]) -> None:
    """The sample volume mirrored to ``shape``, uint8, written as zarr v3 in CHUNKS."""
    import zarr

    from napari_sparse_unet._sample_data import make_sample_volume

    image = make_sample_volume(shape=(64, 256, 256), seed=0).image
    image = (image.astype(np.float32) * (255.0 / max(1, int(image.max())))).astype(np.uint8)
    out = zarr.create_array(str(path), shape=shape, chunks=CHUNKS, dtype="uint8", overwrite=True)
    plane = np.pad(image, [(0, 0), (0, shape[1] - 256), (0, shape[2] - 256)], mode="symmetric") if shape[1] > 256 else image[:, : shape[1], : shape[2]]
    for z in range(0, shape[0], 64):
        # Mirror along Z too: slab k is the sample, flipped on odd k.
        slab = plane if (z // 64) % 2 == 0 else plane[::-1]
        out[z : z + 64] = slab[: min(64, shape[0] - z)]
    out.attrs["spacing"] = [2.0, 1.0, 1.0]


def train_model(path: Path, steps: int) -> dict:
    import torch

    from napari_sparse_unet._sample_data import SPACING, make_sample_volume
    from napari_sparse_unet.core.config import TrainConfig
    from napari_sparse_unet.core.training.train import Trainer

    torch.set_num_threads(os.cpu_count() or 1)
    sample = make_sample_volume(shape=(64, 256, 256), seed=0)
    image = (sample.image.astype(np.float32) * (255.0 / max(1, int(sample.image.max())))).astype(np.uint8)
    # A step count, not a time limit: the same network however busy the machine is.
    config = TrainConfig(max_time=None, max_steps=steps, device="cpu", validation=False, **NETWORK)
    trainer = Trainer([image], [sample.annotation], config, spacing=SPACING)
    for _ in trainer.run():
        pass
    model = trainer.best_model
    model.save(path)
    return {"steps": model.history.get("steps"), "seconds": model.history.get("seconds", 0.0), "patch": list(model.patch_size),
            "input_halo": list(model.model_config.input_halo)}


# --------------------------------------------------------------------------- children


def child_single(model_path: str, image: str, out: str, threads: int) -> dict:
    import torch
    import zarr

    from napari_sparse_unet.core.checkpoint import SegmentationModel
    from napari_sparse_unet.core.config import PredictConfig
    from napari_sparse_unet.core.prediction.predict import plan_prediction, predict

    torch.set_num_threads(threads)
    model = SegmentationModel.load(model_path)
    source = zarr.open_array(image, mode="r")
    labels = zarr.create_array(out, shape=source.shape, chunks=CHUNKS, dtype="uint8", overwrite=True)
    config = PredictConfig(device="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    predict(model, source, config, labels_out=labels)
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "peak_rss": [peak_rss()],
            "tile": list(plan_prediction(model, source.shape, config)[0])}


def child_workers(model_path: str, image: str, out: str, workers: int, threads: int) -> dict:
    from napari_sparse_unet.core.prediction.blockwise import BlockPredictor
    from napari_sparse_unet.core.checkpoint import SegmentationModel
    from napari_sparse_unet.core.config import PredictConfig
    from napari_sparse_unet.distributed import local_client, predict_zarr

    model = SegmentationModel.load(model_path)
    predictor = BlockPredictor.from_model(model, PredictConfig(device="cpu"))
    start = time.perf_counter()
    with local_client(workers, threads_per_worker=1, torch_threads=threads) as client:
        started = time.perf_counter() - start
        # Warm each worker (imports) apart: what start-up costs.
        client.run(_warm)
        result = predict_zarr(predictor, image, out, client=client, threads=threads)
        peaks = sorted(client.run(peak_rss).values())
        # Scheduler cost per task: empty tasks, submitted and gathered like the blocks.
        n = 400
        t0 = time.perf_counter()
        client.gather(client.map(_empty, range(n), pure=False))
        per_task = (time.perf_counter() - t0) / n
    planned = predictor.for_volume(result.shape)
    return {
        "wall": result.seconds,
        "startup": started,
        "peak_rss": peaks,
        "block_shape": list(result.block_shape),
        "blocks": result.blocks_total,
        "work_ratio": planned.work(result.block_shape) / float(np.prod(result.shape)),
        "halo": list(result.halo),
        "block_seconds": [r.seconds for r in result.results],
        "cpu": sum(r.cpu_seconds for r in result.results),
        "scheduler_per_task": per_task,
    }


def _warm() -> None:
    import napari_sparse_unet.core.prediction.predict  # noqa: F401 - torch and the package, imported once per worker


def _empty(i: int) -> int:
    return i


def run_child(*args: object) -> dict:
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def project(block_core_seconds: float, block_voxels: int, per_task: float, workers: int = 100, size: float = 1e12) -> dict:
    """1 TB uint8 on ``workers`` single-core workers, at the measured core-seconds per block
    (straddling tiles included) of blocks of ``block_voxels``, and the measured scheduler cost per task."""
    tasks = size / block_voxels
    compute = tasks * block_core_seconds / workers
    scheduler = tasks * per_task  # one scheduler, serial
    return {"tasks": tasks, "hours": (compute + scheduler) / 3600, "scheduler_share": scheduler / (compute + scheduler)}


def differing(a_path: Path, b_path: Path) -> int:
    """Voxels whose labels differ between two zarr arrays, slab by slab."""
    import zarr

    a, b = zarr.open_array(str(a_path), mode="r"), zarr.open_array(str(b_path), mode="r")
    return sum(int((a[z : z + 64] != b[z : z + 64]).sum()) for z in range(0, a.shape[0], 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 1024, 1024))
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path("/tmp/predict_distributed"))
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, model, image, out, n, *rest = args.child
        result = child_single(model, image, out, int(n)) if kind == "single" else child_workers(model, image, out, int(n), int(rest[0]))
        print(json.dumps(result))
        return

    import zarr

    from benchmarks.report import machine_summary, write_section

    started = time.perf_counter()
    cores = os.cpu_count() or 1
    args.work.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    load_start = os.getloadavg()
    image = args.work / "image.zarr"
    make_volume(image, shape)
    print(f"volume {shape} written in {time.perf_counter() - started:.1f} s", flush=True)
    model = args.work / "model.pt"
    trained = train_model(model, args.train_steps)
    print(f"trained {trained}", flush=True)

    runs = {"single": run_child("single", model, image, args.work / "single.zarr", cores)}
    print("single", runs["single"], flush=True)
    for n in args.workers:
        shutil.rmtree(args.work / f"workers{n}.zarr", ignore_errors=True)
        runs[n] = run_child("workers", model, image, args.work / f"workers{n}.zarr", n, max(1, cores // n))
        print(n, {k: v for k, v in runs[n].items() if k != "block_seconds"}, flush=True)
    load_end = os.getloadavg()

    single = zarr.open_array(str(args.work / "single.zarr"), mode="r")
    classes = np.unique(single[::4, ::8, ::8], return_counts=True)
    mix = ", ".join(f"{int(v)}: {100 * c / classes[1].sum():.0f} %" for v, c in zip(*classes))
    voxels = int(np.prod(shape))
    rows, projections = [], []
    for n in args.workers:
        r = runs[n]
        threads = max(1, cores // n)
        wrong = differing(args.work / f"workers{n}.zarr", args.work / "single.zarr")
        rows.append(
            f"| {n} × {threads} | {r['wall']:.1f} | {r['wall'] / runs['single']['wall'] - 1:+.0%} | "
            f"{r['cpu']:.1f} ({r['cpu'] / runs['single']['cpu'] - 1:+.0%}) | {r['startup']:.1f} | "
            f"{' / '.join(f'{p / 2**20:.0f}' for p in r['peak_rss'])} | {'×'.join(map(str, r['block_shape']))} ({r['blocks']}) | "
            f"{r['work_ratio']:.3f} | {np.mean(r['block_seconds']):.1f} | {1e3 * r['scheduler_per_task']:.1f} | "
            f"{wrong} ({100 * (1 - wrong / voxels):.4f} % equal) |"
        )
        block_voxels = int(np.prod(r["block_shape"]))
        projections.append((n, block_voxels, project(np.mean(r["block_seconds"]) * threads, block_voxels, r["scheduler_per_task"])))
    s = runs["single"]
    lines = [
        "## Block-wise prediction on Dask workers (`predict_distributed.py`)",
        "",
        f"Machine: {machine_summary()}. Load average (1/5/15 min) at the start {[round(x, 2) for x in load_start]}, "
        f"at the end {[round(x, 2) for x in load_end]}. Whole script: {time.perf_counter() - started:.0f} s.",
        "",
        f"Volume: the generated sample mirrored to {'×'.join(map(str, shape))} uint8 ({voxels / 1e6:.0f} M voxels), zarr v3, "
        f"chunks {'×'.join(map(str, CHUNKS))}. Network: the default engine made small (base width 4, depth 2, one filter "
        f"scale σ = 1, no voxel head; input halo {'×'.join(map(str, trained['input_halo']))}), trained for {trained['steps']} "
        f"steps ({trained['seconds']:.0f} s, patch {'×'.join(map(str, trained['patch']))}) on the sample's four painted "
        f"slices; predicted classes (value: share) {mix}. Prediction settings are the defaults (overlap 0.25 of the patch, "
        "1 GB tile budget, bfloat16 where the CPU has it).",
        "",
        f"Single process (`predict`, torch {cores} threads, tile {'×'.join(map(str, s['tile']))}): **{s['wall']:.1f} s** "
        f"({s['cpu']:.1f} CPU s), peak RSS {s['peak_rss'][0] / 2**20:.0f} MB.",
        "",
        "Each block computes the single process's tiles that cover it (a tile straddling a block border is computed "
        "by both blocks: 'tile voxels / volume'), so its labels must equal the single process's.",
        "",
        "| workers × torch threads | wall s | vs single | CPU s in blocks (vs single) | cluster start s | peak RSS per worker MB | block (count) | tile voxels / volume | s per block | scheduler ms per task | voxels differing from single process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Peak memory per worker does not grow with the volume a worker predicts: it is set by the 1 GB tile budget and "
        "the block (at most 128 M voxels), compare the worker that predicted every block with those that shared them.",
        "",
        "Projection for a 1 TB uint8 volume on 100 single-core workers, from the measured core-seconds per block (blocks "
        "of the size chosen here, straddling tiles included) and the measured scheduler cost per task:",
        "",
        "| from the run with | block voxels | tasks | hours | scheduler share | read from storage | between workers |",
        "|---|---|---|---|---|---|---|",
        *[f"| {n} worker(s) | {v / 2**20:.0f} M | {p['tasks']:.0f} | {p['hours']:.1f} | {100 * p['scheduler_share']:.4f} % | "
          "~1 TB plus halos (+1 TB labels written) | none (tasks read the input themselves; only the model, once per worker) |"
          for n, v, p in projections],
    ]
    text = "\n".join(lines)
    if not args.no_write:
        write_section("predict-distributed", text)
    print(text)


if __name__ == "__main__":
    main()
