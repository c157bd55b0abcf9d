"""What Windows and macOS users would hit first (issue 24), checked here by pretending to be them.

Windows refuses to replace or delete a file another process holds open or maps; these tests make
``os.replace`` refuse as Windows does and set ``sys.platform`` to see the code cope.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_sparse_unet
from napari_sparse_unet import io
from napari_sparse_unet.core import files
from napari_sparse_unet.core.files import atomic_file

REAL_REPLACE = os.replace
PACKAGE = Path(napari_sparse_unet.__file__).parent


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


class Refusals:
    """``os.replace`` into ``folder`` refusing with PermissionError the next ``left`` times, as Windows
    does while a virus scanner holds the file (moves inside a zarr store, zarr's own, are left alone);
    the waits between tries are recorded, not slept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.left = 0
        self.waits: list[float] = []

    def replace(self, source, target) -> None:
        if self.left and Path(target).parent == self.folder:
            self.left -= 1
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        REAL_REPLACE(source, target)


@pytest.fixture
def refusals(monkeypatch, tmp_path) -> Refusals:
    refusals = Refusals(tmp_path)
    monkeypatch.setattr(os, "replace", refusals.replace)
    monkeypatch.setattr(files.time, "sleep", refusals.waits.append)
    return refusals


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_windows_replace_is_tried_again_until_the_file_is_free(tmp_path, refusals, windows):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    refusals.left = 2
    with atomic_file(target) as temp:
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _listing(tmp_path) == ["model.pt"]
    assert len(refusals.waits) == 2


def test_windows_gives_up_after_a_few_seconds_and_keeps_the_old_file(tmp_path, refusals, windows):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    refusals.left = 100
    with pytest.raises(PermissionError):
        with atomic_file(target) as temp:
            temp.write_bytes(b"new")
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["model.pt"]
    assert 1 < sum(refusals.waits) < 10


def test_elsewhere_a_refused_replace_is_a_real_error_reported_at_once(tmp_path, refusals, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    refusals.left = 1
    with pytest.raises(PermissionError):
        with atomic_file(tmp_path / "out.npy") as temp:
            temp.write_bytes(b"new")
    assert refusals.waits == [] and _listing(tmp_path) == []


def test_a_zarr_output_replaces_the_old_folder_on_windows(tmp_path, refusals, windows):
    pytest.importorskip("zarr")
    target = tmp_path / "labels.zarr"
    io.write_volume(target, np.zeros((2, 4, 4), np.uint8))
    refusals.left = 2  # moving the old folder aside, then the new one into place
    io.write_volume(target, np.ones((2, 4, 4), np.uint8))
    assert (io.read_volume(target) == 1).all() and _listing(tmp_path) == ["labels.zarr"]


def test_the_error_that_matters_survives_a_temporary_file_windows_cannot_delete(tmp_path, monkeypatch):
    def locked(self, missing_ok=False):
        raise PermissionError(13, "being used by another process")

    with pytest.raises(ValueError, match="the prediction failed"):
        with atomic_file(tmp_path / "out.tif"):
            monkeypatch.setattr(type(tmp_path), "unlink", locked)
            raise ValueError("the prediction failed")


def test_npy_output_is_not_a_memory_map_on_windows(tmp_path, windows):
    target = tmp_path / "labels.npy"
    # The caller keeps its array after the block (cli/predict.py does): Windows could not move a mapped file.
    with io.create_output(target, (3, 4, 5), np.uint8) as out:
        out[1] = 7
    assert not isinstance(out, np.memmap)
    assert (np.load(target)[1] == 7).all() and _listing(tmp_path) == ["labels.npy"]


def test_npy_output_still_streams_through_a_memory_map_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with io.create_output(tmp_path / "labels.npy", (3, 4, 5), np.uint8) as out:
        assert isinstance(out, np.memmap)


def _text_io_without_encoding(tree: ast.AST):
    """Calls of open() in text mode, read_text() and write_text() that leave the encoding to the locale."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            yield node
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in mode.value):
                yield node


def test_text_files_are_read_and_written_as_utf8():
    # Windows' locale encoding is cp1252 (or another code page), not UTF-8 as on Linux and macOS.
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in _text_io_without_encoding(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == []


def test_the_encoding_check_finds_a_locale_dependent_call():
    calls = "open(p, 'w')\nopen(p, 'rb')\np.read_text()\np.write_text(s, encoding='utf-8')\nopen(p, encoding='ascii')\n"
    assert [node.lineno for node in _text_io_without_encoding(ast.parse(calls))] == [1, 3]


def test_on_apple_gpus_the_network_runs_in_float32_and_batches_are_copied_before_they_are_freed(monkeypatch):
    import torch

    from napari_sparse_unet.core import device

    mps, cuda = torch.device("mps"), torch.device("cuda")
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    assert device.resolve_device("auto") == mps and device.available_devices() == ["mps", "cpu"]
    assert device.autocast_dtype(mps, True) is None and device.autocast_dtype(mps, True, training=True) is None
    assert not device.has_float64(mps) and device.has_float64(cuda)
    assert not device.non_blocking_copy(mps) and device.non_blocking_copy(cuda)
