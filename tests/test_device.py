"""Device and precision choice: bfloat16 on CPUs only when forced or native."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sparse_unet.core import device as device_module
from napari_sparse_unet.core.config import ModelConfig, TrainConfig
from napari_sparse_unet.core.device import (
    CPU_BF16_ENV,
    autocast_dtype,
    precision_name,
    preferred_memory_format,
    resolve_device,
)
from napari_sparse_unet.core.network.model import build_model
from napari_sparse_unet.core.prediction.predictor import make_predictor
from napari_sparse_unet.core.training.train import Trainer

CPU = torch.device("cpu")


def test_env_forces_cpu_bfloat16_on_and_off(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert autocast_dtype(CPU, True) == torch.bfloat16
    assert autocast_dtype(CPU, False) is None  # the setting always wins
    assert precision_name(CPU, True) == "bfloat16"
    assert preferred_memory_format(CPU, torch.bfloat16, 3) == torch.channels_last_3d
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert autocast_dtype(CPU, True) is None
    assert precision_name(CPU, True) == "float32"


def test_cpu_training_stays_float32_unless_forced(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(device_module, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert autocast_dtype(CPU, True) == torch.bfloat16
    assert autocast_dtype(CPU, True, training=True) is None
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert autocast_dtype(CPU, True, training=True) == torch.bfloat16
    assert preferred_memory_format(CPU, None, 3) == torch.contiguous_format


def test_cpu_flags_decide_when_not_forced(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(device_module, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert autocast_dtype(CPU, True) is None
    monkeypatch.setattr(device_module, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert autocast_dtype(CPU, True) == torch.bfloat16


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_bfloat16_prediction_is_close_to_float32(monkeypatch):
    torch.manual_seed(0)
    config = ModelConfig(spatial_dims=3, in_channels=1, num_classes=3, pool_factors=((2, 2, 2),) * 2, base_channels=4)
    network = build_model(config).eval()
    x = torch.randn(1, 1, 16, 24, 24)
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    p32 = make_predictor(network, "cpu")(x)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    p16 = make_predictor(network, "cpu")(x)
    assert p16.dtype == torch.float32 and p16.shape == p32.shape
    assert torch.allclose(p16.sum(1), torch.ones(1, 16, 24, 24), atol=1e-5)
    assert (p16 - p32).abs().max() < 0.05  # bfloat16 keeps ~3 significant digits
    assert next(network.parameters()).is_contiguous()  # the caller's network is untouched


def test_cpu_training_learns_in_float32_even_where_prediction_uses_bfloat16(monkeypatch):
    # CPU bfloat16 training is not exercised here: its backward pass can crash the process.
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(device_module, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 32, 32)).astype(np.float32)
    truth = (image > 0.5).astype(np.uint8)
    image += 2.0 * truth
    annotation = np.zeros_like(truth)
    annotation[4] = truth[4] + 1
    annotation[11] = truth[11] + 1
    config = TrainConfig(max_steps=100, patch_size=(8, 16, 16), batch_size=2, base_channels=4, depth=2,
                         augment=False, validation=False, num_threads=1, learning_rate=1e-2,
                         voxel_head_width=0)  # the U-Net's own loss throughout (the voxel head's warm-up steps report another)
    trainer = Trainer(images=[image], annotations=[annotation], config=config)
    losses = [event.loss for event in trainer.run()]
    assert len(losses) == 100 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert autocast_dtype(trainer.device, config.mixed_precision, training=True) is None
