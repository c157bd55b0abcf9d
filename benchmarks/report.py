"""Shared helpers for benchmark scripts: machine facts and RESULTS.md sections.

Each benchmark owns one section of ``benchmarks/RESULTS.md``, delimited by
HTML comments, and rewrites only that section, so scripts can run in any order.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each section says how it was made.\n"


def proc_bytes(path: str, field: str) -> int:
    """A "<field>: N kB" line of a /proc file (e.g. /proc/meminfo MemAvailable) in bytes; 0 if absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_summary() -> str:
    """One line: CPU, cores, torch threads, device, versions, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"device {device}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section called ``name`` in RESULTS.md."""
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
