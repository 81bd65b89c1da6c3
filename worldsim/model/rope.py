"""Axial rotary position embedding over (time, row, column).

Head dims are split into a temporal part and two spatial parts. Time positions are integer frame
indices that grow without bound in endless play, so angles are reduced modulo 2*pi in float64
before cos/sin: a key rotated at frame 10^6 is as exact as one at frame 10.
"""

from __future__ import annotations

import collections
import math

import torch

# Rotation blocks kept per frame position (each N x d x d: 0.5 MB in bf16 at the shipped size). Play
# visits each position in 2-3 forwards (the fused cache write, then the next chunk's steps) and a
# training clip reuses positions 0..T-1 every batch, so a few dozen cover both.
MEMO_FRAMES = 64  # entries: a frame's tables and its rotation block in each dtype used


def split_dims(head_dim: int) -> tuple[int, int, int]:
    """(time, row, col) dims, each even, summing to ``head_dim``."""
    dt = 2 * max(1, head_dim // 8)  # a quarter of the dims for time
    ds = (head_dim - dt) // 4 * 2
    dt = head_dim - 2 * ds
    return dt, ds, ds


def _freqs(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """(..., dim/2) float64 angles in [0, 2*pi) for integer positions ``pos``."""
    a = pos.to(torch.float64)[..., None] * _freqs(dim, theta).to(pos.device)
    return torch.remainder(a, 2 * math.pi)


class AxialRope:
    """Precomputes the spatial tables once; the temporal table per call (few frames)."""

    def __init__(self, head_dim: int, grid: int, theta_time: float = 1000.0, theta_space: float = 100.0,
                 device=None):
        self.dt, self.ds, _ = split_dims(head_dim)
        self.theta_time = theta_time
        rows = torch.arange(grid).repeat_interleave(grid)
        cols = torch.arange(grid).repeat(grid)
        sp = torch.cat([angles(rows, self.ds, theta_space), angles(cols, self.ds, theta_space)], -1)  # (N, ds)
        self.space_cos = sp.cos().float().to(device)
        self.space_sin = sp.sin().float().to(device)
        self.tokens = grid * grid
        # (pos, None) -> that frame's (cos, sin); (pos, dtype) -> its rotation block (N, d, d)
        self._memo: collections.OrderedDict = collections.OrderedDict()

    def to(self, device):
        self.space_cos = self.space_cos.to(device)
        self.space_sin = self.space_sin.to(device)
        self._memo.clear()
        return self

    def _frame(self, p: int, dtype) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """One frame's (cos, sin) tables (dtype None) or rotation block (dtype), memoised."""
        key = (p, dtype)
        hit = self._memo.get(key)
        if hit is not None:
            try:
                self._memo.move_to_end(key)
            except KeyError:  # evicted meanwhile: a restarted play worker may share this model's tables
                pass
            return hit
        if dtype is None:
            hit = self._tables(torch.tensor([p]))
        else:
            hit = rope_matrices(*self._frame(p, None)).to(dtype)
        self._memo[key] = hit
        while len(self._memo) > MEMO_FRAMES:
            try:
                self._memo.popitem(last=False)
            except KeyError:
                break
        return hit

    def matrices(self, frame_pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``rope_matrices(*tables(frame_pos))`` in ``dtype``: (F*N, d, d) on the tables' device.
        Why memoised: building them was ~4% of a played frame on the 2-core CPU (float64 angles,
        cos/sin, a scatter into zeros), for the same few positions again and again."""
        if frame_pos.device.type != "cpu":  # positions on a GPU are not read back: built there
            return rope_matrices(*self._tables(frame_pos)).to(dtype)
        blocks = [self._frame(p, dtype) for p in frame_pos.tolist()]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def tables(self, frame_pos: torch.Tensor):
        """cos, sin of shape (F*N, D/2) for frames at positions ``frame_pos`` (F,); per frame
        memoised for host positions (the KV cache re-rotates its sinks with them every frame)."""
        if frame_pos.device.type != "cpu":
            return self._tables(frame_pos)
        pairs = [self._frame(p, None) for p in frame_pos.tolist()]
        if len(pairs) == 1:
            return pairs[0]
        return torch.cat([c for c, _ in pairs]), torch.cat([s for _, s in pairs])

    def _tables(self, frame_pos: torch.Tensor):
        t = angles(frame_pos, self.dt, self.theta_time)  # (F, dt/2)
        F, N = t.shape[0], self.tokens
        t_cos = t.cos().float().to(self.space_cos.device)
        t_sin = t.sin().float().to(self.space_cos.device)
        cos = torch.cat([t_cos[:, None, :].expand(F, N, -1), self.space_cos[None].expand(F, N, -1)], -1)
        sin = torch.cat([t_sin[:, None, :].expand(F, N, -1), self.space_sin[None].expand(F, N, -1)], -1)
        return cos.reshape(F * N, -1), sin.reshape(F * N, -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of ``x`` (..., L, D) by the angles behind ``cos``/``sin`` (L, D/2)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)


def rope_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(L, D, D) block-diagonal rotations, so that ``x @ R`` equals ``apply_rope(x, cos, sin)``.

    One batched matmul per tensor instead of ~10 elementwise ops: on a 2-core CPU the per-op
    overhead, not the arithmetic, dominates a small model's forward.
    """
    L, half = cos.shape
    R = cos.new_zeros(L, half, 2, half, 2)
    i = torch.arange(half, device=cos.device)
    R[:, i, 0, i, 0] = cos
    R[:, i, 0, i, 1] = sin
    R[:, i, 1, i, 0] = -sin
    R[:, i, 1, i, 1] = cos
    return R.reshape(L, 2 * half, 2 * half)
