"""How far the player's place 8 steps on follows from the whole game state, against from the tracks.

    python -m research.state_predictability --json out/state_predictability.json

Plays sticky-random Boxing in the real emulator (deterministic, as the collections; its own seeds),
keeps the RAM before every action, and fits two MLPs that regress the player's move over ``--horizon``
steps directly: one from the tracks (both bodies' places, last moves and actions) and the next keys,
one from the RAM, the places and the next keys. Each on growing shares of the training episodes, so the
figures say how fast a learner's error falls with data. Thin entry over ``research.predictability``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from research import run_command


def main(argv=None) -> int:
    return run_command("state_predictability", measure, argv)


def measure(argv) -> int:
    import numpy as np

    from research.predictability import direct_rows, emulator_tracks, fit_mlp
    from worldsim.eval.sprites import opponent_spec, sprite_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="ALE/Boxing-v5")
    ap.add_argument("--train-episodes", type=int, default=40, help="seeds 100.. (the collections use others)")
    ap.add_argument("--heldout-episodes", type=int, default=6, help="seeds 900..")
    ap.add_argument("--steps", type=int, default=1800, help="steps per episode at most (Boxing ends at ~1,786)")
    ap.add_argument("--repeat-prob", type=float, default=0.8, help="the sticky policy's (configs/collect_boxing.yaml)")
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--history", type=int, default=6)
    ap.add_argument("--fractions", default="0.25,0.5,1", help="shares of the training episodes to fit on")
    ap.add_argument("--epochs", type=int, default=30, help="MLP epochs on all the data (more on a share: the same steps)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    specs = sprite_spec(args.env), opponent_spec(args.env)
    play = lambda first, n: emulator_tracks(args.env, range(first, first + n), args.steps, args.repeat_prob, 64, *specs)
    (train, n_act), (held, _) = play(100, args.train_episodes), play(900, args.heldout_episodes)
    xt, xs, y = direct_rows(train, args.horizon, args.history, n_act, 64)
    ht, hs, hy = direct_rows(held, args.horizon, args.history, n_act, 64, every=8)
    copy = float(np.linalg.norm(hy, axis=1).mean())
    out = {"env": args.env, "horizon": args.horizon, "train_rows": len(y), "heldout_starts": len(hy),
           "copy_last_px": copy, "fits": []}
    print(f"{len(y)} training rows, {len(hy)} held-out starts; copy-last at h{args.horizon} {copy:.2f} px")
    for frac in (float(f) for f in args.fractions.split(",")):
        k = max(1, int(len(y) * frac))  # whole episodes in play order: the first k rows
        for name, X, H in (("tracks+keys", xt, ht), ("state+keys", xs, hs)):
            predict = fit_mlp(X[:k], y[:k], epochs=max(1, round(args.epochs / frac)), width=512)
            err = np.linalg.norm(predict(H) - hy, axis=1)
            fit_err = float(np.linalg.norm(predict(X[:k:10]) - y[:k:10], axis=1).mean())
            row = {"view": name, "fraction": frac, "rows": k, "heldout_px": float(err.mean()),
                   "median_px": float(np.median(err)), "under_1_5px": float((err < 1.5).mean()), "train_px": fit_err}
            out["fits"].append(row)
            print(f"{name:12s} on {frac:4.0%} ({k} rows): held-out h{args.horizon} {row['heldout_px']:.2f} px "
                  f"(median {row['median_px']:.2f}, {row['under_1_5px']:.0%} under 1.5 px; on its own rows {fit_err:.2f})")
    if args.json:
        from worldsim.data.episode import write_json_atomic  # an interrupted run leaves the old file whole

        write_json_atomic(Path(args.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
