"""Frames between the game and the model: uint8 pictures <-> model tensors, and the one resize.

Two layouts meet here. Games, episodes, recordings and the display speak uint8 ``(..., H, W, 3)``;
the model speaks float ``(..., 3, H, W)`` in [-1, 1] (``to_model``, ``to_uint8``; a uint8 value v maps
to ``v / 127.5 - 1`` and back exactly).

The resize is an exact area average, PIL's ``BOX`` filter: every output pixel is the mean of the
source pixels it covers, so thin Atari sprites stay visible where nearest or bilinear sampling would
drop or alias them; a non-square game is stretched to the target shape. It is what the training data
were made with (``worldsim.data.dataset`` caches its output), so every frame given to a model, a
context to play from, an evaluation episode, goes through ``resize_frames`` here and reaches the model
as its training frames did.

Boundary: numpy and torch only; no files, no model.
"""

from __future__ import annotations

import numpy as np
import torch

from worldsim.errors import DataError

RESIZE_METHOD = "pil-box-v1"  # names the resize in cache keys: change it when the resize changes


def resize_frames(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (n, h, w, 3) -> uint8 (n, H, W, 3) by exact area averaging (PIL BOX); ``size`` is R (square)
    or (H, W). Frames already at that size come back as they are (contiguous uint8)."""
    from PIL import Image

    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"frames have shape {frames.shape} and dtype {frames.dtype}; expected uint8 (n, h, w, 3) "
                        f"pictures (RGB, channels last)")
    if frames.shape[1:3] == (H, W):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), H, W, 3), np.uint8)  # (n, H, W, 3)
    for i, f in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((W, H), Image.BOX))
    return out


def to_model(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.dtype != torch.uint8 or x.dim() < 3 or x.shape[-1] != 3:
        raise DataError(f"frames have shape {tuple(x.shape)} and dtype {x.dtype}; expected uint8 (..., H, W, 3) "
                        f"pictures (RGB, channels last)")
    return scale_to_model(x.movedim(-1, -3))


def scale_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], layout and device kept: for frames already channels first (the clip
    datasets store (..., 3, R, R), moved to the device as uint8, a quarter of the bytes)."""
    return x.float().div_(127.5).sub_(1.0)


def scale_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 (rounded; values outside clipped), layout and device kept."""
    return ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (rounded; values outside [-1, 1] clipped)."""
    return scale_to_uint8(x).movedim(-3, -1).cpu().numpy()
