"""Where the network runs and at which precision.

Mixed precision is used only where it is fast and safe: CUDA (bfloat16 when
supported, else float16), and for *prediction* on CPUs with native bfloat16
matrix units (Intel AMX or AVX512-BF16), where oneDNN runs 3-D convolutions
2-3x faster in bfloat16.  On other CPUs bfloat16 is emulated and slower than
float32, so it stays off.  CPU *training* stays float32: with torch 2.13 the
bfloat16 backward pass of our 3-D U-Net crashed (segmentation fault) or hung
for some patch shapes, e.g. 2×1×8×96×96, while the forward pass was fine;
``NAPARI_SPARSE_UNET_CPU_BF16=1`` turns it on for experiments.
Weights, losses and softmax stay float32 in every case.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from .errors import InputError
from .rules import check_device_name

# "1" forces CPU bfloat16 on (training too), "0" off (benchmarks compare the two; tests pin one).
CPU_BF16_ENV = "NAPARI_SPARSE_UNET_CPU_BF16"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; other names are checked."""
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available")
    if name == "mps" and not _mps_available():
        raise InputError("device 'mps' was requested but Apple's MPS backend is not available")
    return torch.device(name)


def has_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64: Apple's MPS does not (moving a float64 tensor there fails)."""
    return device.type != "mps"


def non_blocking_copy(device: torch.device) -> bool:
    """Whether a copy from ordinary (pageable) CPU memory to ``device`` may be non-blocking: on CUDA
    it may (the source is read before the call returns); MPS may read the source after it returns,
    when a training batch's numpy array can already be freed: wrong values, silently
    (pytorch/pytorch#189690, open with torch 2.13)."""
    return device.type == "cuda"


def available_devices() -> list[str]:
    """Device names usable on this machine (of :data:`~.rules.DEVICE_NAMES`), best first, for pickers."""
    usable = {"cuda": torch.cuda.is_available(), "mps": _mps_available(), "cpu": True}  # best first
    return [name for name, available in usable.items() if available]


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_bf16_forced() -> bool | None:
    """What ``NAPARI_SPARSE_UNET_CPU_BF16`` says: True ("1"), False ("0"), or None (unset)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    return forced == "1" if forced in ("0", "1") else None


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (or the environment variable says so)."""
    forced = _cpu_bf16_forced()
    return forced if forced is not None else bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def autocast_dtype(device: torch.device, mixed_precision: bool, training: bool = False) -> torch.dtype | None:
    """The autocast dtype to use on ``device``, or ``None`` for plain float32."""
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        # Training only when forced: see the module docstring, the CPU bfloat16 backward pass is not safe.
        use_bf16 = _cpu_bf16_forced() is True if training else cpu_has_fast_bf16()
        return torch.bfloat16 if use_bf16 else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``; a no-op context for ``None`` (float32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def precision_name(device: torch.device, mixed_precision: bool, training: bool = False) -> str:
    """'bfloat16', 'float16' or 'float32', for what the command line prints."""
    dtype = autocast_dtype(device, mixed_precision, training)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def preferred_memory_format(device: torch.device, dtype: torch.dtype | None, spatial_dims: int) -> torch.memory_format:
    """Channels-last for oneDNN's bfloat16 convolutions on the CPU (1.2-1.5x faster there), else contiguous."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    return torch.contiguous_format
