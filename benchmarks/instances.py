"""Instances on the shared ovule: train on k painted z slices, predict, split cells, score against its 50 cells.

The ovule's ground truth is cell interior (0) and cell boundary (1).  A user who
wants cells paints the boundary as background (1) and the interiors as a class
(2), so the annotation here is: 0 = not painted, on the k protocol slices
1 = boundary, 2 = interior.  The model is trained with a step budget at 1
thread (so the figures do not depend on machine load), predicts the volume with
class probabilities, and :func:`~napari_sparse_unet.core.analysis.instances.segment_instances`
makes instances of class 2 with each method.

Score: ground-truth cells (``labels_instances.tif``) fill the volume, boundary
included, while predicted instances are interiors; so each method is scored
as made and after growing its instances 2 voxels into the background
(scikit-image ``expand_labels``).  Predicted and true objects are paired by
Hungarian assignment on IoU (scipy ``linear_sum_assignment``); a pair with
IoU >= 0.5 is a true positive.  F1 = 2 TP / (true + predicted objects); mean
matched IoU is over the true positives.

    nice -n 19 python -m benchmarks.instances --steps 300 --seeds 0 1
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

SECTION = "instances"
RESULT = HERE / "results" / "instances.json"
CLASS = 2  # interiors, painted as class 2
GROW = 2  # voxels the instances grow into the boundary before the grown score

METHODS = {
    "connected components": {"method": "components"},
    "watershed, distance landscape": {"method": "watershed", "landscape": "distance"},
    "watershed, probability landscape": {"method": "watershed", "landscape": "probability"},
}


def instance_scores(truth: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> dict:
    """F1, precision, recall at IoU >= ``threshold`` and mean matched IoU; objects paired by Hungarian assignment.

    ``truth`` and ``prediction`` are (Z, Y, X) integer instances, 0 = none.
    """
    from scipy.optimize import linear_sum_assignment
    from skimage.segmentation import relabel_sequential

    t = relabel_sequential(truth.astype(np.int64))[0].ravel()
    p = relabel_sequential(prediction.astype(np.int64))[0].ravel()
    n_t, n_p = int(t.max()), int(p.max())
    overlap = np.bincount(t * (n_p + 1) + p, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    sizes_t, sizes_p = overlap.sum(axis=1), overlap.sum(axis=0)
    inter = overlap[1:, 1:].astype(np.float64)
    union = sizes_t[1:, None] + sizes_p[None, 1:] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = linear_sum_assignment(-iou) if n_t and n_p else (np.array([], int), np.array([], int))
    matched = iou[rows, cols]
    tp = int((matched >= threshold).sum())
    return {
        "true_objects": n_t,
        "predicted_objects": n_p,
        "tp": tp,
        "precision": tp / n_p if n_p else 0.0,
        "recall": tp / n_t if n_t else 0.0,
        "f1": 2 * tp / (n_t + n_p) if n_t + n_p else 1.0,
        "mean_matched_iou": float(matched[matched >= threshold].mean()) if tp else 0.0,
    }


def run(seed: int, k: int, steps: int, min_size: int) -> list[dict]:
    import tifffile
    import torch

    from napari_sparse_unet.core.config import PredictConfig, TrainConfig
    from napari_sparse_unet.core.analysis.instances import InstanceConfig, segment_instances
    from napari_sparse_unet.core.prediction.predict import predict
    from napari_sparse_unet.core.training.train import train
    from skimage.segmentation import expand_labels

    torch.set_num_threads(1)
    volume = protocol.load_volume("plantseg_ovule")
    truth = tifffile.imread(protocol.DATA_DIR / "plantseg_ovule" / "labels_instances.tif")
    plan = protocol.make_plan(volume.labels.shape, (k, 0, 0))
    # Boundary (gt 1) -> background 1, interior (gt 0) -> class 2, on the planned slices.
    annotation = protocol.sparse_annotation(1 - volume.labels, plan)
    config = TrainConfig(max_steps=steps, max_time=None, num_threads=1, seed=seed, device="cpu")
    start = time.perf_counter()
    model = train([volume.image], [annotation], config, spacing=volume.spacing)
    train_s = time.perf_counter() - start
    probabilities = np.zeros((model.num_classes, *volume.labels.shape), np.float32)
    labels = predict(model, volume.image, PredictConfig(device="cpu"), probabilities_out=probabilities)
    painted = annotation > 0
    semantic_dice = float(2 * ((labels == CLASS) & (volume.labels == 0) & ~painted).sum()
                          / (((labels == CLASS) & ~painted).sum() + ((volume.labels == 0) & ~painted).sum()))
    rows = []
    for name, settings in METHODS.items():
        config_i = InstanceConfig(CLASS, min_size=min_size, **settings)
        start = time.perf_counter()
        found = segment_instances(labels, config_i, probability=probabilities[1], spacing=volume.spacing)
        seconds = time.perf_counter() - start
        rows.append({
            "seed": seed, "k": k, "steps": steps, "method": name, "min_size": min_size, "train_s": round(train_s, 1),
            "instance_s": round(seconds, 2), "interior_dice_unpainted": round(semantic_dice, 4),
            "as_made": instance_scores(truth, found),
            "grown": instance_scores(truth, expand_labels(found, GROW)),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], steps: int, k: int, min_size: int) -> str:
    lines = [
        "### Instances on the ovule (50 cells)",
        "",
        f"`benchmarks/instances.py`: k = {k} painted z slices (boundary painted as background 1, interiors as class 2), "
        f"{steps} training steps, 1 torch thread, `nice -n 19`, CPU preset otherwise; instances of class 2 with "
        f"`min_size={min_size}`; objects paired with the 50 true cells by Hungarian assignment on IoU, TP at IoU >= 0.5; "
        f"'grown' = instances grown {GROW} voxels into the background (`expand_labels`), since the true cells include "
        f"their boundaries. Seconds are wall time on a shared machine (other jobs ran; the step budget keeps the scores "
        f"independent of that). Machine: {machine_summary()}; load average at the end {os.getloadavg()[0]:.2f}.",
        "",
        "| seed | method | objects | F1@0.5 | mean matched IoU | F1@0.5 grown | mean matched IoU grown | interior Dice (unpainted) | train s | instances s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, g = r["as_made"], r["grown"]
        lines.append(
            f"| {r['seed']} | {r['method']} | {a['predicted_objects']} | {a['f1']:.3f} | {a['mean_matched_iou']:.3f} | "
            f"**{g['f1']:.3f}** | {g['mean_matched_iou']:.3f} | {r['interior_dice_unpainted']:.3f} | {r['train_s']:.0f} | "
            f"{r['instance_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--min-size", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args()
    rows = [row for seed in args.seeds for row in run(seed, args.k, args.steps, args.min_size)]
    if args.no_write:
        return
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(rows, indent=1))
    write_section(SECTION, report(rows, args.steps, args.k, args.min_size))


if __name__ == "__main__":
    main()
