r"""Fused noise-schedule update: model prediction + current sample -> next sample.

Flow matching: ``x_s = (1 - s) x0 + s eps``, velocity ``v = eps - x0``, so
``x0 = x_s - s v`` and ``v = (x_s - x0) / s``.

Modes (``s`` = sigma, ``s'`` = sigma_next, per row of ``x``):
  * ``renoise`` (few-step student): ``x' = (1 - s') x0_hat + s' eps_new`` with fresh noise;
  * ``euler`` (multi-step teacher):  ``x' = x + (s' - s) v_hat``.
``pred_type`` says whether ``pred`` is ``x0`` or ``v``; the other is derived with the formulas above
(``s`` clamped to at least ``SIGMA_MIN`` when dividing).

Rows: ``x`` and ``pred`` are (R, ...) and ``sigma``/``sigma_next`` are floats or (R,) tensors.
The output has ``x``'s dtype; all maths is fp32. Noise: ``noise`` if given, else drawn from
``seed`` (torch.Generator in the reference, Philox inside the Triton kernel: both deterministic
per seed, but not bitwise equal to each other).
"""

from __future__ import annotations

import torch

# Guarded: without Triton (macOS) triton/tl are None and the reference still runs.
from kernels.triton_utils import jit as _jit, on_device_of, round_to_out, tl, triton

SIGMA_MIN = 1e-3
MODES = ("renoise", "euler")


def _rows(val, R: int, device) -> torch.Tensor:
    if isinstance(val, (int, float)):
        return torch.full((R,), float(val), device=device, dtype=torch.float32)
    val = val.to(device=device, dtype=torch.float32).reshape(-1)
    if val.numel() == 1:
        return val.expand(R)
    if val.numel() != R:
        raise ValueError(f"sigma has {val.numel()} entries but x has {R} rows")
    return val


def _validate(x, pred, mode, pred_type):
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if pred_type not in ("x0", "v"):
        raise ValueError(f"pred_type {pred_type!r} is not 'x0' or 'v'")
    if pred.shape != x.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != x shape {tuple(x.shape)}")


def noise_update_torch(x, pred, sigma, sigma_next, mode: str, noise=None, seed: int = 0, pred_type: str = "x0"):
    """Torch reference (CPU production path and test oracle)."""
    _validate(x, pred, mode, pred_type)
    R = x.shape[0]
    shape = (R,) + (1,) * (x.dim() - 1)
    s = _rows(sigma, R, x.device).view(shape)
    s_next = _rows(sigma_next, R, x.device).view(shape)
    xf, pf = x.float(), pred.float()
    if mode == "renoise":
        x0 = pf if pred_type == "x0" else xf - s * pf
        if noise is None:
            gen = torch.Generator(device=x.device).manual_seed(int(seed))
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32)
        out = (1.0 - s_next) * x0 + s_next * noise.float()
    else:
        v = pf if pred_type == "v" else (xf - pf) / s.clamp_min(SIGMA_MIN)
        out = xf + (s_next - s) * v
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernel: one pass over the flattened (R, n) sample, one program per BLOCK elements. Every
# load is cast to fp32 at once (the interpreter gets bf16/fp16 arithmetic wrong; the compiled path
# runs the same code) and only the output is rounded to x's dtype. The operations and their order
# are the reference's, so with explicit noise the two agree up to fp32 rounding (FMA contraction on
# the GPU). Without ``noise``, eps is drawn in the kernel: ``tl.randn(seed, offset)`` is Philox keyed
# by the element's flat index, so it does not depend on BLOCK or the grid.
# ----------------------------------------------------------------------------------------------


@_jit
def _noise_update_kernel(
    X, PRED, NOISE, SIGMA, SIGMA_NEXT, OUT,  # pointers; SIGMA/SIGMA_NEXT: fp32 (R,); NOISE unused if not HAS_NOISE
    n_per_row, numel, seed,  # elements per row of x, total elements (< 2**31), Philox seed
    EULER: tl.constexpr,  # True: x' = x + (s' - s) v;  False ("renoise"): x' = (1 - s') x0 + s' eps
    PRED_V: tl.constexpr,  # True: pred is v;  False: pred is x0
    HAS_NOISE: tl.constexpr,  # renoise only: read eps from NOISE instead of drawing it
    SIGMA_MIN: tl.constexpr,  # clamp for s when dividing by it (x0 -> v)
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat element index
    mask = offs < numel
    row = offs // n_per_row
    s = tl.load(SIGMA + row, mask=mask, other=1.0)  # fp32 (BLOCK,)
    s_next = tl.load(SIGMA_NEXT + row, mask=mask, other=0.0)
    pred = tl.load(PRED + offs, mask=mask, other=0.0).to(tl.float32)
    if EULER:
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if PRED_V:
            v = pred
        else:  # v = (x_s - x0) / s; div_rn: IEEE division like torch, not the fast approximate one
            v = tl.math.div_rn(x - pred, tl.maximum(s, SIGMA_MIN))
        out = x + (s_next - s) * v
    else:
        if PRED_V:  # x0 = x_s - s v
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            x0 = x - s * pred
        else:  # x is not read at all: the hot few-step path moves 2 tensors, not 3
            x0 = pred
        if HAS_NOISE:
            eps = tl.load(NOISE + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            eps = tl.randn(seed, offs)
        out = (1.0 - s_next) * x0 + s_next * eps
    tl.store(OUT + offs, round_to_out(out, OUT.dtype.element_ty), mask=mask)


NOISE_BLOCK = 1024  # elements per program
NOISE_NUM_WARPS = 4  # 128 threads x 8 elements: wide enough for 16-byte fp32 loads


def unsupported(x) -> str | None:
    """Why the Triton kernel cannot take ``x`` (None if it can): the dispatch predicate."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"x dtype {x.dtype} (need fp32, fp16 or bf16)"
    if x.numel() >= 2**31:
        return f"x with {x.numel()} elements (the kernel indexes with int32)"
    return None


def _noise_launch(x, pred, sigma, sigma_next, mode, noise, seed, pred_type):
    """(grid, args, meta, out) of one launch, shared by the launcher and kernels/compile_check.py."""
    _validate(x, pred, mode, pred_type)
    why = unsupported(x)
    if why:
        raise ValueError(f"Triton noise update cannot take {why}")
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
    R, numel = x.shape[0], x.numel()
    s = _rows(sigma, R, x.device).contiguous()  # (R,) fp32; contiguous: an expanded scalar has stride 0
    s_next = _rows(sigma_next, R, x.device).contiguous()
    xc, pc = x.contiguous(), pred.contiguous()
    has_noise = mode == "renoise" and noise is not None
    nc = noise.contiguous() if has_noise else xc  # a dummy pointer when eps is drawn in the kernel
    out = torch.empty_like(xc)
    grid = (-(-numel // NOISE_BLOCK),)
    args = (xc, pc, nc, s, s_next, out, max(numel // max(R, 1), 1), numel, int(seed))
    meta = dict(EULER=mode == "euler", PRED_V=pred_type == "v", HAS_NOISE=has_noise, SIGMA_MIN=SIGMA_MIN,
                BLOCK=NOISE_BLOCK, num_warps=NOISE_NUM_WARPS)
    return grid, args, meta, out


def noise_update_triton(x, pred, sigma, sigma_next, mode: str, noise=None, seed: int = 0, pred_type: str = "x0"):
    """Triton launcher (same contract as ``noise_update_torch``)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    grid, args, meta, out = _noise_launch(x, pred, sigma, sigma_next, mode, noise, seed, pred_type)
    if x.numel():
        with on_device_of(x):
            _noise_update_kernel[grid](*args, **meta)
    return out
