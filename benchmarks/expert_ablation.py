"""The two experts apart: Dice of the U-Net alone, the voxel head alone and their product.

The engine's model multiplies two experts' probabilities (``UNet.classify``); this
benchmark trains it as ``sparse_accuracy.py`` does (CPU preset, ``--budget`` s, k
z-slices, or the unseen half with ``--auto``), with any preset field overridden by
``--set``, predicts the volume once with both experts' probabilities, and scores
``head + alpha * unet`` log-probabilities for several alpha (0 = the voxel head alone,
1 = the shipped product, ``inf`` = the U-Net alone).  It is the tool for choosing
filter scales and the experts' weighting; every run appends one line to
``results/expert_ablation.jsonl`` and the RESULTS.md section is rebuilt from all lines.

    python benchmarks/expert_ablation.py --volumes em ct --k 5
    python benchmarks/expert_ablation.py --volumes em --k 5 --set 'filter_scales=[0.7,1,1.6,3.5,5]'
    python benchmarks/expert_ablation.py --report-only
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

import _protocol as protocol  # noqa: E402
from _engine_runs import engine_run_parser, run_and_report  # noqa: E402
from _report import machine_summary  # noqa: E402
from sparse_accuracy import BUDGET  # noqa: E402

RESULTS_FILE = HERE / "results" / "expert_ablation.jsonl"
SECTION = "expert-ablation"
ALPHAS = (0.0, 0.5, 1.0, 1.5, float("inf"))


def both_experts(network):
    """A module mapping an image tile to both experts' log-probabilities, (N, 2K, *s): U-Net first, then the head."""
    import torch

    class BothExperts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = network  # not `network`: make_predictor would unwrap to it

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            unet, voxel = self.unet.experts(self.unet.filters(x))
            return torch.cat([torch.log_softmax(unet.float(), 1), torch.log_softmax(voxel.float(), 1)], 1)

    return BothExperts().eval()


def run(volume_name: str, args) -> dict:
    import torch

    from napari_sparse_unet.core.config import PRESETS, PredictConfig
    from napari_sparse_unet.core.generators import run_to_end
    from napari_sparse_unet.core.predict import make_predictor, model_window, plan_prediction, sliding_window_predict
    from napari_sparse_unet.core.rules import image_for_model
    from napari_sparse_unet.core.train import Trainer

    volume = protocol.load_volume(volume_name)
    train_image, predict_image, train_labels, truth, _ = protocol.train_and_predict_parts(
        volume.image, volume.labels, args.auto)
    annotation = protocol.sparse_annotation(train_labels, protocol.make_plan(train_labels.shape, (args.k, 0, 0)))
    mask = None if args.auto else protocol.unannotated(annotation)
    config = dataclasses.replace(PRESETS["cpu"], max_time=float(args.budget), seed=args.seed,
                                 num_threads=args.threads, **args.overrides)
    load = os.getloadavg()
    start = time.perf_counter()
    trainer = Trainer(images=[train_image], annotations=[annotation], config=config, spacing=volume.spacing)
    model = run_to_end(trainer.run())
    train_seconds = time.perf_counter() - start
    if model.network.voxel_head is None:
        raise SystemExit("this model has no voxel head: nothing to take apart")

    k = model.num_classes
    image_cf = image_for_model(predict_image, int(model.spatial_dims), int(model.in_channels))
    spatial = tuple(image_cf.shape[1:])
    window = model_window(model, PredictConfig())
    # The predictor's softmax over 2K log-probabilities gives each expert's probabilities halved.
    predictor = make_predictor(both_experts(model.network), window["device"], mixed_precision=False)
    window.update(predictor=predictor, num_classes=2 * k, lut=None)
    probabilities = np.zeros((2 * k, *spatial), np.float32)
    tile, overlap = plan_prediction(model, spatial, PredictConfig())
    start = time.perf_counter()
    run_to_end(sliding_window_predict(image_cf=image_cf, tile_size=tile, overlap=overlap,
                                      labels_out=np.zeros(spatial, np.uint8), probabilities_out=probabilities, **window))
    predict_seconds = time.perf_counter() - start
    log_unet = np.log(np.maximum(probabilities[:k], 1e-8))
    log_head = np.log(np.maximum(probabilities[k:], 1e-8))
    to_truth = np.asarray(model.class_values) - 1  # network class -> ground-truth class
    scores = {}
    for alpha in ALPHAS:
        combined = log_unet if alpha == float("inf") else log_head + alpha * log_unet
        score = protocol.score(truth, to_truth[combined.argmax(0)], volume.num_classes, mask)
        scores[str(alpha)] = score.to_dict()
    return {
        "volume": volume_name, "setting": "auto" if args.auto else "semi", "k": args.k, "budget": args.budget,
        "set": {key: list(v) if isinstance(v, tuple) else v for key, v in args.overrides.items()}, "seed": args.seed,
        "steps": trainer._history.get("steps"), "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1), "threads": torch.get_num_threads(),
        "load_before": [round(v, 2) for v in load], "load_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine_summary(), "scores": scores,
    }


def report(records: list[dict]) -> str:
    lines = [
        "## The two experts apart (`benchmarks/expert_ablation.py`)",
        "",
        "Mean foreground Dice on the scored voxels (unpainted ones; all of the unseen half for `auto`) of the voxel "
        "head alone (alpha = 0), the shipped product of the two experts (alpha = 1) and the U-Net alone, from one "
        "prediction pass giving both experts' probabilities (float32). CPU preset plus the overrides shown, "
        "one run per line.",
        "",
        "| volume | setting | overrides | seed | steps | head alone | x 0.5 | product | x 1.5 | U-Net alone | load | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        dice = [r["scores"][str(a)]["mean_fg_dice"] for a in ALPHAS]
        cells = ["–" if d is None else f"{d:.3f}" for d in dice]
        setting = "unseen half" if r["setting"] == "auto" else f"k = {r['k']} z"
        changed = [f"{k}={v}" for k, v in r["set"].items()]
        if r.get("budget", BUDGET) != BUDGET:
            changed.insert(0, f"{r['budget']:g} s of training")
        overrides = ", ".join(changed) or "(defaults)"
        load = f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"
        lines.append(f"| {r['volume']} | {setting} | {overrides} | {r['seed']} | {r['steps']} | " + " | ".join(cells)
                     + f" | {load} | {r['machine'].split(',')[0]}, {r['threads']} threads |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = engine_run_parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=BUDGET, help="training seconds")
    args = p.parse_args(argv)

    def summary(record: dict) -> dict:
        return ({k: record[k] for k in ("volume", "setting", "k", "set", "steps")}
                | {a: record["scores"][a]["mean_fg_dice"] for a in record["scores"]})

    run_and_report(args, run, summary, RESULTS_FILE, SECTION, report)


if __name__ == "__main__":
    main()
