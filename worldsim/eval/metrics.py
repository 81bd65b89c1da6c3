"""Frame metrics: PSNR, SSIM, colour histograms and frame statistics. Pure functions, no model.

Boundary: images in, numbers out. Images are float tensors (N, 3, H, W) in [0, 1] (``to_unit``
converts uint8 (N, H, W, 3)); every function returns one value per image so callers can average
per horizon step, per window or per setting.

SSIM (Wang, Bovik, Sheikh, Simoncelli 2004, "Image quality assessment: from error visibility to
structural similarity"): local statistics under an 11x11 Gaussian window (sigma 1.5)

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

with C1 = (0.01 L)^2, C2 = (0.03 L)^2 (L = data range, 1 here), computed per RGB channel over the
"valid" window positions (no padding, as in the reference MATLAB code) and averaged over channels
and positions. Images smaller than the window use the largest odd window that fits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PSNR_MAX_DB = 100.0  # identical images: a finite cap so averages and JSON stay numbers
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
HIST_BINS = 8  # per channel: a joint 8x8x8 colour histogram


def to_unit(frames) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or tensor -> float32 (N, 3, H, W) in [0, 1]."""
    t = frames if isinstance(frames, torch.Tensor) else torch.tensor(np.asarray(frames))  # copies: inputs may be read-only views
    return t.permute(0, 3, 1, 2).float() / 255.0


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, in float64: (N,)."""
    return (x.double() - y.double()).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, max_db: float = PSNR_MAX_DB,
         err: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(L^2 / MSE), capped at ``max_db``: (N,).
    ``err``: the images' ``mse`` when the caller has it already."""
    err = mse(x, y) if err is None else err
    floor = data_range**2 * 10 ** (-max_db / 10)  # the MSE at which the cap is reached
    return (10 * torch.log10(data_range**2 / err.clamp_min(floor))).float()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (size,), float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.pow(2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Mean SSIM per image of (N, C, H, W) tensors: (N,). Computed in float64 (E[x^2] - mu^2 cancels)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    N, C, H, W = x.shape
    size = min(size, H, W)
    size -= 1 - size % 2  # odd, so the window has a centre
    g = gaussian_window(size, sigma).to(x.device)
    gh, gv = g.view(1, 1, 1, size).repeat(C, 1, 1, 1), g.view(1, 1, size, 1).repeat(C, 1, 1, 1)

    def blur(t):  # separable Gaussian, valid positions only: (N, C, H-size+1, W-size+1)
        return F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)

    x, y = x.double(), y.double()
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1).float()


# ---------------------------------------------------------------------------------------------
# frame statistics for long-horizon health


def color_histogram(frames: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Joint RGB histogram of uint8 (N, H, W, 3) frames, ``bins`` per channel, summing to 1: (bins^3,)."""
    q = (np.asarray(frames, np.uint8).reshape(-1, 3).astype(np.int64) * bins) // 256  # (P, 3) bin per channel
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = np.bincount(idx, minlength=bins**3).astype(np.float64)
    return h / max(h.sum(), 1.0)


def hist_l1(p: np.ndarray, q: np.ndarray) -> float:
    """L1 distance of two normalised histograms, in [0, 2] (0: same colours in the same amounts)."""
    return float(np.abs(p - q).sum())


class FrameStats:
    """Running statistics of a stream of uint8 (H, W, 3) frames: intensity mean and std (in [0, 1]),
    joint colour histogram, mean absolute change between consecutive frames (0 means frozen).
    ``after``: the frame just before the first one added (a window of a longer stream), so the
    change into the first frame counts too."""

    def __init__(self, bins: int = HIST_BINS, after: np.ndarray | None = None):
        self.bins = bins
        self.n = 0
        self.sum = self.sumsq = 0.0
        self.pixels = 0
        self.hist = np.zeros(bins**3)
        self.change_sum, self.change_n = 0.0, 0
        self._last = None if after is None else np.asarray(after, np.float64) / 255.0  # (H, W, 3)

    def add(self, frames: np.ndarray, continues: bool = True) -> None:
        """Add consecutive frames (N, H, W, 3); ``continues=False`` starts a new sequence (no change
        measured across the gap, e.g. between two episodes)."""
        f = np.asarray(frames, np.uint8)
        if len(f) == 0:
            return
        x = f.astype(np.float64) / 255.0  # (N, H, W, 3)
        self.n += len(f)
        self.sum += float(x.sum())
        self.sumsq += float((x * x).sum())
        self.pixels += x.size
        self.hist += color_histogram(f, self.bins) * f[..., 0].size
        seq = x if (self._last is None or not continues) else np.concatenate([self._last[None], x])
        if len(seq) > 1:
            self.change_sum += float(np.abs(np.diff(seq, axis=0)).mean(axis=(1, 2, 3)).sum())
            self.change_n += len(seq) - 1
        self._last = x[-1]

    def summary(self, reference_hist: np.ndarray | None = None) -> dict:
        mean = self.sum / max(self.pixels, 1)
        var = max(self.sumsq / max(self.pixels, 1) - mean**2, 0.0)
        hist = self.hist / max(self.hist.sum(), 1.0)
        out = {"frames": self.n, "mean": mean, "std": math.sqrt(var),
               "temporal_change": self.change_sum / self.change_n if self.change_n else None}
        if reference_hist is not None:
            out["hist_l1"] = hist_l1(hist, reference_hist)
        return out

    @property
    def normalised_hist(self) -> np.ndarray:
        return self.hist / max(self.hist.sum(), 1.0)
