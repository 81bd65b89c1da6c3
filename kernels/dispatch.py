"""The one place that decides whether a Triton kernel or its torch reference runs.

``WORLDSIM_KERNELS``: ``auto`` (default) uses Triton for CUDA tensors when Triton imports and the
kernel takes the inputs (dtype, head dim), and the reference otherwise, falling back quietly (the
reason is logged once); ``torch`` forces the reference; ``triton`` demands Triton and raises if it
cannot run (set ``TRITON_INTERPRET=1`` to run Triton on CPU tensors, as the tests do).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger("worldsim.kernels")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the platform
        return f"triton unavailable ({type(e).__name__}: {e})"
    return None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=64)
def _log_once(msg: str) -> None:
    log.info(msg)


def use_triton(t: torch.Tensor, unsupported: str | None = None) -> bool:
    """Whether the Triton path serves tensors like ``t`` (device, availability, env override);
    ``unsupported`` is the kernel's own reason to decline these inputs, if any."""
    mode = os.environ.get("WORLDSIM_KERNELS", "auto").lower()
    if mode not in ("auto", "torch", "triton"):
        raise ValueError(f"WORLDSIM_KERNELS={mode!r} is not one of auto, torch, triton")
    if mode == "torch":
        _log_once("kernels: torch reference (WORLDSIM_KERNELS=torch)")
        return False
    err = _triton_import_error()
    on_device = t.is_cuda or (_interpret() and t.device.type == "cpu")
    if mode == "triton":
        if err:
            raise RuntimeError(f"WORLDSIM_KERNELS=triton but {err}")
        if not on_device:
            raise RuntimeError("WORLDSIM_KERNELS=triton needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        if unsupported:
            raise RuntimeError(f"WORLDSIM_KERNELS=triton but the kernel cannot take {unsupported}")
        return True
    if err:
        _log_once(f"kernels: torch reference because {err}")
        return False
    if not t.is_cuda:
        _log_once(f"kernels: torch reference on {t.device.type}")
        return False
    if unsupported:
        _log_once(f"kernels: torch reference for {unsupported}")
        return False
    return True


def block_causal_attention(q, k, v, kv_len, chunk_tokens, scale=None):
    """See ``kernels.attention``. Dispatches to Triton or the torch reference."""
    from kernels import attention

    if use_triton(q, attention.unsupported(q, k, v)):
        return attention.block_causal_attention_triton(q, k, v, kv_len, chunk_tokens, scale)
    return attention.block_causal_attention_torch(q, k, v, kv_len, chunk_tokens, scale)


def noise_update(x, pred, sigma, sigma_next, mode, noise=None, seed=0, pred_type="x0"):
    """See ``kernels.schedule_update``. Dispatches to Triton or the torch reference."""
    from kernels import schedule_update as nu

    if use_triton(x, nu.unsupported(x)):
        return nu.noise_update_triton(x, pred, sigma, sigma_next, mode, noise=noise, seed=seed, pred_type=pred_type)
    return nu.noise_update_torch(x, pred, sigma, sigma_next, mode, noise=noise, seed=seed, pred_type=pred_type)
