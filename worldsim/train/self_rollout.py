"""Self-rollout with gradients: the student generates a clip from its own KV cache, exactly as the
engine does at inference, but with autograd through one exit step per chunk.

Boundary: a causal model + real context + an action sequence in, generated frames out. Used by
stage 3 (DMD); the engine itself (``worldsim.engine``) stays inference-only.

Same code path as inference: every forward is ``model(x, sigma, actions, frame_pos=, chunk=,
cache=)`` over a ``KVCache`` (rolling window + sink frames), the few-step list is
``student_sigmas(steps, shift)``, each step predicts x0 and re-noises with fresh noise
(``x' = (1 - s') x0 + s' eps``; under the engine's ``euler`` sampler, for a stage-1 student, the
levels are ``euler_sigmas`` and each step is the engine's Euler step), and after each chunk a forward
at ``context_sigma`` writes the clean chunk into the cache (the engine's unfused order, which its tests
show equals the fused one).

Gradients (RECIPE.md, "Stage 3"; Self-Forcing): an exit step is drawn for every chunk (``exit_step``:
one int shared by all chunks, or one per chunk); the steps before it run under no_grad, the exit
step's forward carries the gradient and its x0 is the chunk's output; the cache refresh runs under no_grad, so no gradient
crosses frames. ``TrainKVCache`` makes the cache safe for that: a forward with gradient reads the
cached prefix as plain (detached) tensors and concatenates its own keys/values with their graph,
instead of writing them into the buffers in place (an in-place write into a buffer that later
forwards overwrite would corrupt the saved tensors of the backward pass).
"""

from __future__ import annotations

import torch

from kernels import noise_update
from worldsim.engine.kv_cache import KVCache
from worldsim.engine.schedule import euler_sigmas, student_sigmas
from worldsim.model.dit import anchor_frames, chunk_anchor, keep_recent


class TrainKVCache(KVCache):
    """A ``KVCache`` whose forwards with gradient do not write into the buffers in place."""

    def write_scratch(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)):
            return super().write_scratch(layer, k, v)
        kbuf, vbuf, kv_len = super().write_scratch(layer, k.detach(), v.detach())
        start = kv_len - k.shape[2]
        kk = torch.cat([kbuf[:, :, :start], k.to(kbuf.dtype)], 2)  # (B, Hkv, kv_len, D): cache (no grad) + own keys
        vv = torch.cat([vbuf[:, :, :start], v.to(vbuf.dtype)], 2)
        return kk, vv, kv_len


def make_cache(model, batch: int, *, chunk: int, window: int, sink: int, device, dtype=torch.float32) -> TrainKVCache:
    mc = model.cfg
    return TrainKVCache(layers=mc.cache_layers, batch=batch, kv_heads=mc.kv_heads, head_dim=mc.head_dim,
                        tokens_per_frame=mc.tokens_per_frame, sink=sink, window=window,
                        scratch_frames=max(2 * chunk, sink + window), rope=model.rope, device=device, dtype=dtype)


class RolloutState:
    """Where a rollout stopped: its KV cache and its latest clean frames (the anchor of the next chunk), so
    that the next call goes on exactly as endless play would (``self_rollout(..., state=)``)."""

    def __init__(self, cache: TrainKVCache, recent):
        self.cache, self.recent = cache, recent

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {prefix + k: v for k, v in self.cache.state()[0].items()}
        if self.recent is not None:
            out[f"{prefix}recent"] = self.recent
        return out

    def meta(self) -> dict:
        return self.cache.state()[1]

    @classmethod
    def restore(cls, model, meta: dict, tensors: dict[str, torch.Tensor], prefix: str, *, chunk: int, window: int,
                sink: int, device) -> "RolloutState":
        mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        cache = make_cache(model, mine["k0"].shape[0], chunk=chunk, window=window, sink=sink, device=device)
        cache.load_state(mine, meta)
        recent = mine.get("recent")
        return cls(cache, None if recent is None else recent.to(device).clone())


def self_rollout(model, ctx: torch.Tensor, prev: torch.Tensor, actions: torch.Tensor, *, chunk: int, steps: int,
                 shift: float, window: int, sink: int, exit_step, noise: torch.Tensor,
                 renoise: torch.Tensor, grad: bool, context_sigma: float = 0.0, autocast=None,
                 state: RolloutState | None = None, keep_state: bool = False, sampler: str = "renoise"):
    """Generate ``H = actions.shape[1]`` frames after the real context (or after where ``state`` stopped).

    ctx (B, K, 3, R, R) in [-1, 1] with ``prev`` (B, K) the actions that produced it; ``actions`` (B, H) the
    actions that produce the generated frames (model alignment); ``noise`` (B, H, 3, R, R) the initial noise of
    every frame and ``renoise`` (B, steps, H, 3, R, R) the fresh noise of each re-noise (drawn by the caller
    from its checkpointed generator). ``exit_step``: an int for every chunk, or a sequence with one per chunk
    (``ceil(H / chunk)`` entries). ``sampler``: the engine's ("euler": a multi-step model's ODE over
    ``euler_sigmas``, each step moving along the noise the model implies; ``renoise`` is then unused).
    Returns (B, H, 3, R, R); with ``grad`` the exit steps' graphs are kept.
    """
    import contextlib

    ac = autocast or contextlib.nullcontext
    B, K = prev.shape
    H = actions.shape[1]
    if sampler not in ("renoise", "euler"):
        raise ValueError(f"sampler '{sampler}' is not 'renoise' or 'euler'")
    sigmas = euler_sigmas(steps, shift) if sampler == "euler" else student_sigmas(steps, shift) + [0.0]
    n_chunks = -(-H // chunk)
    exits = [int(exit_step)] * n_chunks if isinstance(exit_step, int) else [int(e) for e in exit_step]
    if len(exits) != n_chunks:
        raise ValueError(f"{len(exits)} exit steps for {n_chunks} chunks")
    if any(not 0 <= e < steps for e in exits):
        raise ValueError(f"exit steps {exits} outside [0, {steps})")
    anchored, hist = model.cfg.anchor, model.cfg.anchor_history
    if state is None:
        cache = make_cache(model, B, chunk=chunk, window=window, sink=sink, device=ctx.device)
        recent = None  # the latest clean frame(s): anchor of the next chunk (anchored models)
    else:
        cache, recent, K = state.cache, state.recent, 0
    with torch.no_grad():  # prefill, in pieces that fit the scratch area (as Engine.prefill)
        piece = max(chunk, (cache.scratch_frames // chunk) * chunk)
        for a in range(0, K, piece):
            f = ctx[:, a:a + piece]
            n = f.shape[1]
            with ac():
                model(f, torch.full((B, n), context_sigma, device=ctx.device), prev[:, a:a + piece],
                      frame_pos=cache.next_positions(n), chunk=chunk, cache=cache,
                      anchor=anchor_frames(f, chunk, first=recent, history=hist) if anchored else None)
            cache.commit(n)
            recent = keep_recent(recent, f, hist)
    out = []
    for j, t in enumerate(range(0, H, chunk)):
        n = min(chunk, H - t)
        exit_j = exits[j]
        a = actions[:, t:t + n]  # (B, n)
        x = noise[:, t:t + n]  # (B, n, 3, R, R) at s = 1
        pos = cache.next_positions(n)
        anc = None if recent is None or not anchored else chunk_anchor(recent, n, hist)
        x0 = None
        for i in range(exit_j + 1):
            s = sigmas[i]
            with torch.set_grad_enabled(grad and i == exit_j), ac():
                x0 = model(x, torch.full((B, n), s, device=ctx.device), a, frame_pos=pos, chunk=chunk,
                           cache=cache, anchor=anc).float()  # (B, n, 3, R, R)
            if i < exit_j:
                s_next = sigmas[i + 1]
                fresh = None if sampler == "euler" else renoise[:, i, t:t + n].flatten(0, 1)
                x = noise_update(x.detach().flatten(0, 1), x0.detach().flatten(0, 1), s, s_next, sampler,
                                 noise=fresh).view(x0.shape)  # the engine's update
        out.append(x0)
        with torch.no_grad(), ac():  # cache refresh: the clean chunk's keys/values, no gradient across frames
            model(x0.detach().clamp(-1, 1), torch.full((B, n), context_sigma, device=ctx.device), a, frame_pos=pos,
                  chunk=chunk, cache=cache, anchor=anc)
        cache.commit(n)
        recent = keep_recent(recent, x0.detach().clamp(-1, 1), hist)
    frames = torch.cat(out, 1)
    return (frames, RolloutState(cache, recent)) if keep_state else frames
