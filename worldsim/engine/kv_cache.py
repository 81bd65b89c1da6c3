"""KV cache with S sink frames and a rolling window of W frames: bounded memory, constant cost.

Buffer layout per layer, in tokens (N per frame), for k and v, shape (B, Hkv, slots*N, D):

    [ sink frames 0..S-1 | window ring W frames | scratch: room for the frames in flight ]

Frames are committed in order: the first S go to the sink slots, the rest fill the window ring;
once the ring is full each new frame overwrites the oldest. Until then the valid slots form a
prefix, and afterwards all S+W are valid, so attention always reads a valid prefix ``[0, kv_len)``
followed, in the scratch area, by the keys of the frames being computed. Order inside the prefix
does not matter: every cached key is visible to every query.

Keys are stored already rotated (RoPE) at their absolute frame position, so only relative
distances count. Sink frames would drift ever further from the window; instead they are re-rotated
to sit just before the oldest window frame (from an fp32 un-rotated copy), which keeps every
distance the model sees within what it saw in training.
"""

from __future__ import annotations

import torch

from worldsim.model.rope import apply_rope


class KVCache:
    def __init__(self, *, layers: int, batch: int, kv_heads: int, head_dim: int, tokens_per_frame: int,
                 sink: int, window: int, scratch_frames: int, rope, device, dtype):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.L, self.B, self.H, self.D, self.N = layers, batch, kv_heads, head_dim, tokens_per_frame
        self.S, self.W, self.scratch_frames = sink, window, scratch_frames
        self.rope = rope
        slots = (sink + window + scratch_frames) * tokens_per_frame
        shape = (batch, kv_heads, slots, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        # Un-rotated fp32 sink keys of every layer in one tensor, so that re-rotating them is one call
        # (per-layer views for the writes).
        self._sink_raw_all = torch.zeros((layers, batch, kv_heads, sink * tokens_per_frame, head_dim), device=device,
                                         dtype=torch.float32)
        self.sink_raw = list(self._sink_raw_all.unbind(0))
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames committed since reset (the next frame's absolute position)
        self.valid = 0  # valid frame slots (<= S + W)
        self.ring_next = 0  # next window slot to write, 0..W-1
        self.slot_pos = [0] * (self.S + self.W)  # absolute position of each slot's frame
        self.pending = 0  # frames currently in scratch

    @property
    def full(self) -> bool:
        return self.valid == self.S + self.W

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v + self.sink_raw)

    _COUNTERS = ("frames", "valid", "ring_next", "pending")

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything ``load_state`` needs to go on exactly from here: (tensors, JSON-able counters)."""
        tensors = {f"k{i}": k for i, k in enumerate(self.k)}
        tensors.update({f"v{i}": v for i, v in enumerate(self.v)})
        tensors["sink_raw"] = self._sink_raw_all
        return tensors, {**{k: getattr(self, k) for k in self._COUNTERS}, "slot_pos": list(self.slot_pos)}

    def load_state(self, tensors: dict[str, torch.Tensor], counters: dict) -> None:
        """Restore a ``state()`` into a cache of the same shape (copies; the buffers' dtype is the saved one)."""
        dev = self._sink_raw_all.device
        self.k = [tensors[f"k{i}"].to(dev).clone() for i in range(self.L)]
        self.v = [tensors[f"v{i}"].to(dev).clone() for i in range(self.L)]
        self._sink_raw_all.copy_(tensors["sink_raw"])  # in place: ``sink_raw`` holds views of it
        for k in self._COUNTERS:
            setattr(self, k, int(counters[k]))
        self.slot_pos = [int(p) for p in counters["slot_pos"]]

    def next_positions(self, n: int, device=None) -> torch.Tensor:
        """Absolute frame positions of the next ``n`` frames (on the host by default: the model
        memoises its rotations per position, which a GPU tensor would have to be read back for)."""
        return torch.arange(self.frames, self.frames + n, device=device)

    def write_scratch(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Put the current frames' k, v (B, Hkv, M, D) after the valid prefix; return the buffers
        and the valid length including them, for attention."""
        M = k.shape[2]
        start = self.valid * self.N
        if start + M > self.k[layer].shape[2]:
            raise ValueError(f"{M // self.N} frames in flight exceed the cache scratch of {self.scratch_frames}")
        if self.k[layer].dtype != k.dtype:  # first write decides the storage dtype (autocast or not)
            self.k[layer] = self.k[layer].to(k.dtype)
            self.v[layer] = self.v[layer].to(k.dtype)
        self.k[layer][:, :, start:start + M] = k
        self.v[layer][:, :, start:start + M] = v
        self.pending = M // self.N
        return self.k[layer], self.v[layer], start + M

    def commit(self, n: int) -> None:
        """Keep the first ``n`` frames now in scratch (their k, v were written by the last forward)."""
        if n > self.pending:
            raise ValueError(f"commit of {n} frames but only {self.pending} in scratch")
        N = self.N
        base = self.valid  # scratch frame f sits at slot base + f
        moved_window = False
        for f in range(n):
            pos = self.frames
            src = (base + f) * N
            if pos < self.S:  # a sink frame: keep an un-rotated fp32 copy for later re-rotation
                dst = pos
                cos, sin = self.rope.tables(torch.tensor([pos]))
                for l in range(self.L):
                    self.sink_raw[l][:, :, dst * N:(dst + 1) * N] = apply_rope(
                        self.k[l][:, :, src:src + N].float(), cos, -sin)
            else:
                dst = self.S + self.ring_next
                self.ring_next = (self.ring_next + 1) % self.W
                moved_window = moved_window or self.valid == self.S + self.W
            if dst * N != src:
                for l in range(self.L):
                    self.k[l][:, :, dst * N:(dst + 1) * N] = self.k[l][:, :, src:src + N]
                    self.v[l][:, :, dst * N:(dst + 1) * N] = self.v[l][:, :, src:src + N]
            self.slot_pos[dst] = pos
            if self.valid < self.S + self.W:  # still filling: the frame landed in place
                self.valid += 1
            self.frames += 1
        self.pending = 0
        if moved_window and self.S > 0:
            self._rerotate_sinks()

    def _rerotate_sinks(self) -> None:
        oldest = min(self.slot_pos[self.S:])
        pos = torch.arange(oldest - self.S, oldest)
        cos, sin = self.rope.tables(pos)
        rotated = apply_rope(self._sink_raw_all, cos, sin)  # (L, B, H, S*N, D): every layer at once
        for l in range(self.L):
            self.k[l][:, :, :self.S * self.N] = rotated[l]
