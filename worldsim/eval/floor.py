"""How well a model places the player one frame ahead, by noise level: a diagnostic for the sprite metric.

For every rollout of a plan: prefill the real context, then ask the model for x0 of the *real* next
frame noised to each level sigma (``(1 - sigma) * real + sigma * noise``, one forward, nothing
committed to the cache) and measure the player sprite's distance from the real one. Near sigma 0 this
is the metric's floor on the model's drawing; at sigma 1 it is the model's one-frame prediction from
context and action alone, to set beside copy-last-frame's error (printed with it).

Measured on the shipped Boxing student (session 9, 80 held-out contexts, ``scripts/one_frame_floor.py``):
0.17 / 0.32 / 0.58 / 0.77 / 0.89 px at sigma 0.1 / 0.3 / 0.5 / 0.75 / 1.0, copy-last 0.92: the metric is
not what limits the sprite error, the one-frame prediction from context and action is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from worldsim.eval.rollout import EvalConfig, EvalEpisode, batch_inputs, to_model, to_uint8
from worldsim.eval.sprites import SpriteSpec, find_sprites


@torch.no_grad()
def one_frame_sprite_error(engine, episodes: Sequence[EvalEpisode], plan, cfg: EvalConfig, sprite: SpriteSpec,
                           levels: Sequence[float], no_action: int, seed: int = 0) -> dict:
    """{"levels": {sigma: mean px}, "copy_last": mean px, "rollouts": n}; rollouts where the real
    sprite is not found are left out of every mean."""
    errs: dict[float, list] = {float(s): [] for s in levels}
    copy: list = []
    gen = torch.Generator().manual_seed(seed)
    for lo in range(0, len(plan), cfg.batch):
        ctx, prev, acts, real = batch_inputs(episodes, plan[lo:lo + cfg.batch], cfg, no_action)
        B = len(ctx)
        engine.reset(B, seed=seed)
        engine.prefill(to_model(ctx), torch.as_tensor(prev))
        target = to_model(real[:, :1])  # (B, 1, 3, R, R)
        noise = torch.randn(target.shape, generator=gen)
        act, anchor = torch.as_tensor(acts[:, :1]), engine._next_anchor(1)
        rp, rf = find_sprites(real[:, 0], sprite)
        cp, cf = find_sprites(ctx[:, -1], sprite)
        copy += list(np.linalg.norm(cp - rp, axis=1)[rf & cf])
        for s in errs:
            x0 = engine._forward((1 - s) * target + s * noise, torch.full((B, 1), s), act,
                                 engine.cache.next_positions(1), anchor).clamp(-1, 1)
            pp, pf = find_sprites(to_uint8(x0)[:, 0], sprite)
            errs[s] += list(np.linalg.norm(pp - rp, axis=1)[rf & pf])
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"levels": {s: mean(v) for s, v in errs.items()}, "copy_last": mean(copy), "rollouts": len(plan)}
