"""How well a model places the player one frame ahead, by noise level: a diagnostic for the sprite metric.

For every rollout of a plan: prefill the real context, then ask the model for x0 of the *real* next
frame noised to each level sigma (``(1 - sigma) * real + sigma * noise``, one forward, nothing
committed to the cache) and measure the player sprite's distance from the real one. Near sigma 0 this
is the metric's floor on the model's drawing; at sigma 1 it is the model's one-frame prediction from
context and action alone, to set beside copy-last-frame's error (printed with it).

    python -m research.one_frame_floor --episodes data/boxing data/boxing_scripted --split heldout --starts 8

prints one line per noise level and copy-last's error. Measured on a one-anchor Boxing student of the
default model's lineage (80 held-out contexts): 0.17 / 0.32 / 0.58 / 0.77 / 0.89 px at sigma 0.1 / 0.3 /
0.5 / 0.75 / 1.0, copy-last 0.92: the metric is not what limits the sprite error, the one-frame
prediction from context and action is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
import torch

from research import run_command
from worldsim.eval.rollout import EvalConfig, EvalEpisode, batch_inputs, to_model, to_uint8
from worldsim.eval.sprites import SpriteSpec, find_sprites


@torch.no_grad()
def next_frame_x0(engine, episodes: Sequence[EvalEpisode], plan, cfg: EvalConfig, levels: Sequence[float],
                  no_action: int, seed: int = 0):
    """Per batch of ``plan``: (last context frames (B, R, R, 3), real next frames (B, R, R, 3) uint8,
    {sigma: (noisy input, x0) as uint8 (B, R, R, 3)}), x0 being the model's for the real next frame
    noised to sigma after the real context (one forward each, nothing committed to the cache)."""
    gen = torch.Generator().manual_seed(seed)
    for lo in range(0, len(plan), cfg.batch):
        ctx, prev, acts, real = batch_inputs(episodes, plan[lo:lo + cfg.batch], cfg, no_action)
        B = len(ctx)
        engine.reset(B, seed=seed)
        engine.prefill(to_model(ctx), torch.as_tensor(prev))
        target = to_model(real[:, :1])  # (B, 1, 3, R, R)
        noise = torch.randn(target.shape, generator=gen)
        act, anchor = torch.as_tensor(acts[:, :1]), engine._next_anchor(1)
        out = {}
        for s in levels:
            noisy = (1 - s) * target + s * noise
            x0 = engine._forward(noisy, torch.full((B, 1), s), act, engine.cache.next_positions(1), anchor).clamp(-1, 1)
            out[float(s)] = (to_uint8(noisy.clamp(-1, 1))[:, 0], to_uint8(x0)[:, 0])
        yield ctx[:, -1], real[:, 0], out


def one_frame_sprite_error(engine, episodes: Sequence[EvalEpisode], plan, cfg: EvalConfig, sprite: SpriteSpec,
                           levels: Sequence[float], no_action: int, seed: int = 0) -> dict:
    """{"levels": {sigma: mean px}, "copy_last": mean px, "rollouts": n}; rollouts where the real
    sprite is not found are left out of every mean."""
    errs: dict[float, list] = {float(s): [] for s in levels}
    copy: list = []
    for last, real, at in next_frame_x0(engine, episodes, plan, cfg, levels, no_action, seed):
        rp, rf = find_sprites(real, sprite)
        cp, cf = find_sprites(last, sprite)
        copy += list(np.linalg.norm(cp - rp, axis=1)[rf & cf])
        for s, (_, x0) in at.items():
            pp, pf = find_sprites(x0, sprite)
            errs[s] += list(np.linalg.norm(pp - rp, axis=1)[rf & pf])
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"levels": {s: mean(v) for s, v in errs.items()}, "copy_last": mean(copy), "rollouts": len(plan)}


def load_for_research(args, dtype: torch.dtype = torch.bfloat16):
    """(model, meta, Engine, episodes, plan, cfg) for ``--checkpoint --episodes --split --context --starts``:
    the one-frame measurements' common setup (horizon 1, CPU)."""
    from worldsim.engine import Engine
    from worldsim.eval.cli import load_for_eval, resolve_checkpoint
    from worldsim.eval.rollout import load_eval_episodes, make_plan

    model, meta, engine_cfg = load_for_eval(resolve_checkpoint(args.checkpoint), torch.device("cpu"),
                                            dtype, [])
    episodes = load_eval_episodes(args.episodes, model.cfg.resolution, meta["env_id"], meta["action_meanings"],
                                  args.split)
    cfg = EvalConfig(context=args.context, horizon=1, starts=args.starts)
    cfg.validate()
    engine = Engine(model, engine_cfg, device=torch.device("cpu"), action_meanings=meta["action_meanings"])
    return model, meta, engine, episodes, make_plan(episodes, cfg), cfg


def research_parser(doc: str, levels: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--checkpoint", help="default: the shipped model")
    ap.add_argument("--episodes", nargs="+", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--levels", default=levels, help="noise levels, comma list")
    return ap


# -- the command ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    return run_command("one_frame_floor", measure, argv)


def measure(argv) -> int:
    from worldsim.eval.sprites import sprite_spec

    args = research_parser(__doc__, "0.1,0.3,0.5,0.75,1.0").parse_args(argv)
    model, meta, engine, episodes, plan, cfg = load_for_research(args)
    out = one_frame_sprite_error(engine, episodes, plan, cfg, sprite_spec(meta["env_id"]),
                                 [float(v) for v in args.levels.split(",")], model.cfg.num_actions)
    for s, e in out["levels"].items():
        print(f"sigma {s:.2f}: sprite error {e:.2f} px" if e is not None else f"sigma {s:.2f}: no sprite found")
    print(f"copy-last: {out['copy_last']:.2f} px over {out['rollouts']} contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
