"""What the engine-run benchmarks share: volume aliases, their command line, the JSON-lines record file.

``expert_ablation.py`` and ``head_vs_forest.py`` train the engine on one protocol
annotation per volume with preset fields overridden (``--set FIELD=JSON``), append one
JSON line per run to their results file and rebuild their RESULTS.md section from all lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from _report import write_section
from sparse_accuracy import VOLUMES as ACCURACY_VOLUMES

# alias -> folder name, as sparse_accuracy.py names them
VOLUMES = {alias: name for name, (alias, _, _) in ACCURACY_VOLUMES.items()}


def engine_run_parser(description: str) -> argparse.ArgumentParser:
    """The options every engine-run benchmark takes; add its own before parsing."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--volumes", nargs="+", default=list(VOLUMES), help=f"aliases {list(VOLUMES)} or folder names")
    p.add_argument("--k", type=int, default=5, help="painted z-slices")
    p.add_argument("--auto", action="store_true", help="paint k z-slices of the first half, score the unseen half")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="override a TrainConfig field")
    p.add_argument("--report-only", action="store_true")
    return p


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=JSON`` strings -> TrainConfig overrides (JSON lists become tuples)."""
    overrides = {}
    for item in items:
        key, value = item.split("=", 1)
        value = json.loads(value)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def run_and_report(args, run: Callable[[str, argparse.Namespace], dict], summary: Callable[[dict], dict],
                   results_file: Path, section: str, report: Callable[[list[dict]], str]) -> None:
    """Run every volume of ``args`` (unless --report-only), append its record, print ``summary``, rebuild the section."""
    args.overrides = parse_overrides(args.set)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        results_file.parent.mkdir(parents=True, exist_ok=True)
        for name in args.volumes:
            record = run(VOLUMES.get(name, name), args)
            with results_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(summary(record)), flush=True)
    lines = results_file.read_text().splitlines() if results_file.exists() else []
    write_section(section, report([json.loads(line) for line in lines if line.strip()]))
