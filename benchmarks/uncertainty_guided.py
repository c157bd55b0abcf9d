"""Does painting the least sure slice help more than painting the next evenly spaced one?

For each development volume: paint k = 3 z slices from the ground truth (the
protocol's plan), train with a step budget, predict with the per-voxel entropy,
then add ONE more z slice painted from the ground truth:

* (a) ``uncertain``: the unpainted slice with the highest mean entropy
  (:func:`~napari_sparse_unet.core.analysis.uncertainty.rank_slices`);
* (b) ``even``: the midpoint of the largest gap between the painted slices.

Each is fine-tuned from the k = 3 model with the same step budget, and all are
scored (mean foreground Dice, protocol classes) on the voxels unpainted in both
(a) and (b).  1 torch thread and a step budget, so figures do not depend on
machine load; run under ``nice -n 19``.  When (a) and (b) pick the same slice the
two arms are identical.  Each run appends one JSON line to
``results/uncertainty_guided.jsonl``; the table is rebuilt from all lines.

    nice -n 19 python -m benchmarks.uncertainty_guided --volumes ovule em --steps 200 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import protocol
from benchmarks.report import machine_summary, write_section

HERE = Path(__file__).resolve().parent

SECTION = "uncertainty-guided"
RESULTS = HERE / "results" / "uncertainty_guided.jsonl"
# alias: (folder, crop (Z, Y, X) to keep 1-thread runs short; None = whole)
VOLUMES = {
    "ovule": ("plantseg_ovule", None),
    "em": ("isbi2012_em", (None, 256, 256)),
    "ct": ("totalseg_ct", None),
    "mri": ("brats_mri_dev", None),
}


def largest_gap_midpoint(painted: list[int]) -> int:
    """Middle of the widest gap between consecutive painted slices (the first widest on ties)."""
    ordered = sorted(painted)
    gaps = [(b - a, a, b) for a, b in zip(ordered, ordered[1:])]
    width, a, b = max(gaps, key=lambda g: g[0])
    return (a + b) // 2


def mean_dice(volume: protocol.Volume, labels: np.ndarray, mask: np.ndarray) -> float:
    matrix = protocol.confusion(volume.labels, protocol.to_ground_truth(labels), volume.num_classes, mask)
    return protocol.mean_foreground(protocol.dice_from_confusion(matrix))


def run(alias: str, seed: int, steps: int, k: int) -> dict:
    import torch

    from napari_sparse_unet.core.config import PredictConfig, TrainConfig
    from napari_sparse_unet.core.generators import run_to_end
    from napari_sparse_unet.jobs import PredictJob
    from napari_sparse_unet.core.training.train import train
    from napari_sparse_unet.core.analysis.uncertainty import rank_slices

    torch.set_num_threads(1)
    folder, crop = VOLUMES[alias]
    volume = protocol.load_volume(folder, crop=crop)
    shape = volume.labels.shape
    base = protocol.make_plan(shape, (k, 0, 0))[0]
    config = TrainConfig(max_steps=steps, max_time=None, num_threads=1, seed=seed, device="cpu")
    predict_config = PredictConfig(device="cpu")

    def fit(slices: list[int], initial=None):
        annotation = protocol.sparse_annotation(volume.labels, {0: slices})
        return train([volume.image], [annotation], config, spacing=volume.spacing, initial=initial)

    start = time.perf_counter()
    model = fit(base)
    result = run_to_end(PredictJob(model, volume.image, predict_config, uncertainty="entropy").run())
    ranking = rank_slices(result.uncertainty, 0, painted=base)
    picks = {"uncertain": ranking[0].index, "even": largest_gap_midpoint(base)}
    labels = {"k3": result.labels}
    for arm, extra in picks.items():
        tuned = fit(sorted(base + [extra]), initial=model)
        labels[arm] = run_to_end(PredictJob(tuned, volume.image, predict_config).run()).labels
    mask = np.ones(shape, bool)
    mask[sorted(set(base) | set(picks.values()))] = False
    row = {
        "volume": folder, "alias": alias, "crop": list(shape), "seed": seed, "steps": steps, "k": k, "base": base,
        "picks": picks, "top5": [(s.index, round(s.score, 4)) for s in ranking[:5]],
        "dice": {arm: round(mean_dice(volume, lab, mask), 4) for arm, lab in labels.items()},
        "seconds": round(time.perf_counter() - start, 1), "load": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict]) -> str:
    lines = [
        "### Where to paint next: the least sure slice vs the next evenly spaced slice",
        "",
        "`benchmarks/uncertainty_guided.py`: k = 3 protocol z slices, a fixed step budget at 1 torch thread (`nice -n 19`, "
        "CPU preset otherwise), then ONE more z slice painted from the ground truth, (a) the unpainted slice of highest "
        "mean entropy or (b) the midpoint of the largest gap between painted slices, each fine-tuned from the k = 3 model "
        "with the same budget. Mean foreground Dice on the voxels unpainted in both arms (k=3: the first model on the "
        "same voxels). EM centre-cropped to 30×256×256. Run s: wall seconds of the whole run (3 trainings, 3 "
        f"predictions) on a shared machine. Machine: {machine_summary()}.",
        "",
        "| volume | seed | steps | painted z | (a) least sure z | (b) even z | Dice k=3 | Dice (a) | Dice (b) | (a) − (b) | run s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["alias"], r["seed"])):
        d = r["dice"]
        lines.append(
            f"| {r['alias']} | {r['seed']} | {r['steps']} | {r['base']} | {r['picks']['uncertain']} | {r['picks']['even']} | "
            f"{d['k3']:.3f} | {d['uncertain']:.3f} | {d['even']:.3f} | {d['uncertain'] - d['even']:+.3f} | "
            f"{r['seconds']:.0f} | {r['load']:.1f} |"
        )
    diffs = [r["dice"]["uncertain"] - r["dice"]["even"] for r in rows]
    if diffs:
        wins = sum(d > 0.0005 for d in diffs)
        losses = sum(d < -0.0005 for d in diffs)
        lines += ["", f"Mean (a) − (b): {np.mean(diffs):+.3f} over {len(diffs)} runs; (a) better in {wins}, worse in {losses}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", choices=tuple(VOLUMES), default=["ovule", "em"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # every run trains at 1 thread; the machine line says so
    RESULTS.parent.mkdir(exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for alias in args.volumes:
                row = run(alias, seed, args.steps, args.k)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []
    write_section(SECTION, report(rows))


if __name__ == "__main__":
    main()
