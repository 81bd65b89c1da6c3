"""Pieces shared by the Triton kernels: the guarded import, the launch device, bf16 rounding.

Triton is Linux-only; on a machine without it ``triton``/``tl`` are None, ``jit`` leaves a kernel a
plain never-launched function (kernel annotations stay strings under ``from __future__ import
annotations``), and every module that defines kernels still imports.
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except Exception:  # pragma: no cover - depends on the platform (ImportError, or a broken install)
    triton = tl = None

    def jit(fn):
        return fn


def on_device_of(t: torch.Tensor):
    """Launch context: Triton launches on the current CUDA device, which need not be ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@jit
def round_to_out(x, OUT_DTYPE: tl.constexpr):
    """fp32 ``x`` cast to ``OUT_DTYPE`` with round-to-nearest-even.

    Why by hand for bf16: the interpreter (TRITON_INTERPRET=1, how the tests run) truncates on an
    fp32 -> bf16 cast, while the GPU rounds to nearest even. Rounding the fp32 bits first makes
    the cast exact on both, so the interpreter tests check what the GPU computes. Inf stays inf,
    NaN stays NaN, and a finite value rounding past the largest bf16 becomes inf, as RNE does.
    """
    if OUT_DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # add half an ulp, ties to even
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)  # drop the low 16 bits: exact in bf16
    return x.to(OUT_DTYPE)
