"""Device and dtype policy, decided in one place.

Order: CUDA, then MPS, then CPU. Compute dtype: bf16 autocast on CUDA and on CPUs with native
bf16 (AVX-512 BF16 / AMX: about 3x fp32 there), fp32 elsewhere. ``WORLDSIM_DEVICE`` and
``WORLDSIM_DTYPE`` override the choice (e.g. ``WORLDSIM_DTYPE=fp32`` for exact comparisons).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from worldsim.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    name = requested or os.environ.get("WORLDSIM_DEVICE") or "auto"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu")
    return dev


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 matmuls (AVX512-BF16 or AMX)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype '{name}'; use one of fp32, bf16, fp16") from None


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """The autocast dtype for ``device`` (fp32 means: no autocast)."""
    name = requested or os.environ.get("WORLDSIM_DTYPE") or "auto"
    if name != "auto":
        return parse_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for ``dtype``; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
