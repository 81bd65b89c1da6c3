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


def noise_update_triton(x, pred, sigma, sigma_next, mode: str, noise=None, seed: int = 0, pred_type: str = "x0"):
    raise NotImplementedError("Triton noise-update kernel not written yet")
