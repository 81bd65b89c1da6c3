"""Where the open-loop error lies (player, opponent, scores, background) and what an exact player would be worth.

    worldsim eval --episodes data/boxing data/boxing_scripted --split heldout --settings 1x2 --starts 16 \
        --batch 32 --save-rollouts out/ro --json out/eval_ro.json
    python scripts/error_budget.py --rollouts out/ro --episodes data/boxing data/boxing_scripted \
        --split heldout --json out/error_budget.json

Thin entry over ``worldsim.eval.error_budget``: prints each region's share of the model's and
copy-last's squared error over horizons 1-8, the MSE-PSNR with each region drawn exactly, and the
player's error at the horizon by how close the boxers come (apart, the keys alone move it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from worldsim.errors import WorldsimError

    try:
        return budget(argv)
    except (WorldsimError, ValueError) as e:  # a bad input: one line, no traceback
        print(f"error_budget: {e}", file=sys.stderr)
        return 2


def budget(argv) -> int:
    from worldsim.errors import WorldsimError
    from worldsim.eval.error_budget import REGIONS, error_budget, error_by_separation, sample_spread
    from worldsim.eval.rollout import load_eval_episodes
    from worldsim.eval.sprites import NoSpriteSpec, opponent_spec, sprite_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", required=True, help="a directory of rollouts saved by worldsim eval --save-rollouts")
    ap.add_argument("--episodes", nargs="+", required=True, help="the episodes the rollouts were made from")
    ap.add_argument("--split", default=None)
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--grow", type=int, default=1, help="px added around each sprite's pixels")
    ap.add_argument("--second", help="the same rollouts saved under another noise seed (eval --spacing even "
                                     "--seed S): also print how far two samples lie apart against their error")
    ap.add_argument("--json", help="write the budget here")
    args = ap.parse_args(argv)
    files = sorted(Path(args.rollouts).glob("*.npz"))
    if not files:
        raise WorldsimError(f"no rollouts (*.npz) in {args.rollouts}; write them with worldsim eval --save-rollouts DIR")
    first = np.load(files[0])
    env_id, meanings = str(first["env_id"]), [str(m) for m in first["action_meanings"]]
    R = first["frames"].shape[1]
    episodes = {e.name: e for e in load_eval_episodes(args.episodes, R, env_id, meanings, args.split)}
    player = sprite_spec(env_id)
    try:
        opponent = opponent_spec(env_id)
    except NoSpriteSpec:
        opponent = None
    rollouts, pairs = [], []
    for f in files:
        z = np.load(f)
        meta = json.loads(str(z["meta_json"]))
        ep = episodes.get(meta["source_episode"])
        if ep is None:
            raise WorldsimError(f"{f.name}: its episode '{meta['source_episode']}' is not among --episodes "
                                f"{' '.join(args.episodes)} (split {args.split}); pass the episodes it was made from")
        s = int(z["start"])
        rollouts.append((z["frames"], ep.frames[s:s + args.horizon], ep.frames[s - 1]))
        if args.second:
            other = Path(args.second) / f.name
            if not other.is_file():
                raise WorldsimError(f"{other} is missing: --second must hold the same rollouts (the same "
                                    f"--episodes --split --starts --spacing even, another --seed)")
            pairs.append((z["frames"], np.load(other)["frames"], ep.frames[s:s + args.horizon]))
    out = error_budget(rollouts, player, opponent, args.horizon, args.grow)
    if opponent is not None:
        out["separation"] = error_by_separation(rollouts, player, opponent, args.horizon)
    if pairs:
        specs = {"player": player} | ({"opponent": opponent} if opponent is not None else {})
        out["spread"] = sample_spread(pairs, specs, args.horizon)
    copy = out["copy_last_psnr_mse"]
    print(f"{out['rollouts']} rollouts, horizons 1-{args.horizon}: MSE-PSNR model "
          f"{out['sources']['model']['psnr_mse']:.2f} dB, copy-last {copy:.2f} "
          f"(+{out['sources']['model']['psnr_mse'] - copy:.2f})")
    for src in ("model", "copy_last"):
        s = out["sources"][src]
        print(f"  {src:9s} error share: " + ", ".join(f"{r} {100 * s['share'][r]:.0f}% "
                                                      f"(area {100 * s['area'][r]:.1f}%)" for r in REGIONS))
    for name, v in out["oracle_psnr_mse"].items():
        print(f"  model with {name:24s} {v:.2f} dB (+{v - copy:.2f} over copy-last)")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    if "separation" in out:
        print(f"  the player at h{args.horizon} by how close the boxers come (centroids, px):")
        for b in out["separation"]["bins"]:
            lo, hi = b["min_separation_px"]
            print(f"    {lo:4.0f}-{hi:<4.0f} {b['rollouts']:4d} rollouts: model {fmt(b['model_px'])} px, "
                  f"copy-last {fmt(b['copy_last_px'])}")
    if pairs:
        sp, hs = out["spread"], sorted({0, args.horizon // 2 - 1, args.horizon - 1})
        print(f"  two samples ({sp['rollouts']} pairs), at h" + "/".join(str(h + 1) for h in hs) + ": frame MSE "
              "between them " + "/".join(f"{1e3 * sp['mse_between_samples'][h]:.1f}" for h in hs) + " against "
              "each one's to the real frame " + "/".join(f"{1e3 * sp['mse_to_real'][h]:.1f}" for h in hs) + " (x1e-3)")
        print(f"    MSE-PSNR h1-{args.horizon}: one sample {sp['psnr_mse_sample']:.2f} dB, the two averaged "
              f"{sp['psnr_mse_average_of_two']:.2f} (+{sp['psnr_mse_average_of_two'] - copy:.2f} over copy-last)")
        for k, v in sp["sprites"].items():
            print(f"    {k}: between samples " + "/".join(fmt(v["between_samples_px"][h]) for h in hs) +
                  " px, to the real one " + "/".join(fmt(v["to_real_px"][h]) for h in hs) + " px")
    if args.json:
        from worldsim.eval.cli import write_json  # atomic: an interrupted run leaves the old file whole

        write_json(Path(args.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
