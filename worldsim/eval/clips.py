"""Clip realism: short clips from real states, for the bidirectional teacher and the causal student alike.

Boundary: a model's clip sampler, evaluation episodes and a ``ClipConfig`` in; the classifier
two-sample test's figures out. No files, no argument parsing (``worldsim eval clips`` is the entry).

A bidirectional teacher cannot free-play: it draws a whole clip at once, each frame seeing the ones
after it. Its own realism is therefore measured on clips: from ``context`` real frames, generate
``horizon`` frames under the recorded keys, and ask the classifier (``worldsim.eval.realism``) whether
the generated frames can be told from the real frames they stand in for. The same protocol run on a
causal student puts both on one scale: in asymmetric DMD the teacher is the real score, so the
teacher's clip realism bounds what distillation can give the student, and the student's clip realism
says how much of that bound it has reached. A clip starts from real frames, so this figure cannot see
drift: free-play realism (``worldsim eval --free-play``) stays the player's yardstick.

The calibration row is the same test between the real frames of alternate episodes' clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from worldsim.data.frames import to_model, to_uint8
from worldsim.engine.teacher import teacher_rollout
from worldsim.errors import WorldsimError
from worldsim.eval.realism import RealismConfig, two_sample_accuracy
from worldsim.eval.rollout import EvalConfig, EvalEpisode, batch_inputs, make_plan, rollout

VIEWS = ("full", "degraded")
# (context uint8 (B, K, R, R, 3), prev actions (B, K), actions (B, H), seed) -> generated uint8 (B, H, R, R, 3)
ClipSampler = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class ClipConfig:
    """What ``worldsim eval clips`` measures."""

    context: int = 2  # real frames before each clip (the stage-3 rollouts' context)
    horizon: int = 6  # generated frames per clip: the rest of the teacher's training clip
    frames: int = 2000  # generated frames in all (the realism sample); as many real ones
    batch: int = 16  # clips generated together
    seed: int = 0  # clip starts, sampler noise and the classifier
    realism_steps: int = 400  # the classifier's optimiser steps
    realism_classifiers: int = 1  # classifiers of consecutive seeds on the same clips, accuracy averaged

    def validate(self) -> None:
        if self.context < 1 or self.horizon < 1:
            raise WorldsimError(f"--context and --horizon must be >= 1 (got {self.context}, {self.horizon})")
        if self.frames < RealismConfig.min_frames:
            raise WorldsimError(f"--frames must be at least {RealismConfig.min_frames} (got {self.frames})")
        if self.batch < 1 or self.realism_steps < 1 or self.realism_classifiers < 1:
            raise WorldsimError(f"--batch, --realism-steps and --realism-classifiers must be >= 1 (got {self.batch}, "
                                f"{self.realism_steps}, {self.realism_classifiers})")


def clip_plan(episodes: Sequence[EvalEpisode], cfg: ClipConfig) -> list[tuple[int, int]]:
    """(episode index, context start) of every clip: enough clips for ``cfg.frames`` generated frames,
    spread over every episode (one start drawn within each equal part of it, as ``worldsim eval`` does)."""
    per_episode = max(1, math.ceil(cfg.frames / cfg.horizon / max(len(episodes), 1)))
    return make_plan(episodes, EvalConfig(context=cfg.context, horizon=cfg.horizon, starts=per_episode,
                                          spacing="stratified", seed=cfg.seed))


@torch.no_grad()
def generate_clips(sample: ClipSampler, episodes: Sequence[EvalEpisode], plan: Sequence[tuple[int, int]],
                   cfg: ClipConfig, no_action: int, progress=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Generated and real frames per episode (each a uint8 (n, R, R, 3) array, its clips in time order), so
    the realism test's split by time keeps a clip's neighbours on one side."""
    ev = EvalConfig(context=cfg.context, horizon=cfg.horizon)
    fake: dict[int, list] = {}
    real: dict[int, list] = {}
    for b in range(0, len(plan), cfg.batch):
        items = plan[b:b + cfg.batch]
        ctx, prev, acts, truth = batch_inputs(episodes, items, ev, no_action)
        gen = sample(ctx, prev, acts, cfg.seed + b)
        if gen.shape != truth.shape:
            raise WorldsimError(f"the clip sampler returned frames of shape {gen.shape}, the real clips are "
                                f"{truth.shape}")
        for (i, _), g, t in zip(items, gen, truth):
            fake.setdefault(i, []).append(g)
            real.setdefault(i, []).append(t)
        if progress is not None:
            progress.update(len(items) * cfg.horizon)
    order = sorted(fake)
    return [np.concatenate(fake[i]) for i in order], [np.concatenate(real[i]) for i in order]


def clip_realism(fake: Sequence[np.ndarray], real: Sequence[np.ndarray], cfg: ClipConfig) -> dict:
    """Accuracy of telling generated clip frames from the real frames at the same places (full frame and
    degraded), and the calibration: the real frames of alternate episodes against each other."""
    rc = RealismConfig(frames=cfg.frames, train_steps=cfg.realism_steps, seed=cfg.seed,
                       classifiers=cfg.realism_classifiers)
    out = {"model": {view: two_sample_accuracy(real, fake, rc, view).to_dict() for view in VIEWS}}
    if len(real) >= 2:
        out["real_vs_real"] = {view: two_sample_accuracy(list(real[0::2]), list(real[1::2]), rc, view).to_dict()
                               for view in VIEWS}
    return out


def engine_sampler(engine) -> ClipSampler:
    """A causal student's clips through the inference engine (KV cache, its few-step sampler)."""
    return lambda ctx, prev, acts, seed: rollout(engine, ctx, prev, acts, seed)


def teacher_sampler(model, steps: int, shift: float, guidance: float, dtype, device="cpu") -> ClipSampler:
    """A bidirectional teacher's clips: the whole clip at once, ``steps`` Euler steps of its flow ODE."""
    def sample(ctx, prev, acts, seed):
        x = teacher_rollout(model, to_model(ctx).to(device), torch.as_tensor(prev, dtype=torch.long, device=device),
                            torch.as_tensor(acts, dtype=torch.long, device=device), seed, steps=steps, shift=shift,
                            guidance=guidance, dtype=dtype)
        return to_uint8(x)

    return sample
