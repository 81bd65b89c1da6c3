"""How predictable the player's motion is without pixels: linear and MLP predictors on the sprite's track.

    python -m research.sprite_predictability --train data/boxing data/boxing_scripted data/boxing_switchy \
        --heldout data/boxing data/boxing_scripted --json out/sprite_predictability.json

Thin entry over ``research.predictability``; prints the one-frame and open-loop errors of copy-last,
a linear fit and an MLP, trained on the train split and measured on the held-out one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from research import run_command


def main(argv=None) -> int:
    return run_command("sprite_predictability", measure, argv)


def measure(argv) -> int:
    from worldsim.data.episode import list_episodes, read_meta
    from research.predictability import fit_linear, fit_mlp, motion_rows, open_loop_errors, sprite_tracks
    from worldsim.eval.sprites import opponent_spec, sprite_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="dataset directories (their train split is used)")
    ap.add_argument("--heldout", nargs="+", required=True, help="dataset directories (their heldout split is used)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--history", type=int, default=6, help="past moves and actions each predictor sees")
    ap.add_argument("--epochs", type=int, default=30, help="MLP epochs (0: linear only)")
    ap.add_argument("--horizons", default="1,8,16")
    ap.add_argument("--opponent", action="store_true",
                    help="track the opponent too: the predictors see and roll both bodies (the error is the player's)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    meta = read_meta(list_episodes(args.train[0])[0])
    sprite, n_act, R = sprite_spec(meta["env_id"]), len(meta["action_meanings"]), args.resolution
    other = opponent_spec(meta["env_id"]) if args.opponent else None
    train = sprite_tracks(args.train, "train", R, sprite, other)
    held = sprite_tracks(args.heldout, "heldout", R, sprite, other)
    X, Y = motion_rows(train, args.history, n_act, R)
    Xh, Yh = motion_rows(held, args.history, n_act, R)
    horizons = [int(h) for h in args.horizons.split(",")]
    predictors = {"linear": fit_linear(X, Y)}
    if args.epochs > 0:
        predictors["mlp"] = fit_mlp(X, Y, epochs=args.epochs)
    import numpy as np

    out = {"train_rows": len(X), "heldout_rows": len(Xh), "history": args.history, "opponent": args.opponent,
           "one_frame": {"copy_last": float(np.linalg.norm(Yh[:, :2], axis=1).mean())}, "open_loop": {}}
    for name, predict in predictors.items():  # the player's error (columns 0-1)
        out["one_frame"][name] = float(np.linalg.norm((Yh - predict(Xh))[:, :2], axis=1).mean())
        out["open_loop"][name] = open_loop_errors(held, predict, args.history, n_act, R, horizons)
    print(f"one frame ahead ({len(Xh)} held-out frames): " +
          ", ".join(f"{k} {v:.2f} px" for k, v in out["one_frame"].items()))
    for name, res in out["open_loop"].items():
        print(f"{name} open-loop: " + ", ".join(f"h{h} {r['model']:.2f} px (copy-last {r['copy_last']:.2f}, "
                                                 f"{r['starts']} starts)" for h, r in res.items()))
        if args.opponent:
            print(f"{name} open-loop, the opponent: " + ", ".join(
                f"h{h} {r['other_model']:.2f} px (copy-last {r['other_copy_last']:.2f})" for h, r in res.items()))
    if args.json:
        from worldsim.data.episode import write_json_atomic  # an interrupted run leaves the old file whole

        write_json_atomic(Path(args.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
