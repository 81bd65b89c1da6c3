"""Where the sprite error comes from: the model's one-frame placement of the player by noise level.

    python scripts/one_frame_floor.py --episodes data/boxing data/boxing_scripted --split heldout --starts 8

Thin entry over ``worldsim.eval.floor``; prints one line per noise level and copy-last's error.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    from worldsim.engine import Engine
    from worldsim.eval.cli import load_for_eval, resolve_checkpoint
    from worldsim.eval.floor import one_frame_sprite_error
    from worldsim.eval.rollout import EvalConfig, load_eval_episodes, make_plan
    from worldsim.eval.sprites import sprite_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="default: the shipped model")
    ap.add_argument("--episodes", nargs="+", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--levels", default="0.1,0.3,0.5,0.75,1.0", help="noise levels, comma list")
    args = ap.parse_args(argv)
    ckpt = resolve_checkpoint(args.checkpoint)
    model, meta, engine_cfg = load_for_eval(ckpt, torch.device("cpu"), torch.bfloat16, [])
    episodes = load_eval_episodes(args.episodes, model.cfg.resolution, meta["env_id"], meta["action_meanings"],
                                  args.split)
    cfg = EvalConfig(context=args.context, horizon=1, starts=args.starts)
    cfg.validate()
    out = one_frame_sprite_error(Engine(model, engine_cfg, device=torch.device("cpu")), episodes, make_plan(episodes, cfg),
                                 cfg, sprite_spec(meta["env_id"]), [float(v) for v in args.levels.split(",")],
                                 model.cfg.num_actions)
    for s, e in out["levels"].items():
        print(f"sigma {s:.2f}: sprite error {e:.2f} px" if e is not None else f"sigma {s:.2f}: no sprite found")
    print(f"copy-last: {out['copy_last']:.2f} px over {out['rollouts']} contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
