"""The voxel head's lookup tables on a GPU (CUDA) and on Apple's MPS, without either here (issue 24).

:class:`Elsewhere` is a CPU tensor that says it is on another device and fails as that device
does: an operation mixing it with a CPU tensor (one with dimensions: 0-dim ones are scalars to
torch), and, on MPS, any float64 tensor.  The knot table built and read on such a device must
give the numbers it gives on the CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from napari_sparse_unet.core.network.voxel_head import KnotTable, VoxelHead, _segment_grid


class Elsewhere(torch.Tensor):
    """``inner`` (a CPU tensor), as if on ``device``; operations on it run on the CPU."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, inner: torch.Tensor, device: torch.device):
        if device.type == "mps" and inner.dtype == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        tensor = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype, device=device)
        tensor.inner = inner
        return tensor

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return cls.run(func, args, kwargs)

    @classmethod
    def run(cls, func, args, kwargs):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        device = next(t.device for t in leaves if isinstance(t, cls))
        if any(isinstance(t, torch.Tensor) and not isinstance(t, cls) and t.dim() > 0 for t in leaves):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {device} and cpu!")
        args, kwargs = pytree.tree_map(lambda t: t.inner if isinstance(t, cls) else t, (args, kwargs))
        to_cpu = func is torch.ops.aten._to_copy.default and torch.device(kwargs.get("device", device)).type == "cpu"
        out = func(*args, **{**kwargs, "device": torch.device("cpu")} if "device" in kwargs else kwargs)
        if to_cpu:
            return out
        return pytree.tree_map(lambda t: cls(t, device) if isinstance(t, torch.Tensor) else t, out)


# Moves between devices: left to torch, which dispatches them as a copy (Elsewhere.run sees it).
MOVES = (torch.Tensor.to, torch.Tensor.cpu)


class PlacedElsewhere(TorchFunctionMode):
    """Tensors that code creates on, or moves to, ``device`` become :class:`Elsewhere` ones."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def _is_target(self, value) -> bool:
        return isinstance(value, (str, torch.device)) and torch.device(value).type == self.device.type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and any(self._is_target(a) for a in (*args[1:], kwargs.get("device"))):
            source = args[0]
            if isinstance(source, Elsewhere):
                return source
            dtypes = [a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)]
            return Elsewhere(source.to(*dtypes), self.device)
        if func not in MOVES and getattr(func, "__name__", "") != "__get__" and any(
            isinstance(a, Elsewhere) for a in pytree.tree_leaves((args, kwargs))
        ):  # torch's C++ bindings set the device up before dispatching (a device guard): run here
            return Elsewhere.run(func, args, kwargs)
        if self._is_target(kwargs.get("device")):
            return Elsewhere(func(*args, **{**kwargs, "device": "cpu"}), self.device)
        return func(*args, **kwargs)


# A GPU with float64 and one without.
DEVICES = [torch.device("cuda"), torch.device("mps")]


def _fitted_head(features: int = 3) -> VoxelHead:
    torch.manual_seed(0)
    head = VoxelHead(features, hidden=8, classes=2, bins=6)
    rows = np.random.default_rng(0).normal(size=(500, features)).astype(np.float32)
    rows[:50, 0] = 0.0  # ties, as zero padding gives
    head.fit_bins(rows, np.arange(500) % 2)
    return head.eval()


def _elsewhere(table: KnotTable, device: torch.device) -> KnotTable:
    return dataclasses.replace(table, **{f.name: Elsewhere(getattr(table, f.name), device) for f in dataclasses.fields(table)})


def test_the_stand_in_fails_as_the_devices_do():
    with pytest.raises(RuntimeError, match="same device"):
        Elsewhere(torch.ones(3), torch.device("cuda")) * torch.arange(3)
    with pytest.raises(TypeError, match="float64"):
        Elsewhere(torch.ones(3), torch.device("mps")).double()
    with PlacedElsewhere(torch.device("mps")):
        on_device = torch.arange(3, device="mps").to("mps")
    assert isinstance(on_device, Elsewhere) and torch.equal(on_device.cpu(), torch.arange(3))


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_the_segment_grid_is_worked_out_for_any_device(device):
    knots = _fitted_head().knot_table().knots
    expected = _segment_grid(knots)
    with PlacedElsewhere(device):
        grid = _segment_grid(Elsewhere(knots, device))
    assert grid.keys() == expected.keys()
    for name, tensor in grid.items():
        assert isinstance(tensor, Elsewhere) and torch.equal(tensor.cpu(), expected[name]), name


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_knot_table_lookups_on_the_device_give_the_cpu_numbers(device):
    table = _fitted_head().knot_table()
    x = torch.cat([table.knots.T, torch.randn(200, table.knots.shape[0])])  # values at the knots are searched
    x = torch.maximum(torch.minimum(x, table.high), table.low)
    expected_row, expected_fraction = table.rows(x)
    with PlacedElsewhere(device):
        row, fraction = _elsewhere(table, device).rows(Elsewhere(x, device))
    assert torch.equal(row.cpu(), expected_row) and torch.equal(fraction.cpu(), expected_fraction)


def test_bfloat16_lookups_on_a_gpu_give_the_cpu_numbers():
    device = torch.device("cuda")  # bfloat16 reaches the head under its autocast (MPS stays float32)
    table = _fitted_head().knot_table()
    x = torch.randn(300, table.knots.shape[0]).bfloat16()
    expected_row, expected_fraction = table.bfloat16_rows(x)
    with PlacedElsewhere(device):
        row, fraction = _elsewhere(table, device).bfloat16_rows(Elsewhere(x, device))
    assert torch.equal(row.cpu(), expected_row) and torch.equal(fraction.cpu(), expected_fraction)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_a_head_on_the_device_builds_the_cpu_table_there(device):
    head = _fitted_head()
    expected = head.knot_table()
    for module, name in ((head, "lower"), (head, "width"), (head.mlp[0], "weight"), (head.mlp[0], "bias")):
        tensors = module._buffers if name in module._buffers else module._parameters
        tensors[name] = Elsewhere(tensors[name].detach(), device)  # as head.to(device) leaves them
    with PlacedElsewhere(device), torch.no_grad():
        table = head.knot_table()
    for field in dataclasses.fields(table):
        tensor = getattr(table, field.name)
        assert isinstance(tensor, Elsewhere) and torch.equal(tensor.cpu(), getattr(expected, field.name)), field.name
