"""The README's and docs/ pages' code blocks run as written.

Every fenced ``bash`` and ``python`` block is collected in page order. Shell lines that
call ``napari-sparse-unet`` run in this process through the CLI's ``main`` (no new
interpreter per line); ``python -m benchmarks...`` lines run in a subprocess; Python
blocks run with ``exec`` in one namespace per page. All run in one temporary folder,
README first, so the pages' examples find the files that the README's demo writes
(``demo/image.tif``, ``demo/annotation.tif``, ``cells.pt``).

One change keeps this fast, and only this: training is cut to 2 steps (``--steps 2`` is
added to ``train`` and ``demo`` lines, ``max_steps=2`` next to a Python ``max_time=``).
What cannot run here is listed in NOT_RUN with the reason (each was run by hand); a
shell line neither run nor listed fails the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# A line (or Python block) containing the key is not run, for the reason given.
NOT_RUN = {
    "python3 -m venv .venv": "creates a virtual environment and installs from the network; checked by hand in a fresh clone",
    'pip install -e ".[all,test]" && xvfb-run -a python -m pytest': "installs packages and runs the test suite (.ci/run does)",
    "pip install torch": "installs from the network",
    'pip install "napari-sparse-unet[all]"': "installs from PyPI, where the package is not released yet",
    "scripts/screenshot.py": "trains for minutes in a napari window (run by hand to make docs/screenshot.png)",
    "--scheduler tcp://": "needs a running dask.distributed cluster",
    "Client(scheduler_address)": "needs a running dask.distributed cluster",
    "--workers 2": "starts Dask worker processes (tests/test_distributed.py covers block-wise prediction)",
    "napari-sparse-unet export ": "an export takes about 90 s on 2 cores (tests/test_bioimageio.py covers export)",
    "export_model(": "an export takes about 90 s on 2 cores (tests/test_bioimageio.py covers export)",
    "--model cells.zip": "needs the package that the export above writes",
}


def code_blocks(page: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of ``page``."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def shell_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" # ")[0].strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def not_run(text: str) -> str | None:
    return next((reason for key, reason in NOT_RUN.items() if key in text), None)


def shortened(argv: list[str]) -> list[str]:
    if argv[:1] in (["train"], ["demo"]):
        return [*argv, "--steps", "2"]
    return argv


def run_cli(argv: list[str]) -> int:
    from napari_sparse_unet.cli import main

    try:
        return main(shortened(argv))
    except SystemExit as exit_:  # --help and --version
        return int(exit_.code or 0)


def run_shell_line(line: str) -> None:
    command, _, fallback = line.partition(" || ")
    argv = shlex.split(command)
    if argv[0] == "napari-sparse-unet":
        status = run_cli(argv[1:])
    elif argv[:2] == ["python", "-m"] and argv[2].startswith("benchmarks."):
        status = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, timeout=60).returncode
    else:
        raise AssertionError(f"no rule to run {line!r}: run it, or list it in NOT_RUN with a reason")
    if fallback:  # "cmd || echo ...": the example shows a failing command
        assert status != 0, f"{line!r} was expected to fail"
    else:
        assert status == 0, f"{line!r} exited with {status}"


def run_python(block: str, namespace: dict) -> None:
    code = re.sub(r"max_time=(\d+)", r"max_time=\1, max_steps=2", block)
    exec(compile(code, "<docs>", "exec"), namespace)


def run_page(page: str) -> list[str]:
    """Run the page's blocks in the current folder; return what was not run, with why."""
    skipped: list[str] = []
    namespace: dict = {"__name__": "__docs__"}
    for language, block in code_blocks(page):
        if language == "python":
            reason = not_run(block)
            if reason:
                skipped.append(f"python block: {reason}")
            else:
                run_python(block, namespace)
        elif language == "bash":
            for line in shell_lines(block):
                reason = not_run(line)
                if reason:
                    skipped.append(f"{line}: {reason}")
                else:
                    run_shell_line(line)
    return skipped


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder where the README's blocks have run (so demo/ and cells.pt exist)."""
    folder = tmp_path_factory.mktemp("docs")
    with chdir(folder):
        skipped = run_page("README.md")
    return folder, skipped


def test_readme_blocks_run(workspace):
    _, skipped = workspace
    assert (workspace[0] / "cells.pt").is_file()
    # Left out: the install commands, the two set-up commands and the export.
    assert len(skipped) == 5, skipped


@pytest.mark.parametrize("page", [p for p in PAGES if p != "README.md"])
def test_docs_blocks_run(page, workspace):
    with chdir(workspace[0]):
        run_page(page)


def test_readme_fits_a_screen_or_two_and_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)\)", (ROOT / page).read_text(encoding="utf-8")):
            assert (ROOT / page).parent.joinpath(target).exists(), f"{page} links to missing {target}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "xvfb-run -a python -m pytest -q" in readme
    assert "xvfb-run -a python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
