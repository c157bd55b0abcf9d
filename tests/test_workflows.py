"""The public CI's GitHub workflows (issue 24): valid for GitHub, and saying what they must.

The workflows cannot run here, so they are checked against GitHub's workflow schema (the copy
that ships inside check-jsonschema, no network) and read for the promises that matter: three
systems and two Pythons, a virtual display, CPU torch, and a release by trusted publishing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))


def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def _commands(job: dict) -> list[str]:
    """What ``job`` does, in order: each line its steps run, or the action a step uses."""
    return [line.strip() for step in job["steps"] for line in (step.get("run") or step["uses"]).splitlines()]


def _index(commands: list[str], pattern: str) -> int:
    found = [i for i, command in enumerate(commands) if re.search(pattern, command)]
    assert found, f"no step matches {pattern!r}"
    return found[0]


def test_there_are_workflows():
    assert {path.name for path in WORKFLOW_FILES} >= {"tests.yml", "release.yml"}


@pytest.mark.parametrize("schema", ["vendor.github-workflows", "custom.github-workflows-require-timeout"])
def test_workflows_validate_against_githubs_schema(schema):
    result = _check_jsonschema(schema, *WORKFLOW_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    step:\n      - run: pytest\n")
    assert _check_jsonschema("vendor.github-workflows", broken).returncode != 0


def _oldest_python() -> str:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', pyproject).group(1)


def test_tests_run_on_three_systems_for_the_oldest_and_newest_python():
    matrix = _load("tests.yml")["jobs"]["pytest"]["strategy"]["matrix"]
    systems = " ".join(matrix["os"])
    assert all(name in systems for name in ("ubuntu", "macos", "windows")), systems
    versions = matrix["python-version"]
    # Strings: YAML reads an unquoted 3.10 as the number 3.1.
    assert all(isinstance(version, str) for version in versions), versions
    as_tuples = sorted(tuple(map(int, version.split("."))) for version in versions)
    assert ".".join(map(str, as_tuples[0])) == _oldest_python()
    assert as_tuples[-1] >= (3, 13), "the newest Python with torch and napari wheels"
    # The hub page promises what CI tests: the newest tested Python is a classifier.
    newest = ".".join(map(str, as_tuples[-1]))
    assert f'"Programming Language :: Python :: {newest}"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_tests_install_cpu_torch_first_and_run_pytest_under_a_virtual_display():
    workflow = _load("tests.yml")
    commands = _commands(workflow["jobs"]["pytest"])
    display = _index(commands, r"setup-headless-display-action|xvfb")
    torch = _index(commands, r"pip install torch --index-url https://download\.pytorch\.org/whl/cpu")
    project = _index(commands, r'pip install -e "\.\[all,test\]"')
    pytest_step = _index(commands, r"python -m pytest")
    assert display < pytest_step and torch < project < pytest_step
    assert "workflow_call" in workflow["on"], "the release workflow runs the tests first"


def test_release_publishes_on_a_version_tag_by_trusted_publishing():
    workflow = _load("release.yml")
    assert workflow["on"]["push"]["tags"] == ["v*"]
    assert set(workflow["on"]) == {"push"} and "branches" not in workflow["on"]["push"]
    jobs = workflow["jobs"]
    assert jobs["tests"]["uses"] == "./.github/workflows/tests.yml"
    assert jobs["build"]["needs"] == "tests" and jobs["publish"]["needs"] == "build"
    build = _commands(jobs["build"])
    assert _index(build, r"python -m build") < _index(build, r"twine check")

    publish = jobs["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert any(command.startswith("pypa/gh-action-pypi-publish@") for command in _commands(publish))
    # No token anywhere (comments aside): the id-token is the only credential.
    assert not re.search(r"password|secrets\.|api[_-]?token|TWINE_", yaml.safe_dump(workflow), re.IGNORECASE)
    assert workflow["permissions"] == {"contents": "read"}


def test_releasing_says_how_in_five_lines():
    releasing = (REPO / "RELEASING.md").read_text(encoding="utf-8")
    steps = [line for line in releasing.splitlines() if re.match(r"\d+\. ", line)]
    assert len(steps) == 5, steps
    assert "CHANGELOG.md" in releasing and "release.yml" in releasing


def test_the_release_checks_the_tag_against_the_one_written_version():
    # pyproject.toml's version is dynamic (read from __version__): the release compares the tag with the built files.
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'dynamic\s*=\s*\[[^]]*"version"', pyproject)
    release = (REPO / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert '["project"]["version"]' not in release
    assert "GITHUB_REF_NAME" in release and "dist/napari_sparse_unet-$version" in release
    assert "__init__.py" in (REPO / "RELEASING.md").read_text(encoding="utf-8")
