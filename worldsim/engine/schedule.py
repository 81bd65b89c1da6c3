"""Flow-matching noise schedule: pure functions, shared by the engine and every training stage.

``x_s = (1 - s) x0 + s eps`` with noise level s in [0, 1] (timestep t = 1000 s); ``v = eps - x0``.
Timestep shift ``s' = k s / (1 + (k - 1) s)`` spends more steps at high noise (RECIPE.md).
"""

from __future__ import annotations

import torch

SIGMA_MIN = 1e-3  # when dividing by s (x0 -> v)


def shift_sigma(s, shift: float):
    """Warp noise levels: ``k s / (1 + (k - 1) s)``; shift 1 is the identity."""
    return shift * s / (1 + (shift - 1) * s)


def student_sigmas(steps: int, shift: float) -> list[float]:
    """Few-step list: timesteps 1000, 1000 - 1000/steps, ... (e.g. 4 -> [1000, 750, 500, 250]),
    warped through the shift. 1, 2 and 4 steps are nested subsets of the 4-step grid."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [float(shift_sigma(torch.tensor(1.0 - i / steps, dtype=torch.float64), shift)) for i in range(steps)]


def euler_sigmas(steps: int, shift: float) -> list[float]:
    """Multi-step grid for the teacher's ODE: steps + 1 levels from 1 down to 0, shifted."""
    base = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return [float(v) for v in shift_sigma(base, shift)]


def add_noise(x0, eps, sigma):
    """x_s for per-frame sigma (B, T) broadcast over (B, T, C, H, W)."""
    s = sigma.reshape(sigma.shape + (1,) * (x0.dim() - sigma.dim()))
    return (1 - s) * x0 + s * eps


def x0_to_v(x_t, x0, sigma):
    s = sigma.reshape(sigma.shape + (1,) * (x_t.dim() - sigma.dim())).clamp_min(SIGMA_MIN)
    return (x_t - x0) / s


def sample_sigma(shape, shift: float, generator=None, device=None, lo: float = 0.0, hi: float = 1.0):
    """Training noise levels: uniform in [lo, hi], then shifted (logit-normal is a later option)."""
    u = torch.rand(shape, generator=generator, device=device) * (hi - lo) + lo
    return shift_sigma(u, shift)
