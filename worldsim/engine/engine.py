"""The autoregressive engine: an endless stream of frames from a stream of actions.

For every chunk of C frames: start from noise, run the few-step list (predict x0, re-noise to the
next level; or Euler steps for a multi-step model), then write the clean chunk into the KV cache.
The engine depends only on the model interface ``model(x, sigma, actions, frame_pos=, chunk=,
cache=, anchor=, drop_first=) -> x0`` and its ``cfg`` (tokens per frame, layers, heads), not on a model class.

Fused cache write (``fuse_cache_write``): the forward that writes chunk k's clean keys into the
cache is the same forward as chunk k+1's first denoising step: ``[clean k | noisy k+1]`` go in
together under the block-causal mask, so a chunk costs ``steps`` forwards instead of
``steps + 1``; the clean frames' outputs are not wanted, so the model's last block skips them
(``drop_first``). The outputs are the same as the unfused order (the tests check it).

Step alignment: ``frames[t]`` is shown, ``actions[t]`` is chosen after seeing it and produces
``frames[t+1]``. So ``step(a)`` takes the action chosen after seeing the latest frame and returns the
frame(s) it produces; ``prefill(frames, prev_actions)`` takes context frames with the action that
produced each (``no_action`` for an episode's first frame).

Compiled forwards (``worldsim.engine.aot``): ``engine.compiled`` is an optional fast forward with one
predicate, ``accepts(x, cache, drop_first, dtype)``, called with the same arguments as the model and the
cache; where it says no (the cache still filling, another batch size, a package still building) the
eager forward runs, in the same call site (``_forward``). A fast forward that raises is dropped for
good and the step goes on eagerly.

Action guidance (``guidance`` != 1; ``worldsim.engine.guidance``): the engine denoises with
``u + w (c - u)``, ``c`` the model's x0 under the key and ``u`` under its contrast. On the button
(``guidance_contrast=button``) the contrast shares the player's past, so it shares the cache: a step
whose key holds the button runs one more forward of the new frame under the bare key, after the cache
write, and any other step costs nothing more. Classifier-free (``none``) the contrast plays without
keys, its own past: every forward carries that second stream, and the cache holds both (twice the batch).

The game's colours (``palette``): a model loaded from a checkpoint that carries a palette has it as
``model.palette``; each drawn chunk is snapped to it before it is returned and before it becomes
context (``worldsim.data.palette``).

Anchored models (``model.cfg.anchor``) also get, for every frame, the clean frame(s) before its chunk
(``worldsim.model.anchor_frames``; ``anchor_history`` of them): the engine keeps the last ones for that.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from kernels import noise_update
from worldsim.device import autocast
from worldsim.engine.guidance import CONTRASTS, contrast_table
from worldsim.engine.kv_cache import KVCache
from worldsim.engine.schedule import euler_sigmas, student_sigmas
from worldsim.errors import ConfigError
from worldsim.model.dit import anchor_frames, chunk_anchor, keep_recent


@dataclass
class EngineConfig:
    chunk: int = 1  # frames generated per forward (1: frame-wise, >1: chunk-wise)
    steps: int = 2  # denoising steps per chunk (1, 2 or 4 for a distilled student)
    sampler: str = "renoise"  # "renoise": few-step x0 + fresh noise; "euler": multi-step ODE
    # Timestep shift of the step list: a few-step (renoise) student must use the levels it was distilled
    # at; an Euler sampler may use any (a larger shift starts the later steps nearer pure noise: for the
    # default Boxing student, higher open-loop PSNR and blurrier boxers; assets/README.md).
    shift: float = 3.0
    timesteps: list[float] = field(default_factory=list)  # explicit sigmas, overrides steps/shift
    context_sigma: float = 0.0  # noise level written with clean frames into the cache
    window: int = 6  # rolling window of recent frames kept in the KV cache (cost grows with it)
    sink: int = 1  # first frames kept forever (attention sinks)
    fuse_cache_write: bool = True  # write chunk k's cache in chunk k+1's first forward
    # Action guidance w: x0 = u + w (c - u), c under the key, u under its contrast (worldsim.engine.guidance).
    # 1: off. On the button, a step whose key holds it costs one more forward of the new frame; classifier-free,
    # every forward carries a second stream (batch 2).
    guidance: float = 1.0
    guidance_contrast: str = "button"  # button: the key without FIRE (only the button scaled) | none: no keys at all
    # Snap every drawn frame to the game's colours, where the checkpoint carries them (worldsim.data.palette):
    # frames hold only colours the game has, and so does the context the next frame reads.
    palette: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.chunk < 1:
            raise ConfigError(f"engine.chunk must be >= 1, got {self.chunk}")
        if self.sampler not in ("renoise", "euler"):
            raise ConfigError(f"engine.sampler '{self.sampler}' is not 'renoise' or 'euler'")
        if not self.timesteps and self.steps < 1:
            raise ConfigError(f"engine.steps must be >= 1, got {self.steps}")
        if self.window < self.chunk:
            raise ConfigError(f"engine.window {self.window} must be >= engine.chunk {self.chunk}")
        if not 0.0 <= self.guidance <= 20.0:
            raise ConfigError(f"engine.guidance must be in [0, 20] (1: off), got {self.guidance}")
        if self.guidance_contrast not in CONTRASTS:
            raise ConfigError(f"engine.guidance_contrast '{self.guidance_contrast}' is not one of {', '.join(CONTRASTS)}")

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    @property
    def streams(self) -> int:
        """Sessions each forward carries per player (the KV cache's and compiled forwards' batch factor)."""
        return 2 if self.guided and self.guidance_contrast == "none" else 1

    def sigmas(self) -> list[float]:
        """Noise levels visited per chunk; the last entry is the target (0 for euler)."""
        if self.timesteps:
            levels = [float(t) / 1000.0 if t > 1 else float(t) for t in self.timesteps]
        elif self.sampler == "euler":
            return euler_sigmas(self.steps, self.shift)
        else:
            levels = student_sigmas(self.steps, self.shift)
        return levels + [0.0]


def cache_scratch_frames(chunk: int, sink: int, window: int) -> int:
    """Frames of room after the cache's sink and window slots: a fused step's two chunks, or a prefill
    piece (compiled graphs are specialised to the buffer size this gives: ``worldsim.engine.aot``)."""
    return max(2 * chunk, sink + window)


class Engine:
    def __init__(self, model, cfg: EngineConfig, device=None, dtype=torch.float32, action_meanings=None):
        """``action_meanings`` (the checkpoint's ALE names) are read only by ``guidance_contrast=button``."""
        cfg.validate()
        self.model = model
        self.model_fn = model  # the callable used for forwards (a torch.compile'd model, optionally)
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        self.no_action = model.cfg.num_actions
        # Guidance on the button: (num_actions + 1,) each key without it, on the host (where keys are checked);
        # classifier-free guidance needs no table (its second stream has no keys)
        self._contrast = torch.tensor(contrast_table(cfg.guidance_contrast, action_meanings, self.no_action)) \
            if cfg.guided and cfg.streams == 1 else None
        self._streams = cfg.streams
        self.palette = getattr(model, "palette", None) if cfg.palette else None
        self.cache: KVCache | None = None
        self.batch = 0
        self._pending = None  # (frames, actions, anchors) of the last chunk, not yet in the cache
        self._recent = None  # (B, k, 3, H, W) the latest clean frames, oldest first: the next chunk's anchor
        self._history = model.cfg.anchor_history if model.cfg.anchor else 1
        self._gen = None
        self.last_step_ms = 0.0
        # Compiled steady-state forwards (worldsim.engine.aot.attach): used where they accept, else eager.
        self.compiled = None
        self.compiled_error: str | None = None  # why they were dropped (a graph raised): not attached again

    # -- session control ---------------------------------------------------------------------
    def reset(self, batch_size: int = 1, seed: int | None = None) -> None:
        """Drop the cache and start a fresh session (reallocating only if the batch changes)."""
        mc = self.model.cfg
        if self.cache is None or self.cache.B != batch_size * self._streams:
            self.cache = KVCache(
                layers=mc.cache_layers, batch=batch_size * self._streams, kv_heads=mc.kv_heads, head_dim=mc.head_dim,
                tokens_per_frame=mc.tokens_per_frame, sink=self.cfg.sink, window=self.cfg.window,
                scratch_frames=cache_scratch_frames(self.cfg.chunk, self.cfg.sink, self.cfg.window),
                rope=self.model.rope, device=self.device, dtype=self.dtype)
        else:
            self.cache.reset()
        self.batch = batch_size
        self._pending = None
        self._recent = None
        seed = self.cfg.seed if seed is None else seed
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        # The re-noising seeds come from the host: reading one back from a GPU waits for the forward before it.
        self._seed_gen = self._gen if self.device.type == "cpu" else torch.Generator().manual_seed(seed)

    @property
    def frames_generated(self) -> int:
        return self.cache.frames + (self._pending[0].shape[1] if self._pending is not None else 0)

    def _forward(self, x, sigma, actions, pos, anchor, drop_first: int = 0):
        """x0 of frames ``x`` (B, T, ...): the model's, and with a second stream (classifier-free guidance)
        the guided one, that stream playing every frame without keys."""
        if self._streams == 1:
            return self._model_forward(x, sigma, actions, pos, anchor, drop_first)
        B = x.shape[0]
        both = self._model_forward(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                   torch.cat([actions, torch.full_like(actions, self.no_action)]), pos,
                                   None if anchor is None else torch.cat([anchor, anchor]), drop_first)
        c, u = both[:B], both[B:]
        return torch.lerp(u, c, self.cfg.guidance)  # u + w (c - u)

    def _model_forward(self, x, sigma, actions, pos, anchor, drop_first: int = 0):
        fast = self.compiled
        if fast is not None and fast.accepts(x, self.cache, drop_first, self.dtype):
            try:
                return fast(x, sigma, actions, pos, anchor, self.cache, drop_first)
            except Exception as e:  # an accelerator must not take play down: eager from here on
                # (the graph writes only this call's scratch slots, which the eager forward rewrites)
                self.compiled, self.compiled_error = None, f"{type(e).__name__}: {str(e)[:200]}"
                warnings.warn(f"compiled forward failed ({self.compiled_error}); the engine runs eagerly from here on",
                              RuntimeWarning, stacklevel=2)
        with autocast(self.device, self.dtype):
            return self.model_fn(x, sigma, actions, frame_pos=pos, chunk=self.cfg.chunk, cache=self.cache,
                                 anchor=anchor, drop_first=drop_first).float()

    def _next_anchor(self, n: int):
        """Anchors of the next n frames of one chunk: the latest clean frame(s) (None before any, and
        always None for unanchored models, so their hot path builds no anchor tensors)."""
        if self._recent is None or not self.model.cfg.anchor:
            return None
        return chunk_anchor(self._recent, n, self._history)

    def _flush(self) -> None:
        """Write the pending clean chunk into the cache with its own forward (unfused path)."""
        if self._pending is None:
            return
        frames, acts, anc = self._pending
        n = frames.shape[1]
        sig = torch.full((self.batch, n), self.cfg.context_sigma, device=self.device)
        self._forward(frames, sig, acts, self.cache.next_positions(n), anc)
        self.cache.commit(n)
        self._pending = None

    @torch.no_grad()
    def prefill(self, frames: torch.Tensor, prev_actions: torch.Tensor | None = None) -> None:
        """Write context frames (B, K, 3, H, W) in [-1, 1] into the cache, chunk by chunk."""
        if self.cache is None:
            self.reset(frames.shape[0])
        self._check_frames(frames)
        self._flush()
        B, K = frames.shape[:2]
        if prev_actions is None:
            prev_actions = torch.full((B, K), self.no_action, dtype=torch.long)
        prev_actions = self._check_actions(prev_actions, K).to(self.device).contiguous()
        frames = frames.to(self.device, torch.float32)
        C = self.cfg.chunk
        piece = max(C, (self.cache.scratch_frames // C) * C)
        for start in range(0, K, piece):
            f, a = frames[:, start:start + piece], prev_actions[:, start:start + piece]
            sig = torch.full(a.shape, self.cfg.context_sigma, device=self.device)
            # pieces are whole chunks: the chunk rule holds across them
            anc = anchor_frames(f, C, first=self._recent, history=self._history) if self.model.cfg.anchor else None
            self._forward(f, sig, a, self.cache.next_positions(f.shape[1]), anc)
            self.cache.commit(f.shape[1])
            self._recent = keep_recent(self._recent, f, self._history)

    @torch.no_grad()
    def step(self, actions) -> torch.Tensor:
        """Generate the next chunk under ``actions`` (B, C) (or (B,) / int for C=1): (B, C, 3, H, W)."""
        t0 = time.perf_counter()
        if self.cache is None:
            self.reset(1)
        C, B = self.cfg.chunk, self.batch
        host = self._check_actions(actions, C)
        actions = host.to(self.device).contiguous()
        bare = self._bare_keys(host)
        mc = self.model.cfg
        shape = (B, C, mc.channels, mc.resolution, mc.resolution)
        x = torch.randn(shape, generator=self._gen, device=self.device)
        sigmas = self.cfg.sigmas()
        if not self.cfg.fuse_cache_write:
            self._flush()
        anc = self._next_anchor(C)
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            sig = torch.full((B, C), s, device=self.device)
            if i == 0 and self._pending is not None:  # fused: [clean k | noisy k+1] in one forward
                pf, pa, panc = self._pending
                n = pf.shape[1]
                ctx_sig = torch.full((B, n), self.cfg.context_sigma, device=self.device)
                if anc is None:
                    both = None
                else:  # a chunk drawn before any anchor existed (no prefill) gets blank ones
                    both = torch.cat([panc if panc is not None else anc.new_zeros((B, n, *anc.shape[2:])), anc], 1)
                # the clean frames are there for their keys and values only: their outputs are not computed
                x0 = self._forward(torch.cat([pf, x], 1), torch.cat([ctx_sig, sig], 1),
                                   torch.cat([pa, actions], 1), self.cache.next_positions(n + C), both, drop_first=n)
                self.cache.commit(n)
                self._pending = None
            else:
                x0 = self._forward(x, sig, actions, self.cache.next_positions(C), anc)
            if bare is not None:  # the button's contrast, over the cache as it now stands (the past written)
                u = self._model_forward(x, sig, bare, self.cache.next_positions(C), anc)
                x0 = torch.lerp(u, x0, self.cfg.guidance)  # u + w (c - u)
            if s_next == 0.0:
                x = x0
                break
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._seed_gen))
            x = noise_update(x.flatten(0, 1), x0.flatten(0, 1), s, s_next, self.cfg.sampler,
                             seed=seed).view(shape)
        x = x.clamp(-1, 1) if self.palette is None else self.palette.snap(x)
        self._pending = (x, actions, anc)
        self._recent = keep_recent(self._recent, x, self._history)
        if not self.cfg.fuse_cache_write:
            self._flush()
        self.last_step_ms = (time.perf_counter() - t0) * 1e3
        return x

    # -- checks ------------------------------------------------------------------------------
    def _check_frames(self, frames: torch.Tensor) -> None:
        mc = self.model.cfg
        want = (mc.channels, mc.resolution, mc.resolution)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != want:
            raise ValueError(f"context frames have shape {tuple(frames.shape)}; expected (B, K, {want[0]}, {want[1]}, {want[2]})")
        if frames.shape[0] != self.batch:
            raise ValueError(f"context batch {frames.shape[0]} != session batch {self.batch}; call reset(batch_size)")

    def _bare_keys(self, host: torch.Tensor) -> torch.Tensor | None:
        """Under guidance on the button: the keys without it, on the device, where any key holds it; else None."""
        if self._contrast is None:
            return None
        bare = self._contrast[host]
        return bare.to(self.device).contiguous() if bool((bare != host).any()) else None

    def _check_actions(self, actions, n: int) -> torch.Tensor:
        """``actions`` as a (B, n) long tensor on the host, checked there (no GPU read-back)."""
        a = torch.as_tensor(actions, dtype=torch.long)
        if a.dim() == 0:
            a = a.view(1, 1).expand(self.batch, n)
        elif a.dim() == 1:
            a = a.view(-1, 1).expand(self.batch, n) if n == 1 or a.numel() == self.batch else a.view(1, -1).expand(self.batch, n)
        if tuple(a.shape) != (self.batch, n):
            raise ValueError(f"actions have shape {tuple(a.shape)}; expected ({self.batch}, {n})")
        if bool(((a < 0) | (a > self.no_action)).any()):
            raise ValueError(f"action index out of range [0, {self.no_action}] (the model has {self.no_action} actions)")
        return a.cpu()
