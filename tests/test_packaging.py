"""Packaging: import hygiene, the napari manifest, entry points, dependencies, metadata, the wheel."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import napari_sparse_unet

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(napari_sparse_unet.__file__).parent
SOURCE_URL = "https://github.com/napari-sparse-unet/napari-sparse-unet"
GUI_PREFIXES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")


def _modules_after_import(*modules: str) -> set[str]:
    """Top-level names in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _setuptools_major() -> int:
    return int(importlib.metadata.version("setuptools").split(".")[0])


def _core_modules() -> list[str]:
    core = importlib.import_module("napari_sparse_unet.core")
    return ["napari_sparse_unet.core"] + [f"napari_sparse_unet.core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]


def test_core_imports_neither_qt_nor_napari():
    modules = _core_modules()
    assert "napari_sparse_unet.core.config" in modules and len(modules) > 3
    loaded = _modules_after_import(*modules)
    gui = sorted(
        m for m in loaded if m.split(".")[0] in GUI_PREFIXES and not m.startswith("napari_sparse_unet")
    )
    assert not gui, f"importing the core loaded GUI modules: {gui[:10]}"


def test_package_sample_data_io_and_cli_do_not_import_torch():
    loaded = _modules_after_import(
        "napari_sparse_unet", "napari_sparse_unet._sample_data", "napari_sparse_unet.io", "napari_sparse_unet.cli"
    )
    assert "torch" not in loaded
    assert "napari" not in loaded and "qtpy" not in loaded


def test_widget_module_does_not_import_torch():
    loaded = _modules_after_import("napari_sparse_unet._qt.widget")
    assert "torch" not in loaded, "the widget module must import torch lazily, inside functions"


def test_manifest_is_valid_and_declares_widget_and_sample():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-sparse-unet")
    assert manifest.name == "napari-sparse-unet"
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    widgets = {w.command: w.display_name for w in manifest.contributions.widgets}
    samples = {s.key: (s.command, s.display_name) for s in manifest.contributions.sample_data}
    assert widgets == {"napari-sparse-unet.widget": "Sparse U-Net"}
    assert commands["napari-sparse-unet.widget"] == "napari_sparse_unet._qt.widget:SparseUNetWidget"
    assert samples == {
        "sparse_unet_sample": ("napari-sparse-unet.sample", "Sparse U-Net sample (3D cells, 4 painted slices)")
    }
    assert commands["napari-sparse-unet.sample"] == "napari_sparse_unet._sample_data:make_sample_data"


def test_manifest_python_names_resolve():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-sparse-unet")
    for command in manifest.contributions.commands:
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command.python_name


def test_npe2_validate_command_passes():
    pytest.importorskip("npe2")
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-sparse-unet"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_root_manifest_is_the_packaged_one():
    assert (PACKAGE / "napari.yaml").is_file() and not (PACKAGE / "napari.yaml").is_symlink()
    if (REPO / "napari.yaml").exists():
        assert (REPO / "napari.yaml").read_text() == (PACKAGE / "napari.yaml").read_text()


def test_entry_points_point_at_real_objects():
    dist = importlib.metadata.distribution("napari-sparse-unet")
    entry_points = {(ep.group, ep.name): ep for ep in dist.entry_points}
    assert entry_points[("console_scripts", "napari-sparse-unet")].load() is importlib.import_module(
        "napari_sparse_unet.cli"
    ).main
    assert entry_points[("napari.manifest", "napari-sparse-unet")].value == "napari_sparse_unet:napari.yaml"


def test_dependencies_are_ranges_without_a_qt_binding():
    project = _pyproject()["project"]
    base = project["dependencies"]
    names = {dep.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower() for dep in base}
    assert {"numpy", "torch", "napari", "magicgui", "qtpy", "tifffile"} <= names
    assert not names & {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert not any("napari[" in dep for dep in base), "napari[all] belongs in the 'all' extra"
    assert not any("==" in dep for dep in base), "pin nothing in the base dependencies"
    extras = project["optional-dependencies"]
    assert any(dep.startswith("napari[all]") for dep in extras["all"])
    assert any(dep.startswith("pytest") for dep in extras["test"])


def test_package_imports_only_declared_dependencies():
    """Every third-party module imported anywhere in the package is a declared dependency."""
    import ast

    project = _pyproject()["project"]
    declared = " ".join(project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps])
    # import name -> distribution name, where they differ
    provided_by = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image"}
    stdlib = set(sys.stdlib_module_names) | {"napari_sparse_unet", "__future__"}
    missing = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and provided_by.get(top, top).lower() not in declared.lower():
                    missing.add(f"{top} ({path.relative_to(PACKAGE)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_version_is_written_once():
    """The metadata reads __version__ (no second copy to forget); the changelog names it."""
    pyproject = _pyproject()
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_sparse_unet.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", napari_sparse_unet.__version__)
    assert f"## {napari_sparse_unet.__version__}" in (REPO / "CHANGELOG.md").read_text(encoding="utf-8")


def test_hub_metadata_links_classifiers_and_licence():
    """What the napari hub and PyPI show: links, keywords, supported Pythons and systems, the licence."""
    project = _pyproject()["project"]
    urls = project["urls"]
    assert urls["Source Code"] == SOURCE_URL
    assert urls["Bug Tracker"] == f"{SOURCE_URL}/issues" and urls["Documentation"].startswith(SOURCE_URL)
    assert all(url.startswith(SOURCE_URL) for url in urls.values()), urls
    assert "napari" in project["keywords"] and len(project["description"]) < 200
    classifiers = project["classifiers"]
    assert "Framework :: napari" in classifiers
    assert {c for c in classifiers if c.startswith("Operating System")} >= {
        "Operating System :: POSIX :: Linux", "Operating System :: MacOS"
    }
    oldest = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert f"Programming Language :: Python :: {oldest}" in classifiers
    # PEP 639: an SPDX expression and the licence file; a licence classifier beside them is an error.
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in classifiers)
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "napari-sparse-unet contributors" in licence and "Neither the name of the copyright holder" in licence


@pytest.mark.slow
def test_wheel_ships_the_manifest_as_a_file(tmp_path):
    """A wheel (what PyPI users install) carries napari.yaml itself, not a link, the licence and the version."""
    # Build from a copy, so the build leaves nothing in the working tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "napari.yaml"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name, follow_symlinks=False)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"), symlinks=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0 and "setuptools" in result.stderr and "No module named" in result.stderr:
        pytest.skip("setuptools is not installed in this environment")
    if result.returncode != 0 and "license" in result.stderr and _setuptools_major() < 77:
        pytest.skip("this environment's setuptools predates the licence fields (build-system asks for >= 77)")
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("napari_sparse_unet-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        manifest = zf.read("napari_sparse_unet/napari.yaml").decode()
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        licence = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert manifest == (PACKAGE / "napari.yaml").read_text()
    assert "napari_sparse_unet:napari.yaml" in entry_points
    assert f"\nVersion: {napari_sparse_unet.__version__}\n" in metadata
    assert licence == (REPO / "LICENSE").read_text()
