"""Axial rotary position embedding over (time, row, column).

Head dims are split into a temporal part and two spatial parts. Time positions are integer frame
indices that grow without bound in endless play, so angles are reduced modulo 2*pi in float64
before cos/sin: a key rotated at frame 10^6 is as exact as one at frame 10.
"""

from __future__ import annotations

import collections
import math

import torch

# Tables kept per frame position (each N x d/2 complex: 16 KB at the shipped size). Play visits each
# position in 2-3 forwards (the fused cache write, then the next chunk's steps) and a training clip
# reuses positions 0..T-1 every batch, so a few dozen cover both.
MEMO_FRAMES = 64  # entries: a frame's (cos, sin) tables and its complex (or real-pair) rotations


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
        # (pos, "tables") -> that frame's (cos, sin); (pos, "complex") -> its complex rotations (N, 1, d/2);
        # (pos, "real") -> the same as (cos, sin) pairs (N, 1, d/2, 2), for compiled graphs (no complex dtype)
        self._memo: collections.OrderedDict = collections.OrderedDict()

    def to(self, device):
        self.space_cos = self.space_cos.to(device)
        self.space_sin = self.space_sin.to(device)
        self._memo.clear()
        return self

    def _frame(self, p: int, form: str) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """One frame's (cos, sin) tables (``form`` "tables"), or its rotations ("complex", "real"), memoised."""
        key = (p, form)
        hit = self._memo.get(key)
        if hit is not None:
            try:
                self._memo.move_to_end(key)
            except KeyError:  # evicted meanwhile: a restarted play worker may share this model's tables
                pass
            return hit
        if form == "tables":
            hit = self._tables(torch.tensor([p]))
        else:
            hit = (complex_rotations if form == "complex" else real_rotations)(*self._frame(p, "tables"))
        self._memo[key] = hit
        while len(self._memo) > MEMO_FRAMES:
            try:
                self._memo.popitem(last=False)
            except KeyError:
                break
        return hit

    def rotations(self, frame_pos: torch.Tensor) -> torch.Tensor:
        """``complex_rotations(*tables(frame_pos))``: (F*N, 1, D/2) complex64 on the tables' device, for
        ``rotate``. Memoised per host position: play asks for the same few positions again and again,
        and building them (float64 angles, cos/sin) was ~4% of a played frame on the 2-core CPU."""
        if frame_pos.device.type != "cpu":  # positions on a GPU are not read back: built there
            return complex_rotations(*self._tables(frame_pos))
        blocks = [self._frame(p, "complex") for p in frame_pos.tolist()]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def real_rotations(self, frame_pos: torch.Tensor) -> torch.Tensor:
        """``real_rotations(*tables(frame_pos))``: (F*N, 1, D/2, 2) float32, the form ``rotate`` takes in
        an exported graph (``worldsim.engine.aot``: Inductor has no complex dtype). Memoised as ``rotations``."""
        if frame_pos.device.type != "cpu":
            return real_rotations(*self._tables(frame_pos))
        blocks = [self._frame(p, "real") for p in frame_pos.tolist()]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def tables(self, frame_pos: torch.Tensor):
        """cos, sin of shape (F*N, D/2) for frames at positions ``frame_pos`` (F,); per frame
        memoised for host positions (the KV cache re-rotates its sinks with them every frame)."""
        if frame_pos.device.type != "cpu":
            return self._tables(frame_pos)
        pairs = [self._frame(p, "tables") for p in frame_pos.tolist()]
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


def complex_rotations(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(L, 1, D/2) complex64 ``cos + i sin``: ``rotate``'s form of the tables (L, D/2), broadcast over heads."""
    return torch.complex(cos.float(), sin.float())[:, None, :]


def real_rotations(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(L, 1, D/2, 2) float32 (cos, sin) pairs: ``rotate``'s form of the tables for graphs without complex numbers."""
    return torch.stack((cos.float(), sin.float()), -1)[:, None]


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` of ``x`` (..., L, H, D) in float32, as one complex multiply: pair (x[2i], x[2i+1])
    is the number x[2i] + i x[2i+1], turned by ``rot`` (L, 1, D/2) from ``complex_rotations``.

    Why this form: on a 2-core CPU the per-op overhead, not the arithmetic, dominates a small model's
    forward; with 64-128 tokens of 4 heads it takes ~33 us where a batched matmul by (L, D, D)
    block-diagonal rotation matrices took ~68 us and the elementwise form ~10 ops. Returns float32.
    ``rot`` may also be ``real_rotations`` (L, 1, D/2, 2): the elementwise form, which a compiled graph
    fuses into one loop (``worldsim.engine.aot``); the same numbers to fp32 rounding.
    """
    if not rot.is_complex():
        return apply_rope(x.float(), *rot.unbind(-1))  # (L, 1, D/2) cos and sin broadcast over heads
    z = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(z * rot).flatten(-2)
