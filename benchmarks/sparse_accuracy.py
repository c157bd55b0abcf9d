"""Sparse-annotation accuracy: the 3D U-Net against a random forest on ilastik features.

Runs the protocol of ``../shared/data/README.md`` on every volume there:

* semi-automated (the 3D U-Net paper's first setting): annotate k slices of a volume,
  train, predict the same volume, score the voxels that were not annotated;
  k along z, and for the isotropic CT also k spread over z, y and x;
* dense upper bound: the same network trained on the whole ground truth, same budget,
  scored on the voxels the sparse runs score (and on all voxels);
* fully automated (the paper's second setting): cut the volume in two halves along its
  longest axis, annotate k z-slices of the first, predict the second, score all of it.

Methods: ``unet`` (the project's core, CPU preset, ``--budget`` seconds of training)
and ``rf`` (``random_forest.py``: 100 trees on ilastik's filter features, timed as
features + fit + predict).  Every run writes one JSON under ``benchmarks/results/accuracy/``;
the table in ``RESULTS.md`` and the plots are rebuilt from all JSONs there, so runs can be
split over time (``--volumes``, ``--methods``, ``--settings``, ``--skip-existing``).
``--seed N`` (N != 0) repeats runs into ``results/accuracy_seeds/seedN/`` and rebuilds the
"Seed spread" section instead, so the headline table stays one run per cell at seed 0.

    python -m benchmarks.sparse_accuracy                       # everything (~70 min on 2 idle cores)
    python -m benchmarks.sparse_accuracy --quick               # smoke run on crops (~3 min)
    python -m benchmarks.sparse_accuracy --volumes ct --methods rf
    python -m benchmarks.sparse_accuracy --report-only         # table + plots from the JSONs
    python -m benchmarks.sparse_accuracy --volumes ovule --settings z --seed 1   # a repeat for the spread
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import protocol
from benchmarks.report import machine_summary, write_section

HERE = Path(__file__).resolve().parent

RESULTS_DIR = HERE / "results" / "accuracy"
QUICK_DIR = HERE / "results" / "accuracy_quick"
SEEDS_DIR = HERE / "results" / "accuracy_seeds"  # runs with --seed N != 0, one folder per seed
PRESETS_DIR = HERE / "results" / "accuracy_presets"  # --cpu-steps runs of other presets, one folder per preset
SECTION = "sparse-accuracy"
SEED_SECTION = "accuracy-seeds"
PRESET_SECTION = "preset-steps"

# name: (short alias, k spread over three axes too?, crop for --quick)
VOLUMES: dict[str, tuple[str, bool, tuple[int, int, int]]] = {
    "isbi2012_em": ("em", False, (30, 128, 128)),
    "totalseg_ct": ("ct", True, (64, 64, 64)),
    "plantseg_ovule": ("ovule", False, (32, 64, 64)),
    "brats_mri_dev": ("mri", True, (64, 64, 64)),
}
SETTINGS = ("z", "3axis", "dense", "auto")
METHODS = ("rf", "unet")
BUDGET = 180.0  # U-Net training seconds the accuracy targets are set for; --quick uses 20
SHORT_BUDGET = 30.0  # a training of the forest's seconds (issue 22: within 0.01 of the full budget's Dice)


@dataclass(frozen=True)
class Spec:
    """One run: a volume, an annotation setting, a method."""

    volume: str
    setting: str  # "semi" or "auto"
    per_axis: tuple[int, ...] | None  # slices per axis; None = dense
    method: str

    @property
    def k(self) -> int | None:
        return None if self.per_axis is None else sum(self.per_axis)

    def annotation_name(self, shape: Sequence[int]) -> str:
        return "dense" if self.per_axis is None else protocol.plan_name(protocol.make_plan(shape, self.per_axis))

    def file_name(self, shape: Sequence[int]) -> str:
        return f"{self.volume}__{self.setting}__{self.annotation_name(shape)}__{self.method}.json"


# ----------------------------------------------------------------------------- methods


def run_rf(train_image, annotation, predict_image, spacing, args) -> dict:
    from benchmarks.random_forest import run_forest

    result = run_forest(train_image, annotation, predict_image, spacing, seed=args.seed,
                        max_samples=args.rf_max_samples)
    s = result.seconds
    return {
        "prediction": result.prediction,
        "train_seconds": s["features_train"] + s["fit"],
        "predict_seconds": s["features_predict"] + s["predict"],
        "seconds": s,
        "device": "cpu",
        "threads": result.n_jobs,
        "details": {"features": result.num_features, "train_voxels": result.train_voxels, "trees": 100,
                    "max_samples_per_tree": args.rf_max_samples},
    }


def run_unet(train_image, annotation, predict_image, spacing, args, checkpoints=(), score_fn=None, budget=None,
             steps=None) -> dict:
    """Train ``args.preset`` for ``budget`` (default ``args.budget``) s, or for ``steps`` steps with no time limit;
    optionally score snapshots at ``checkpoints`` s."""
    import torch

    from napari_sparse_unet.core.config import PRESETS, PredictConfig
    from napari_sparse_unet.core.prediction.predict import predict
    from napari_sparse_unet.core.training.train import Trainer

    budget = float(args.budget if budget is None else budget)
    config = dataclasses.replace(PRESETS[args.preset], max_time=budget, seed=args.seed,
                                 num_threads=args.threads)
    if steps is not None:
        config = dataclasses.replace(config, max_steps=int(steps), max_time=None)
    start = time.perf_counter()
    trainer = Trainer(images=[train_image], annotations=[annotation], config=config, spacing=spacing)
    pending = sorted(c for c in checkpoints if c < budget)
    snapshots: list[tuple[float, float, int, object]] = []
    history: list[dict] = []
    events = trainer.run()
    last = None
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            model = stop.value
            break
        last = event
        if event.val_dice is not None:
            history.append({"step": event.step, "elapsed": round(event.elapsed, 2), "loss": round(event.loss, 4),
                            "val_dice": protocol.nan_to_none(event.val_dice)})
        while pending and event.elapsed >= pending[0]:
            # best_model is rebuilt from a weight copy, so later steps do not change it.
            snapshot = trainer.best_model or trainer.current_model()
            snapshots.append((pending.pop(0), event.elapsed, event.step, snapshot))
    train_seconds = time.perf_counter() - start

    predict_config = PredictConfig()
    start = time.perf_counter()
    prediction = predict(model, predict_image, predict_config)
    predict_seconds = time.perf_counter() - start

    curve = []
    if score_fn is not None:
        for target, elapsed, step, snapshot in snapshots:
            s = score_fn(protocol.to_ground_truth(predict(snapshot, predict_image, predict_config)))
            curve.append({"seconds": target, "elapsed": round(elapsed, 2), "step": step, **s.to_dict()})
    return {
        "prediction": prediction,
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "seconds": {"train": train_seconds, "predict": predict_seconds},
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "checkpoints": curve,
        "details": {"preset": args.preset, "budget": config.max_time, "steps": last.step if last else 0,
                    "batch_size": config.batch_size,
                    "final_loss": last.loss if last else None, "patch_size": list(trainer.patch_size),
                    "pool_factors": [list(f) for f in trainer.model_config.pool_factors],
                    "validation": history},
    }


# ----------------------------------------------------------------------------- one run


def run_spec(spec: Spec, volume: protocol.Volume, args) -> dict:
    labels = volume.labels
    train_image, predict_image, train_labels, truth, axis = protocol.train_and_predict_parts(
        volume.image, labels, spec.setting == "auto")
    if spec.per_axis is None:
        plan = {}
        annotation = protocol.dense_annotation(train_labels)
    else:
        plan = protocol.make_plan(train_labels.shape, spec.per_axis)
        annotation = protocol.sparse_annotation(train_labels, plan)
    # Semi-automated: score what was not annotated; fully automated: all of the unseen half.
    mask = protocol.unannotated(annotation) if spec.setting == "semi" and spec.per_axis is not None else None
    annotated_classes = sorted(int(v) - 1 for v in np.unique(annotation) if v > 0)

    def score_fn(prediction_gt):
        return protocol.score(truth, prediction_gt, volume.num_classes, mask)

    load = os.getloadavg()
    if spec.method == "unet" and args.cpu_steps:
        steps = cpu_preset_steps(spec, labels.shape)
        out = run_unet(train_image, annotation, predict_image, volume.spacing, args, steps=steps)
    elif spec.method == "rf":
        out = run_rf(train_image, annotation, None if spec.setting == "semi" else predict_image, volume.spacing, args)
    else:
        # One Dice-against-time curve per volume: the largest k along z.
        checkpoints = args.checkpoints if spec.setting == "semi" and spec.per_axis == (max(args.k), 0, 0) else ()
        out = run_unet(train_image, annotation, predict_image, volume.spacing, args, checkpoints, score_fn)
        if checkpoints and args.short_budget:
            # What a user gets who asks for a short training: a run of its own, whose schedule ends in time.
            short = run_unet(train_image, annotation, predict_image, volume.spacing, args, budget=args.short_budget)
            out["short_run"] = {"budget": args.short_budget, "steps": short["details"]["steps"],
                                "train_seconds": short["train_seconds"],
                                **score_fn(protocol.to_ground_truth(short["prediction"])).to_dict()}
    prediction = protocol.to_ground_truth(out.pop("prediction"))
    result = score_fn(prediction)

    record = {
        "volume": spec.volume,
        "setting": spec.setting,
        "annotation": spec.annotation_name(train_labels.shape),
        "k": spec.k,
        "per_axis": list(spec.per_axis) if spec.per_axis is not None else None,
        "slices": {protocol.AXIS_NAMES[a]: list(s) for a, s in plan.items()},
        "method": spec.method,
        "shape": list(labels.shape),
        "crop": list(VOLUMES[spec.volume][2]) if args.quick else None,
        "split_axis": None if axis is None else protocol.AXIS_NAMES[axis],
        "train_shape": list(train_labels.shape),
        "fraction_annotated": float((annotation > 0).mean()),
        "class_names": list(volume.class_names),
        "annotated_classes": annotated_classes,
        "never_annotated": [c for c in range(volume.num_classes) if c not in annotated_classes],
        **result.to_dict(),
        "train_seconds": out.pop("train_seconds"),
        "predict_seconds": out.pop("predict_seconds"),
        **out,
        "machine": machine_summary(),
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": bool(args.quick),
    }
    if spec.per_axis is None and spec.setting == "semi":
        # The upper bound scored on exactly the voxels each sparse run scores.
        record["dice_on"] = {}
        for per_axis in sparse_layouts(spec.volume, args, SETTINGS):
            sparse_plan = protocol.make_plan(labels.shape, per_axis)
            sparse_mask = protocol.unannotated(protocol.sparse_annotation(labels, sparse_plan))
            record["dice_on"][protocol.plan_name(sparse_plan)] = protocol.score(
                truth, prediction, volume.num_classes, sparse_mask).to_dict()
    return record


def cpu_preset_steps(spec: Spec, shape: Sequence[int]) -> int:
    """Steps the CPU preset's headline run made on the same volume and annotation (its JSON must exist)."""
    path = RESULTS_DIR / spec.file_name(shape)
    if not path.exists():
        raise FileNotFoundError(f"{path.name}: run the CPU preset first; --cpu-steps repeats its step count")
    return int(json.loads(path.read_text())["details"]["steps"])


def sparse_layouts(volume: str, args, settings: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Slices per axis of the semi-automated sparse runs: k along z, and k over z, y, x where isotropic."""
    settings = args.settings if settings is None else settings
    layouts = [(k, 0, 0) for k in args.k] if "z" in settings else []
    if VOLUMES[volume][1] and "3axis" in settings:
        layouts += [protocol.spread_over_axes(k) for k in args.k]
    return layouts


def specs_for(volume: str, args) -> list[Spec]:
    specs = []
    for method in args.methods:
        for per_axis in sparse_layouts(volume, args):
            specs.append(Spec(volume, "semi", per_axis, method))
        if "dense" in args.settings and method == "unet":
            specs.append(Spec(volume, "semi", None, method))
        if "auto" in args.settings:
            specs.append(Spec(volume, "auto", (args.auto_k, 0, 0), method))
    return specs


# ----------------------------------------------------------------------------- report


def load_records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _order(record: dict) -> tuple:
    setting = {"semi": 0, "auto": 2}[record["setting"]]
    if record["annotation"] == "dense":
        setting = 1
    return (setting, len(record["slices"]) > 1, record["k"] or 0, METHODS.index(record["method"]))


def _short(name: str) -> str:
    return {"cell interior": "interior", "membrane/boundary": "membrane", "background (everything else)": "background",
            "cell boundary (find_boundaries thick on instance GT)": "boundary"}.get(name, name)


def volume_table(records: list[dict]) -> str:
    names = records[0]["class_names"]
    head = ["setting", "annotation", "method", "annotated %"] + [_short(n) for n in names] + [
        "**mean fg Dice**", "train s", "predict s", "device × threads", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(records, key=_order):
        setting = "dense (upper bound)" if r["annotation"] == "dense" else (
            "semi-automated" if r["setting"] == "semi" else f"fully automated ({r['split_axis']} halves)")
        dice = [fmt(d) + ("*" if c in r["never_annotated"] else "") for c, d in enumerate(r["dice"])]
        lines.append("| " + " | ".join([
            setting, r["annotation"], "3D U-Net" if r["method"] == "unet" else "RF (ilastik features)",
            f"{100 * r['fraction_annotated']:.2f}", *dice, f"**{fmt(r['mean_fg_dice'])}**",
            f"{r['train_seconds']:.0f}", f"{r['predict_seconds']:.0f}", f"{r['device']} × {r['threads']}",
            f"{max(r['loadavg_before'][0], r['loadavg_after'][0]):.1f}"]) + " |")
    return "\n".join(lines)


def find(records, volume, method, annotation, setting="semi"):
    for r in records:
        if (r["volume"], r["method"], r["annotation"], r["setting"]) == (volume, method, annotation, setting):
            return r
    return None


def summary_rows(records: list[dict], k: int = 5) -> list[dict]:
    """Per volume at k: RF, U-Net, dense on the same voxels, and the goal checks."""
    rows = []
    for volume in VOLUMES:
        layouts = [f"k{k}-z"] + ([protocol.plan_name(protocol.make_plan((100, 100, 100), protocol.spread_over_axes(k)))]
                                 if VOLUMES[volume][1] else [])
        for annotation in layouts:
            rf, unet = find(records, volume, "rf", annotation), find(records, volume, "unet", annotation)
            dense = find(records, volume, "unet", "dense")
            if rf is None and unet is None:
                continue
            dense_same = (dense or {}).get("dice_on", {}).get(annotation, {}).get("mean_fg_dice")
            row = {"volume": volume, "annotation": annotation,
                   "rf": rf and rf["mean_fg_dice"], "unet": unet and unet["mean_fg_dice"], "dense": dense_same,
                   "unet_train": unet and unet["train_seconds"], "rf_train": rf and rf["train_seconds"]}
            row["beats_rf"] = None if row["rf"] is None or row["unet"] is None else row["unet"] > row["rf"]
            row["ratio"] = None if not row["dense"] or row["unet"] is None else row["unet"] / row["dense"]
            rows.append(row)
    return rows


def summary_table(rows: list[dict]) -> str:
    yes = {True: "yes", False: "**no**", None: "–"}
    lines = ["| volume | annotation | RF | 3D U-Net | dense U-Net (same voxels) | U-Net / dense | U-Net > RF | ≥ 90 % of dense |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['annotation']} | {fmt(r['rf'])} | {fmt(r['unet'])} | {fmt(r['dense'])} | "
                     f"{fmt(r['ratio'] and 100 * r['ratio'], 0)}{' %' if r['ratio'] else ''} | {yes[r['beats_rf']]} | "
                     f"{yes[None if r['ratio'] is None else r['ratio'] >= 0.9]} |")
    return "\n".join(lines)


def time_table(records: list[dict]) -> str:
    """Dice against training time of the k=5 z runs: the full run's snapshots, its end, and a short run of its own."""
    runs = [r for r in records if r["method"] == "unet" and r["setting"] == "semi" and r.get("checkpoints")]
    seconds = sorted({c["seconds"] for r in runs for c in r["checkpoints"]})
    lines = ["| volume | annotation | " + " | ".join(f"{t:.0f} s into the full run" for t in seconds)
             + " | full run | a run with a short budget (steps) | short − full |",
             "|---|---|" + "---|" * (len(seconds) + 3)]
    for r in runs:
        at = {c["seconds"]: c["mean_fg_dice"] for c in r["checkpoints"]}
        short = r.get("short_run")
        cells = [fmt(at.get(t)) for t in seconds]
        if short:
            gap = None if short["mean_fg_dice"] is None or r["mean_fg_dice"] is None else short["mean_fg_dice"] - r["mean_fg_dice"]
            short_cells = [f"{fmt(short['mean_fg_dice'])} in {short['budget']:.0f} s ({short['steps']})",
                           "–" if gap is None else f"{gap:+.3f}"]
        else:
            short_cells = ["–", "–"]
        lines.append(f"| {r['volume']} | {r['annotation']} | " + " | ".join(cells)
                     + f" | {fmt(r['mean_fg_dice'])} in {r['details']['budget']:.0f} s ({r['details']['steps']}) | "
                     + " | ".join(short_cells) + " |")
    return "\n".join(lines)


def readme_summary(records: list[dict], k: int = 5) -> str:
    """A short paragraph and the plots, for the project README (paths relative to the repository root)."""
    rows = [r for r in summary_rows(records, k) if r["annotation"] == f"k{k}-z"]
    budgets = sorted({r["details"]["budget"] for r in records if r["method"] == "unet"})
    lines = [
        f"**Accuracy from {k} painted slices.** On {len(rows)} public volumes with dense ground truth, {k} z-slices were "
        "annotated and the rest of each volume scored (mean foreground Dice on the unannotated voxels; "
        f"`benchmarks/sparse_accuracy.py`, CPU preset, {'/'.join(f'{b:.0f}' for b in budgets) or '–'} s of training on a "
        "2-core CPU; details in `benchmarks/RESULTS.md`):",
        "",
        "| volume | random forest, ilastik features | 3D U-Net | U-Net, dense labels |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['volume']} | {fmt(r['rf'])} | {fmt(r['unet'])} | {fmt(r['dense'])} |")
    lines += ["", "![Dice against annotated slices](benchmarks/accuracy_vs_k.png)",
              "![Dice against training time](benchmarks/accuracy_vs_time.png)"]
    return "\n".join(lines)


def _legend_below(fig, axes) -> None:
    """One legend for all panels, under them, so it never hides a point."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(text, handle)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=min(4, len(entries)) or 1, fontsize=8,
               frameon=False)


def plot(records: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = [v for v in VOLUMES if any(r["volume"] == v for r in records)]
    if not volumes:
        return []
    colors = {"unet": "tab:blue", "rf": "tab:orange"}
    label = {"unet": "3D U-Net", "rf": "RF (ilastik features)"}
    paths = []

    fig, axes = plt.subplots(1, len(volumes), figsize=(4.2 * len(volumes), 4.4), squeeze=False)
    for ax, volume in zip(axes[0], volumes):
        mine = [r for r in records if r["volume"] == volume]
        for method in METHODS:
            for multi, style in ((False, "-o"), (True, "--s")):
                # A layout that paints no voxel of some class (`*` in the tables) measures the layout, not the method.
                pts = sorted((r["k"], r["mean_fg_dice"]) for r in mine if r["method"] == method and r["setting"] == "semi"
                             and r["k"] and (len(r["slices"]) > 1) == multi and r["mean_fg_dice"] is not None
                             and not r.get("never_annotated"))
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[method],
                            label=label[method] + (" (k over z, y, x)" if multi else " (k along z)"))
            auto = [(r["k"], r["mean_fg_dice"]) for r in mine if r["method"] == method and r["setting"] == "auto"]
            if auto:
                ax.plot(*zip(*auto), "^", mfc="none", color=colors[method], label=label[method] + " (unseen half)")
        dense = [r for r in mine if r["annotation"] == "dense"]
        if dense and dense[0]["mean_fg_dice"] is not None:
            ax.axhline(dense[0]["mean_fg_dice"], color="gray", ls=":", label="U-Net, dense labels")
        ax.set_title(volume)
        ax.set_xlabel("annotated slices k")
        ax.set_ylabel("mean foreground Dice (unannotated voxels)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0])
    paths.append(folder / "accuracy_vs_k.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(volumes), figsize=(4.2 * len(volumes), 4.4), squeeze=False)
    for ax, volume in zip(axes[0], volumes):
        for r in records:
            if r["volume"] != volume or r["setting"] != "semi" or r["annotation"] == "dense" or r["mean_fg_dice"] is None:
                continue
            if r["method"] == "unet":
                pts = [(c["elapsed"], c["mean_fg_dice"]) for c in r.get("checkpoints", []) if c["mean_fg_dice"] is not None]
                pts.append((r["train_seconds"], r["mean_fg_dice"]))
                ax.plot(*zip(*pts), "-o" if len(r["slices"]) == 1 else "--s", color=colors["unet"], alpha=0.4 + 0.12 * r["k"],
                        label=f"3D U-Net {r['annotation']}")
                short = r.get("short_run")
                if short and short["mean_fg_dice"] is not None:
                    ax.plot([short["train_seconds"]], [short["mean_fg_dice"]], "D", mfc="none", color=colors["unet"],
                            label=f"3D U-Net {r['annotation']}, its own short budget")
            else:
                ax.plot([r["train_seconds"]], [r["mean_fg_dice"]], "o" if len(r["slices"]) == 1 else "s",
                        color=colors["rf"], alpha=0.4 + 0.12 * r["k"], label=f"RF {r['annotation']} (features + fit)")
        ax.set_title(volume)
        ax.set_xlabel("training seconds (wall clock)")
        ax.set_ylabel("mean foreground Dice (unannotated voxels)")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes[0])
    paths.append(folder / "accuracy_vs_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def report(folder: Path, quick: bool) -> str:
    records = load_records(folder)
    if not records:
        return "no results yet"
    plot_dir = folder if quick else HERE
    plots = plot(records, plot_dir)
    machines = sorted({r["machine"] for r in records})
    budgets = sorted({r["details"]["budget"] for r in records if r["method"] == "unet"})
    parts = [
        "## Sparse-annotation accuracy (`benchmarks/sparse_accuracy.py`)" + (" — QUICK SMOKE RUN ON CROPS" if quick else ""),
        "",
        "Protocol of `../shared/data/README.md`: k slices evenly spaced, skipping the outer 10 % of the axis, "
        "annotated with the ground truth; Dice per class and mean foreground Dice on the voxels **not** annotated "
        "(semi-automated), or on all of an unseen half (fully automated: annotate k z-slices of the first half along "
        "the longest axis, predict the second). Dense = the same network trained on all labels, same budget. "
        f"3D U-Net: `PRESETS['cpu']` with a {', '.join(f'{b:.0f}' for b in budgets) or '–'} s training budget; "
        "train s = wall time of training, predict s = whole-volume prediction. RF: 100 trees (scikit-learn), "
        "ilastik's filters at σ 0.7–5 scaled by the voxel spacing; train s = features + fit, predict s = forest "
        "prediction (+ features of the unseen half). `*` = class absent from the annotation (cannot be predicted). "
        "– = class absent from truth and prediction on the scored voxels (excluded from the mean); a class absent "
        "from the truth but predicted scores 0. load = the machine's 1-minute load average around the run "
        "(2 cores: above 2, the timings are inflated by other work).",
        "",
        "Machine(s): " + "; ".join(machines),
        "",
        "### Summary at k = 5",
        "",
        summary_table(summary_rows(records)),
        "",
        "### Dice against training time (k = 5 along z)",
        "",
        "Snapshots of the full run, and a separate run given the short budget (its learning-rate schedule and "
        "the voxel head's warm-up scale with its budget). Steps in brackets.",
        "",
        time_table(records),
    ]
    for volume in VOLUMES:
        mine = [r for r in records if r["volume"] == volume]
        if mine:
            r0 = mine[0]
            parts += ["", f"### {volume} ({' × '.join(map(str, r0['shape']))})", "", volume_table(mine)]
    if plots:
        parts += ["", " ".join(f"![{p.stem}]({p.relative_to(HERE).as_posix()})" for p in plots)]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- main


def seed_records() -> dict[int, list[dict]]:
    """Records per seed: 0 from the headline folder, N from ``accuracy_seeds/seedN``."""
    seeds = {0: load_records(RESULTS_DIR)}
    for folder in sorted(SEEDS_DIR.glob("seed*")):
        seeds[int(folder.name[4:])] = load_records(folder)
    return seeds


def seed_report(seeds: dict[int, list[dict]]) -> str:
    """Mean foreground Dice per seed of every run repeated with another seed, and U-Net minus forest per seed."""
    repeated = sorted({(r["volume"], r["setting"], r["annotation"]) for n, rs in seeds.items() if n for r in rs},
                      key=lambda key: (list(VOLUMES).index(key[0]), key[1] != "semi", key[2]))
    order = sorted(seeds)
    lines = [
        "## Seed spread (`benchmarks/sparse_accuracy.py --seed N`)",
        "",
        "The headline table is one run per cell (seed 0). These cells were rerun with other seeds (the U-Net's "
        "initialisation, patch and batch draws, augmentation; the forest's bootstrap and feature draws), same "
        "protocol, same 180 s budget, 2 threads, each run alone on the machine. U-Net − RF: per seed, then the "
        "mean; the spread is max − min over seeds.",
        "",
        "| volume | annotation | method | " + " | ".join(f"seed {n}" for n in order) + " | mean | spread |",
        "|---|---|---|" + "---|" * (len(order) + 2),
    ]
    for volume, setting, annotation in repeated:
        label = annotation if setting == "semi" else f"{annotation}, {'unseen half' if setting == 'auto' else setting}"
        per_method = {}
        for method in METHODS:
            values = [(find(seeds[n], volume, method, annotation, setting) or {}).get("mean_fg_dice") for n in order]
            per_method[method] = values
            done = [v for v in values if v is not None]
            if done:
                lines.append(f"| {volume} | {label} | {method} | " + " | ".join(fmt(v) for v in values)
                             + f" | {fmt(float(np.mean(done)))} | {fmt(max(done) - min(done))} |")
        gaps = [u - f if u is not None and f is not None else None for u, f in zip(per_method["unet"], per_method["rf"])]
        done = [g for g in gaps if g is not None]
        if done:
            lines.append(f"| {volume} | {label} | U-Net − RF | " + " | ".join(
                "–" if g is None else f"{g:+.3f}" for g in gaps) + f" | {float(np.mean(done)):+.3f} | |")
    machines = sorted({r["machine"].rsplit(", ", 1)[0] for n in order[1:] for r in seeds[n]})
    loads = [r["loadavg_after"][0] for n in order[1:] for r in seeds[n] if r.get("loadavg_after")]
    lines += ["", "Machine(s): " + "; ".join(machines) + (f"; 1-minute load after the runs {min(loads):.2f}-{max(loads):.2f}" if loads else "")]
    return "\n".join(lines)


def preset_steps_report() -> str:
    """Each preset's --cpu-steps runs next to the CPU preset's headline run with the same steps."""
    lines = [
        "## Presets step for step (`benchmarks/sparse_accuracy.py --cpu-steps`)",
        "",
        "Other presets trained for exactly the steps the CPU preset made in its 180 s headline run "
        "(`sparse_accuracy.py --preset P --cpu-steps`, no time limit), scored like the headline runs. "
        "A GPU makes at least those steps in its preset's budget, so this is what a GPU user gets at least. "
        "Seconds per step are wall time and depend on the load (1-minute load after the run in the table): "
        "the first figure to compare a GPU run with.",
        "",
        "| volume | annotation | preset | steps | patch × batch | mean fg Dice | CPU preset Dice | difference | s / step |"
        " device × threads | load | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cpu = {(r["volume"], r["setting"], r["annotation"]): r for r in load_records(RESULTS_DIR) if r["method"] == "unet"}
    records = [r for folder in sorted(p for p in PRESETS_DIR.glob("*") if p.is_dir()) for r in load_records(folder)]
    for r in records:
        base = cpu.get((r["volume"], r["setting"], r["annotation"]))
        d = r["details"]
        base_dice = base["mean_fg_dice"] if base else None
        diff = f"{r['mean_fg_dice'] - base_dice:+.3f}" if base_dice is not None else "–"
        lines.append(
            f"| {r['volume']} | {r['annotation']} | {d['preset']} | {d['steps']} | "
            f"{'×'.join(map(str, d['patch_size']))} × {d.get('batch_size', '?')} | **{fmt(r['mean_fg_dice'])}** | "
            f"{fmt(base_dice)} | {diff} | {r['train_seconds'] / max(d['steps'], 1):.2f} | "
            f"{r['device']} × {r.get('threads', '?')} | {r['loadavg_after'][0]:.1f} | {r['date'][:10]} |")
    machines = sorted({r["machine"] for r in records})
    return "\n".join(lines + ["", "Machine(s): " + "; ".join(machines)])


def parse_args(argv=None):
    aliases = {alias: name for name, (alias, _, _) in VOLUMES.items()}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", nargs="+", default=list(VOLUMES), help="names or aliases: " + ", ".join(aliases))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                   help="z: k slices along z; 3axis: k over z, y, x (isotropic volumes); dense; auto: unseen half")
    p.add_argument("--k", nargs="+", type=int, default=[3, 5])
    p.add_argument("--auto-k", type=int, default=5, help="slices annotated in the fully automated setting")
    p.add_argument("--budget", type=float, default=None, help="U-Net training seconds (default 180, --quick 20)")
    p.add_argument("--checkpoints", nargs="*", type=float, default=None,
                   help="seconds at which the k=5 z run's best model is also scored (default 30 60 120)")
    p.add_argument("--short-budget", type=float, default=None,
                   help="also train the k=5 z run with this many seconds, a run of its own (default 30, --quick 0)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--cpu-steps", action="store_true",
                   help="train the U-Net for the steps the CPU preset's headline run made (no time limit); results "
                        "in results/accuracy_presets/PRESET: a GPU preset compared with the CPU one step for step")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    # Capping each tree's bootstrap sample only matters for EM (0.8-1.3 M painted voxels); on a 30x256x256 EM crop
    # at k=5 (330 k painted) membrane Dice was 0.7256 with 30 k and 0.7248 with 100 k per tree, at 1/4 of the fit time.
    p.add_argument("--rf-max-samples", type=int, default=50_000,
                   help="cap on each tree's bootstrap sample of annotated voxels (0 = all)")
    p.add_argument("--seed", type=int, default=0,
                   help="0: the headline results; N: a repeat in results/accuracy_seeds/seedN, reported as the spread")
    p.add_argument("--quick", action="store_true", help="crops, short budget, results in results/accuracy_quick")
    p.add_argument("--skip-existing", action="store_true", help="skip runs whose JSON exists")
    p.add_argument("--report-only", action="store_true", help="rebuild table and plots from the JSONs")
    p.add_argument("--plan", action="store_true", help="list the runs (and which already have results), run nothing")
    p.add_argument("--data-dir", type=Path, default=protocol.DATA_DIR)
    args = p.parse_args(argv)
    args.volumes = [aliases.get(v, v) for v in args.volumes]
    unknown = [v for v in args.volumes if v not in VOLUMES]
    if unknown:
        p.error(f"unknown volumes {unknown}; choose from {list(VOLUMES)} or {list(aliases)}")
    if args.budget is None:
        args.budget = 20.0 if args.quick else BUDGET
    if args.short_budget is None:
        args.short_budget = 0.0 if args.quick else SHORT_BUDGET
    if args.checkpoints is None:
        args.checkpoints = [5.0, 10.0] if args.quick else [30.0, 60.0, 120.0]
    args.rf_max_samples = args.rf_max_samples or None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_steps:
        folder = PRESETS_DIR / args.preset
    else:
        folder = QUICK_DIR if args.quick else RESULTS_DIR if args.seed == 0 else SEEDS_DIR / f"seed{args.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.volumes:
            crop = VOLUMES[name][2] if args.quick else None
            try:
                volume = protocol.load_volume(name, args.data_dir, crop)
            except FileNotFoundError as error:
                print(f"skipping {name}: {error}")
                continue
            for spec in specs_for(name, args):
                path = folder / spec.file_name(volume.labels.shape)
                if args.plan:
                    cost = f"~{args.budget:.0f} s training + prediction" if spec.method == "unet" else "features + fit + predict"
                    print(f"{'done ' if path.exists() else 'to do'}  {path.stem}  ({cost})")
                    continue
                if args.skip_existing and path.exists():
                    print(f"exists, skipped: {path.name}")
                    continue
                print(f"running {path.stem} ...", flush=True)
                record = run_spec(spec, volume, args)
                path.write_text(json.dumps(record, indent=1))
                print(f"  mean fg Dice {fmt(record['mean_fg_dice'])}  dice {[fmt(d) for d in record['dice']]}  "
                      f"train {record['train_seconds']:.1f} s  predict {record['predict_seconds']:.1f} s", flush=True)
    if args.plan:
        return 0
    if args.cpu_steps:
        text = preset_steps_report()
        write_section(PRESET_SECTION, text)
    elif args.seed != 0 and not args.quick:
        text = seed_report(seed_records())
        write_section(SEED_SECTION, text)
    else:
        text = report(folder, args.quick)
        if args.quick:
            (folder / "RESULTS_quick.md").write_text(text + "\n")
        else:
            write_section(SECTION, text)
            (folder / "README_summary.md").write_text(readme_summary(load_records(folder)) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
