"""Features or learner? The voxel head and a random forest on the very same feature rows.

The engine's voxel head is a per-voxel classifier on the filter bank's features; the
peer is a random forest on ilastik's.  Where the forest wins, this tells whether our
features or our learner is short: it trains the engine's voxel head alone (the
engine's own training loop, head-only for ``--steps`` steps, CPU preset plus
``--set`` overrides) and a 100-tree forest (``_random_forest.make_forest``) on the
same painted feature rows the head learns from, predicts every voxel with both, and
scores the mean foreground Dice on the unpainted voxels (all of the unseen half with
``--auto``) next to the forest on ilastik's features from ``sparse_accuracy.py``'s
results.  Fixed step counts, not a time budget: the figures do not depend on load.
Every run appends a line to ``results/head_vs_forest.jsonl``; the RESULTS.md section is
rebuilt from all lines.

    python benchmarks/head_vs_forest.py --volumes mri --k 5
    python benchmarks/head_vs_forest.py --volumes mri --k 5 --set equalize=false 'context_scales=[]'
    python benchmarks/head_vs_forest.py --report-only
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

import _protocol as protocol  # noqa: E402
from _engine_runs import engine_run_parser, run_and_report  # noqa: E402
from _random_forest import make_forest  # noqa: E402
from _report import machine_summary  # noqa: E402
from sparse_accuracy import RESULTS_DIR, find, load_records  # noqa: E402

RESULTS_FILE = HERE / "results" / "head_vs_forest.jsonl"
SECTION = "head-vs-forest"
CHUNK = 1 << 18  # voxels classified at a time


def feature_maps(trainer, predict_image, auto: bool) -> np.ndarray:
    """(F, *spatial) features of the volume to predict, as the trainer computed them for training."""
    from napari_sparse_unet.core.filters import filter_volume
    from napari_sparse_unet.core.rules import image_for_model

    if not auto and trainer._features:
        return np.asarray(trainer.volumes[0].image)
    config = trainer.model_config
    image_cf = image_for_model(predict_image, config.spatial_dims, config.in_channels)
    return filter_volume(config.filter_bank(), trainer.normalization.apply(image_cf))


def classify_voxels(maps: np.ndarray, classify) -> np.ndarray:
    """Class index per voxel of (F, *spatial) maps, ``classify`` taking (M, F) float32 rows to (M,) indices."""
    flat = maps.reshape(maps.shape[0], -1)
    out = np.empty(flat.shape[1], np.int64)
    for begin in range(0, flat.shape[1], CHUNK):
        out[begin:begin + CHUNK] = classify(np.ascontiguousarray(flat[:, begin:begin + CHUNK].T, dtype=np.float32))
    return out.reshape(maps.shape[1:])


def run(volume_name: str, args) -> dict:
    import torch

    from napari_sparse_unet.core.config import PRESETS
    from napari_sparse_unet.core.generators import run_to_end
    from napari_sparse_unet.core.train import Trainer

    volume = protocol.load_volume(volume_name)
    train_image, predict_image, train_labels, truth, _ = protocol.train_and_predict_parts(
        volume.image, volume.labels, args.auto)
    plan = protocol.make_plan(train_labels.shape, (args.k, 0, 0))
    annotation = protocol.sparse_annotation(train_labels, plan)
    mask = None if args.auto else protocol.unannotated(annotation)
    # Head-only training in the engine's loop: the voxel warm-up spans all but the last step.
    config = dataclasses.replace(PRESETS["cpu"], max_steps=args.steps, max_time=None, voxel_warmup=1 - 0.5 / args.steps,
                                 seed=args.seed, num_threads=args.threads, **args.overrides)
    start = time.perf_counter()
    trainer = Trainer(images=[train_image], annotations=[annotation], config=config, spacing=volume.spacing)
    model = run_to_end(trainer.run())
    head_seconds = time.perf_counter() - start
    rows, classes = trainer._voxel_rows
    maps = feature_maps(trainer, predict_image, args.auto)
    to_truth = np.asarray(model.class_values) - 1  # network class -> ground-truth class
    head = model.network.voxel_head.eval()

    def head_classes(block: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head.rows(torch.from_numpy(block)).argmax(1).numpy()

    head_score = protocol.score(truth, to_truth[classify_voxels(maps, head_classes)], volume.num_classes, mask)

    start = time.perf_counter()
    forest = make_forest(args.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sklearn.utils.parallel.delayed.*")
        forest.fit(rows, classes)
        forest_seconds = time.perf_counter() - start
        labels = forest.classes_
        predicted = classify_voxels(maps, lambda block: labels[forest.predict_proba(block).argmax(1)])
    forest_score = protocol.score(truth, to_truth[predicted], volume.num_classes, mask)
    reference = find(load_records(RESULTS_DIR), volume_name, "rf", protocol.plan_name(plan), "auto" if args.auto else "semi")
    return {
        "volume": volume_name, "setting": "auto" if args.auto else "semi", "k": args.k,
        "set": {key: list(v) if isinstance(v, tuple) else v for key, v in args.overrides.items()},
        "seed": args.seed, "head_steps": args.steps, "features": int(rows.shape[1]), "rows": int(len(classes)),
        "head": head_score.to_dict(), "forest_same_features": forest_score.to_dict(),
        "forest_ilastik": None if reference is None else reference["mean_fg_dice"],
        "head_seconds": round(head_seconds, 1), "forest_fit_seconds": round(forest_seconds, 1),
        "threads": torch.get_num_threads(), "machine": machine_summary(), "class_names": volume.class_names,
    }


def report(records: list[dict]) -> str:
    lines = [
        "## Features or learner? (`benchmarks/head_vs_forest.py`)",
        "",
        "The engine's voxel head trained alone (the engine's loop, head-only, fixed steps) and a 100-tree random "
        "forest fitted on the same painted feature rows (the engine's filter bank, overrides shown), both predicting "
        "every voxel; mean foreground Dice on the unpainted voxels (all of the unseen half), next to the forest on "
        "ilastik's features (`sparse_accuracy.py`). Per class: voxel head / forest on the same features. Fixed step "
        "counts, so the figures do not depend on the machine's load (these runs shared it with other work).",
        "",
        "| volume | setting | overrides | features | painted rows | head steps | voxel head | forest, same features "
        "| forest, ilastik features | per class (head / forest) | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        setting = "unseen half" if r["setting"] == "auto" else f"k = {r['k']} z"
        overrides = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "(defaults)"
        pairs = [f"{h:.2f} / {f:.2f}" if h is not None and f is not None else "–"
                 for h, f in zip(r["head"]["dice"][1:], r["forest_same_features"]["dice"][1:])]
        ilastik = "–" if r["forest_ilastik"] is None else f"{r['forest_ilastik']:.3f}"
        lines.append(
            f"| {r['volume']} | {setting} | {overrides} | {r['features']} | {r['rows']} | {r['head_steps']} "
            f"| {r['head']['mean_fg_dice']:.3f} | {r['forest_same_features']['mean_fg_dice']:.3f} | {ilastik} "
            f"| {', '.join(pairs)} | {r['machine'].split(',')[0]}, {r['threads']} threads |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = engine_run_parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500, help="voxel-head steps (the engine makes about this many in 180 s)")
    args = p.parse_args(argv)

    def summary(record: dict) -> dict:
        return ({k: record[k] for k in ("volume", "setting", "k", "set")}
                | {"head": record["head"]["mean_fg_dice"], "forest_same_features": record["forest_same_features"]["mean_fg_dice"],
                   "forest_ilastik": record["forest_ilastik"]})

    run_and_report(args, run, summary, RESULTS_FILE, SECTION, report)


if __name__ == "__main__":
    main()
