"""Where a model's open-loop error lies in the frame, and what fixing each part would be worth in PSNR.

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

from typing import Sequence

import numpy as np

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
