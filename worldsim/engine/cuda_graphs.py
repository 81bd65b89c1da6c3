"""CUDA graphs of the steady-state forwards: frame-wise play on a GPU without per-op launches.

Why. At batch 1 the default model is bound by kernel launches on a GPU, not by its arithmetic: an
eager frame-wise forward is a few hundred small kernels, each launched from Python, and a 2-step
frame took ~10-17 ms on an H200 where its arithmetic takes well under one. Once the KV cache is full,
though, every step of a session runs the same forwards with the same shapes over the same cache
buffers (``worldsim.engine.aot.graphs``: the fused cache write (2C, C) and a later step (C, 0)). Each
is captured once as a CUDA graph and replayed: one launch per forward, the Triton kernels inside.

What a graph holds (``GraphRunner``). Static inputs, filled before each replay by copies between
device tensors: ``x``, ``sigma``, ``actions``, the anchor and the rotations of the frames' positions
(``rope.rotations``: memoised per position, so only a new position's tables come from the host, as in
an eager forward). Inside: the adaLN terms (``model.conditioning``) and the model's forward over the
engine's own KV cache buffers (``aot.SteadyCache``: the frames' keys are written at the one fixed
scratch offset, attention reads the same addresses). Output: x0 in a static buffer, cloned per call
(the engine keeps a result past the next replay). A replay computes what the eager forward computes,
bit for bit where the kernels are deterministic. Everything between forwards (noise, the re-noising update, the cache commit and the sinks'
re-rotation) stays eager, as in ``worldsim.engine.aot``.

Life cycle (``GraphForwards``, the engine's optional fast forward, with the same ``accepts`` /
``__call__`` interface as ``aot.CompiledForwards``): graphs are captured in the generation worker, at
the first forward that needs one (a full cache of this layout, batch 1, no autocast or gradients), or
all at once by ``capture(cache)``; play's backend captures them while it prepares, before the first
frame, so nothing is captured on the frame path. A capture first runs the forward a few times on a side
stream (Triton compiles its kernels, cuBLAS sets up its workspace there), then records it into the
forwards' private memory pool. Graphs are dropped when the weights change (identity and version
counters, ``worldsim.model.dit.weights_stamp``: a load, an optimiser step, a cast) or the cache buffers
are not the ones captured (a new engine), and captured again when next needed. A capture that fails (an
op that cannot be captured) warns once, and the forwards stay eager for good.

Testing without a GPU: the capture mechanism is injected (``capture=``; ``CudaCapture`` by default), so
the bookkeeping runs on the CPU with one that records the callable and calls it again on the same buffers.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch

from worldsim.engine.aot import SteadyForward, graphs
from worldsim.model.dit import param_slots, weights_stamp

Replay = Callable[[], None]
WARMUP_RUNS = 3  # eager runs on the capture stream before a capture (lazy initialisation happens outside it)


class CudaCapture:
    """Captures with ``torch.cuda.CUDAGraph``: warm-up on a side stream, then capture (``thread_local`` mode:
    other threads, a display loop say, may use CUDA meanwhile) into one private memory pool shared by the
    graphs of one ``GraphForwards`` (they replay one after another on one stream, never concurrently)."""

    device_type = "cuda"

    def __init__(self, warmup: int = WARMUP_RUNS):
        self.warmup = warmup
        self.pool = None

    def __call__(self, fn: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        here = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(here)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                out = fn()
            except BaseException:
                with contextlib.suppress(Exception):  # end the broken capture; the first error is the one to tell
                    graph.capture_end()
                raise
            graph.capture_end()
        here.wait_stream(side)
        return graph.replay, out


class GraphRunner:
    """One forward (``frames`` in, the first ``drop`` outputs dropped) of ``model`` over one full KV cache's
    buffers, captured by ``capture``: fill the static inputs, ``replay()``, read ``out``."""

    def __init__(self, model, cache, frames: int, drop: int, chunk: int, capture):
        mc = model.cfg
        dev = cache.k[0].device
        B, N = cache.B, mc.tokens_per_frame
        self.frames, self.drop = frames, drop
        self.buffers = cache_buffers(cache)
        self.x = torch.zeros(B, frames, mc.channels, mc.resolution, mc.resolution, device=dev)  # (B, T, 3, H, W)
        self.sigma = torch.zeros(B, frames, device=dev)  # (B, T)
        self.actions = torch.zeros(B, frames, dtype=torch.long, device=dev)  # (B, T)
        self.anchor = (torch.zeros(B, frames, mc.channels * mc.anchor_history, mc.resolution, mc.resolution, device=dev)
                       if mc.anchor else None)  # (B, T, 3 * history, H, W)
        self.rot = torch.zeros(frames * N, 1, mc.head_dim // 2, dtype=torch.complex64, device=dev)  # rope.rotations
        steady = SteadyForward(model, frames, drop, (cache.S + cache.W) * N, chunk)
        k, v = list(cache.k), list(cache.v)
        anchor = [self.anchor] if self.anchor is not None else []

        def forward() -> torch.Tensor:
            cond = model.conditioning(self.actions, self.sigma)  # (B, T, cfg.cond_rows, dim)
            return steady(self.x, cond, self.rot, *anchor, *k, *v)

        self.replay, self.out = capture(forward)


def cache_buffers(cache) -> tuple[int, ...]:
    """Where a KV cache's buffers live (a graph reads them by address)."""
    return tuple(t.data_ptr() for t in (*cache.k, *cache.v))


class GraphForwards:
    """The engine's fast forward on CUDA: the steady-state forwards of one model, cache layout and chunk
    size as CUDA graphs. States: ``waiting`` (none captured yet), ``ready``, ``failed`` (a capture failed:
    eager for good). ``capture`` makes the capture/replay pair of a callable (``CudaCapture()`` if None)."""

    path = None  # nothing on disk (for callers that describe compiled forwards)

    def __init__(self, model, window: int, sink: int, chunk: int = 1, *, batch: int = 1, capture=None):
        self.model = model
        self.window, self.sink, self.chunk, self.batch = int(window), int(sink), int(chunk), int(batch)
        self._capture_with = capture if capture is not None else CudaCapture()  # (no CUDA work until a capture)
        self.state = "waiting"
        self.error: str | None = None
        self.runners: dict[tuple[int, int], GraphRunner] = {}
        self.captures = 0  # graphs captured over the forwards' life (a weights change or a new cache adds more)
        self.replays = 0
        self._slots = param_slots(model)
        self._stamp = weights_stamp(self._slots)
        self._buffers: tuple[int, ...] | None = None  # the cache the runners were captured over

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def device_type(self) -> str:
        return self._capture_with.device_type

    def bind(self, model) -> None:
        """Serve ``model`` (an engine's): graphs of another model are dropped."""
        if model is not self.model:
            self.model, self._slots = model, param_slots(model)
            self._drop()

    def _drop(self) -> None:
        self.runners.clear()
        self._buffers = None
        self._stamp = weights_stamp(self._slots)
        if self.state == "ready":
            self.state = "waiting"

    # -- the predicate --------------------------------------------------------------------------
    def accepts(self, x: torch.Tensor, cache, drop: int, dtype: torch.dtype) -> bool:
        """Whether a graph computes this forward (capturing it now if it is the first such call): ``x``
        (B, frames, 3, H, W) against ``cache`` (a ``KVCache``), the first ``drop`` outputs dropped, under the
        engine's compute ``dtype``."""
        key = (x.shape[1], drop)
        if not self._fits(x, cache, key, dtype):
            return False
        if weights_stamp(self._slots) != self._stamp:  # new or changed weights: the graphs read the old ones
            self._drop()
        if self._buffers is not None and cache_buffers(cache) != self._buffers:  # another engine's cache
            self._drop()
        return key in self.runners or self._capture(cache, key)

    def _fits(self, x, cache, key, dtype) -> bool:
        if self.state == "failed" or key not in graphs(self.chunk) or x.shape[0] != self.batch:
            return False
        if cache is None or not cache.full or (cache.S, cache.W, cache.B) != (self.sink, self.window, self.batch):
            return False
        if dtype != torch.float32 or torch.is_grad_enabled() or x.device.type != self.device_type:
            return False  # autocast (fp32 weights run in bf16) or training: the eager path
        return cache.k[0].dtype == self.model.patch_embed.weight.dtype  # else not written yet (its first write decides)

    def capture(self, cache) -> int:
        """Capture every graph of this chunk size over ``cache`` now (full, of this layout and batch, its
        dtype decided by a first write), off the frame path; returns how many are ready (0: not now)."""
        with torch.no_grad():
            for frames, drop in graphs(self.chunk):
                x = torch.empty(self.batch, frames, device=cache.k[0].device)  # only its shape and device are read
                if not self.accepts(x, cache, drop, torch.float32):
                    break
        return len(self.runners)

    def _capture(self, cache, key: tuple[int, int]) -> bool:
        try:
            runner = GraphRunner(self.model, cache, *key, self.chunk, self._capture_with)
        except Exception as e:  # an op that cannot be captured: eager for good, said once
            self.state, self.error = "failed", f"{type(e).__name__}: {str(e)[:200]}"
            self.runners.clear()
            warnings.warn(f"CUDA graph capture failed ({self.error}); the engine runs eagerly from here on",
                          RuntimeWarning, stacklevel=3)
            return False
        self.runners[key] = runner
        self._buffers = runner.buffers
        self.captures += 1
        self.state = "ready"
        return True

    # -- the forward ----------------------------------------------------------------------------
    def __call__(self, x, sigma, actions, pos, anchor, cache, drop: int) -> torch.Tensor:
        """The model's forward over a full ``cache`` (as ``accepts`` said): x0 (B, frames - drop, 3, H, W)."""
        r = self.runners[(x.shape[1], drop)]
        r.x.copy_(x)
        r.sigma.copy_(sigma)
        r.actions.copy_(actions)
        if r.anchor is not None:
            r.anchor.copy_(anchor) if anchor is not None else r.anchor.zero_()
        # host positions (KVCache.next_positions): memoised rotations, a new position's tables copied to the
        # device here, before the replay, while the GPU has next to nothing queued; the sinks' re-rotation
        # (KVCache.commit) reads the same memo a window later
        r.rot.copy_(self.model.rope.rotations(pos))
        r.replay()
        self.replays += 1
        cache.pending = x.shape[1]  # as write_scratch leaves it: the engine commits the clean frames next
        return r.out.clone()
