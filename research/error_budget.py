"""Where a model's open-loop error lies in the frame, and what fixing each part would be worth in PSNR.

    worldsim eval --episodes data/boxing data/boxing_scripted --split heldout --settings 1x2 --starts 16 \
        --batch 32 --save-rollouts out/ro --json out/eval_ro.json
    python -m research.error_budget --rollouts out/ro --episodes data/boxing data/boxing_scripted \
        --split heldout --json out/error_budget.json

prints each region's share of the model's and copy-last's squared error over horizons 1-8, the MSE-PSNR
with each region drawn exactly, and the player's error at the horizon by how close the boxers come
(apart, the keys alone move it).

Boundary: saved rollouts (``worldsim eval --save-rollouts``) and their real frames in, an error budget
out; no model. Every pixel of every compared frame falls in one region (first match wins):

- ``player``: within the sprite spec's colour of the player in the real *or* the predicted frame,
  grown by ``grow`` px (where it is and where it was drawn: a misplaced sprite's error is both);
- ``opponent``: the same for the other body (``sprites.OPPONENTS``), when the game has one;
- ``top``: the rows above the sprite region (Boxing's scores and clock);
- ``rest``: everything else (floor, ring, what neither sprite covers).

For each region: its share of the model's squared error and of copy-last's, and the "oracle" MSE-PSNR
the model would reach with that region drawn exactly (the real pixels pasted in), per horizon, in the
metric ``worldsim eval`` reports (``10 log10(1 / mean MSE)`` on [0, 1] pixels, averaged over horizons).
So a reader sees how far a perfect player alone could lift the PSNR over copy-last, and what is left
to the opponent and the background.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from research import run_command
from worldsim.eval.sprites import SpriteSpec, find_sprites, sprite_mask

REGIONS = ("player", "opponent", "top", "rest")


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation of (N, H, W) masks by a (2 px + 1) square."""
    out = mask.copy()
    for _ in range(px):
        m = out.copy()
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        m[:, :, 1:] |= out[:, :, :-1]
        m[:, :, :-1] |= out[:, :, 1:]
        m[:, 1:, 1:] |= out[:, :-1, :-1]
        m[:, 1:, :-1] |= out[:, :-1, 1:]
        m[:, :-1, 1:] |= out[:, 1:, :-1]
        m[:, :-1, :-1] |= out[:, 1:, 1:]
        out = m
    return out


def region_labels(real: np.ndarray, pred: np.ndarray, player: SpriteSpec, opponent: SpriteSpec | None,
                  grow_px: int = 1) -> np.ndarray:
    """(N, H, W) int8 index into ``REGIONS`` for paired uint8 frames (N, H, W, 3)."""
    N, H, W = real.shape[:3]
    lab = np.full((N, H, W), REGIONS.index("rest"), np.int8)
    lab[:, :int(player.rows[0] * H)] = REGIONS.index("top")
    if opponent is not None:
        lab[grow(sprite_mask(real, opponent) | sprite_mask(pred, opponent), grow_px)] = REGIONS.index("opponent")
    lab[grow(sprite_mask(real, player) | sprite_mask(pred, player), grow_px)] = REGIONS.index("player")
    return lab


def error_budget(rollouts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], player: SpriteSpec,
                 opponent: SpriteSpec | None, horizon: int, grow_px: int = 1) -> dict:
    """``rollouts``: (pred (H', R, R, 3), real (H', R, R, 3), last context frame (R, R, 3)) uint8, H' >= horizon.

    Returns per source ("model", "copy_last") and region the mean squared error per horizon (sums over
    regions give the full MSE), the share of the error over horizons 1..``horizon``, the MSE-PSNR
    averaged over them, and for the model the same PSNR with each region (and player + opponent)
    replaced by the real pixels.
    """
    H = horizon
    se = {src: np.zeros((len(REGIONS), H)) for src in ("model", "copy_last")}
    area = {src: np.zeros((len(REGIONS), H)) for src in ("model", "copy_last")}
    n = 0
    for pred, real, last in rollouts:
        if len(pred) < H or len(real) < H:
            raise ValueError(f"a rollout has {min(len(pred), len(real))} frames; --horizon {H} needs {H}")
        real = real[:H]
        n_pix = real.shape[1] * real.shape[2]
        for src, p in (("model", pred[:H]), ("copy_last", np.broadcast_to(last, real.shape))):
            lab = region_labels(real, p, player, opponent, grow_px)
            err = ((p.astype(np.float64) - real.astype(np.float64)) / 255.0) ** 2  # (H, R, R, 3)
            err = err.mean(-1)
            for r in range(len(REGIONS)):
                m = lab == r
                se[src][r] += (err * m).sum((1, 2)) / n_pix  # this region's part of the frame's MSE
                area[src][r] += m.sum((1, 2)) / n_pix
        n += 1
    if n == 0:
        raise ValueError("no rollouts to budget")

    def psnr(mse_h):  # the eval's MSE-PSNR: per horizon over rollouts, averaged over horizons
        return float(np.mean(10 * np.log10(1.0 / np.maximum(mse_h, 1e-10))))

    out: dict = {"rollouts": n, "horizon": H, "grow_px": grow_px, "regions": list(REGIONS), "sources": {}}
    for src in se:
        mse_r = se[src] / n  # (regions, H)
        total = mse_r.sum(0)
        out["sources"][src] = {
            "psnr_mse": psnr(total),
            "mse_per_horizon": total.tolist(),
            "share": {R: float(mse_r[i].sum() / total.sum()) for i, R in enumerate(REGIONS)},
            "area": {R: float(area[src][i].mean() / n) for i, R in enumerate(REGIONS)},
        }
    m = se["model"] / n
    oracle = {f"exact {R}": psnr(m.sum(0) - m[i]) for i, R in enumerate(REGIONS)}
    oracle["exact player + opponent"] = psnr(m.sum(0) - m[0] - m[1])
    out["oracle_psnr_mse"] = oracle
    out["copy_last_psnr_mse"] = out["sources"]["copy_last"]["psnr_mse"]
    return out


def sample_spread(rollouts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], specs: dict[str, SpriteSpec],
                  horizon: int) -> dict:
    """Is the error bias or the model's own uncertainty? ``rollouts``: (sample A, sample B, real) uint8 frames
    (H', R, R, 3) of the same rollout under different noise seeds.

    A sampler whose posterior is right draws the truth like one more sample: the distance between two of its
    samples matches each sample's distance to the truth (for squared errors exactly, in expectation). Much
    smaller sample-to-sample than sample-to-truth distances mean a confident, wrong model (bias); equal
    ones, that the error is what the model cannot know from what it sees. Per horizon: frame MSE between
    the samples and to the truth, and for each sprite the mean distance between the samples' and to the real
    position (rollouts where all three show it); and the MSE-PSNR of one sample against that of the two
    samples' average (a blurred frame no sampler draws, which the squared error rewards).
    """
    H = horizon
    mse_ab, mse_real, mse_avg = np.zeros(H), np.zeros(H), np.zeros(H)
    d_ab = {k: [[] for _ in range(H)] for k in specs}
    d_real = {k: [[] for _ in range(H)] for k in specs}
    for a, b, real in rollouts:
        a, b, real = (np.asarray(x[:H], np.float64) for x in (a, b, real))
        mse_ab += (((a - b) / 255.0) ** 2).mean((1, 2, 3))
        mse_real += 0.5 * ((((a - real) / 255.0) ** 2).mean((1, 2, 3)) + (((b - real) / 255.0) ** 2).mean((1, 2, 3)))
        mse_avg += ((((a + b) / 2 - real) / 255.0) ** 2).mean((1, 2, 3))  # the two samples averaged (a blur)
        for k, spec in specs.items():
            (pa, fa), (pb, fb), (pr, fr) = (find_sprites(x, spec) for x in (a, b, real))
            for h in np.flatnonzero(fa & fb & fr):
                d_ab[k][h].append(float(np.linalg.norm(pa[h] - pb[h])))
                d_real[k][h].append(0.5 * float(np.linalg.norm(pa[h] - pr[h]) + np.linalg.norm(pb[h] - pr[h])))
    n = len(rollouts)
    if n == 0:
        raise ValueError("no rollout pairs to compare")

    def mean(v):
        return float(np.mean(v)) if v else None

    def psnr(mse_sum):  # the eval's MSE-PSNR, averaged over horizons
        return float(np.mean(10 * np.log10(1.0 / np.maximum(mse_sum / n, 1e-10))))

    return {"rollouts": n, "mse_between_samples": (mse_ab / n).tolist(), "mse_to_real": (mse_real / n).tolist(),
            "psnr_mse_sample": psnr(mse_real), "psnr_mse_average_of_two": psnr(mse_avg),
            "sprites": {k: {"between_samples_px": [mean(v) for v in d_ab[k]],
                            "to_real_px": [mean(v) for v in d_real[k]]} for k in specs}}


def error_by_separation(rollouts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], player: SpriteSpec,
                        opponent: SpriteSpec, horizon: int, edges: Sequence[float] = (10.0, 15.0)) -> dict:
    """Is the player's misplacement where the boxers touch? ``rollouts`` as ``error_budget``'s.

    Each rollout falls in a bin by the closest the two bodies come in the real frames, from the last
    context frame to ``horizon`` (centroid distance in px at the model's resolution; bins split at
    ``edges``). Per bin: how many rollouts, and the mean player distance at ``horizon`` of the model and
    of copy-last (rollouts where the real frame and the prediction show the player). Where the bodies
    stay apart, what moves the player is the keys alone; where they meet, also blows and pushes that the
    frames foretell only in part.
    """
    H = horizon
    bounds = [0.0, *[float(e) for e in edges], float("inf")]
    rows = []  # (min separation, model error, copy-last error)
    for pred, real, last in rollouts:
        if len(pred) < H or len(real) < H:
            raise ValueError(f"a rollout has {min(len(pred), len(real))} frames; --horizon {H} needs {H}")
        seen = np.concatenate([last[None], real[:H]])
        (rp, rf), (op, of) = find_sprites(seen, player), find_sprites(seen, opponent)
        both = rf & of
        if not both.any() or not rf[H]:
            continue  # nothing to place against
        sep = float(np.min(np.linalg.norm(rp[both] - op[both], axis=1)))
        pp, pf = find_sprites(pred[H - 1:H], player)
        model = float(np.linalg.norm(pp[0] - rp[H])) if pf[0] else np.nan
        copy = float(np.linalg.norm(rp[0] - rp[H])) if rf[0] else np.nan
        rows.append((sep, model, copy))
    if not rows:
        raise ValueError("no rollout shows both bodies and the player at the horizon")
    a = np.asarray(rows)

    def mean(v):
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else None

    bins = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = (a[:, 0] >= lo) & (a[:, 0] < hi)
        bins.append({"min_separation_px": [lo, hi], "rollouts": int(m.sum()),
                     "model_px": mean(a[m, 1]), "copy_last_px": mean(a[m, 2])})
    return {"horizon": H, "rollouts": len(a), "bins": bins}


# -- the command ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    return run_command("error_budget", budget, argv)


def budget(argv) -> int:
    from worldsim.errors import WorldsimError
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
        from worldsim.data.episode import write_json_atomic  # an interrupted run leaves the old file whole

        write_json_atomic(Path(args.json), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
