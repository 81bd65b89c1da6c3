"""Paired comparison of two evaluations on the same rollouts: is B better than A, or is it noise?

Boundary: two ``worldsim eval`` JSONs in, the difference B - A with a 95% interval out. Two
evaluations made with the same episodes, split, context, horizon, starts and seed hold the same
rollouts (their ``rollouts`` lists match); each setting (and each baseline) keeps every rollout's
frame MSE and sprite error per horizon (``per_rollout``). The rollouts are resampled with
replacement, the same draw for both sides (a paired bootstrap), and the two table figures recomputed
on every draw: MSE-PSNR averaged over horizons 1-8 and the sprite error at horizon 8.

Why: one rollout's sprite error at h8 ranges over 0-13 px, so the mean of 80 rollouts moves by
about 0.4 px between samples: two Boxing students measured +0.34 px apart on one set of 80 rollouts
(95% interval -0.10 .. +0.80) and -0.42 px on 160 others (-0.78 .. -0.09). Differences of that size
need the interval, and more rollouts. ``worldsim eval compare A.json B.json`` is the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worldsim.errors import DataError

BASELINES = ("copy_last", "mean_frame")


def load_eval(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"evaluation '{p}' not found; write one with 'worldsim eval ... --json {p}'")
    try:
        res = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"evaluation '{p}' is not valid JSON ({e}); re-run worldsim eval") from None
    if not isinstance(res, dict) or res.get("command") != "worldsim eval" or "rollouts" not in res:
        raise DataError(f"'{p}' is not a worldsim eval JSON (no 'command': 'worldsim eval' with its rollouts)")
    if not res.get("complete"):
        raise DataError(f"evaluation '{p}' is incomplete (the run stopped early); re-run worldsim eval")
    return res


def pick(res: dict, setting: str | None, path: str | Path) -> tuple[str, dict, int]:
    """(name, per-rollout values, the h8 horizon) of a setting ('1x2'; default: the first) or a
    baseline ('copy_last', 'mean_frame')."""
    if setting in BASELINES:
        entry = res["baselines"].get(setting, {})
        name = setting
    else:
        names = [s["name"] for s in res["settings"]]
        if not names:
            raise DataError(f"evaluation '{path}' has no model settings")
        name = setting or names[0]
        if name not in names:
            raise DataError(f"evaluation '{path}' has no setting '{name}' (it has {', '.join(names)}; or give "
                            f"{' / '.join(BASELINES)})")
        entry = res["settings"][names.index(name)]
    values = entry.get("per_rollout")
    if not values or "mse" not in values:
        raise DataError(f"evaluation '{path}' keeps no per-rollout values for '{name}' (a file format "
                        f"without settings[].per_rollout); re-run worldsim eval to compare it")
    h8 = int(res.get("baselines", {}).get("copy_last", {}).get("summary", {}).get("horizons", {}).get("h8")
             or min(8, len(res["horizons"])))
    return name, values, h8


def _psnr_mse(mse: np.ndarray, h: int) -> np.ndarray:
    """(draws, N, H) or (N, H) MSE -> MSE-PSNR over horizons 1..h, per draw."""
    mean = np.nanmean(mse[..., :h], axis=-2)  # (draws, h): the mean error over the rollouts, per horizon
    return (10 * np.log10(1.0 / np.maximum(mean, 1e-10))).mean(-1)


def paired(a: dict, b: dict, h8: int, draws: int = 2000, seed: int = 0) -> dict:
    """B - A on the same rollouts: each figure's value for A and B, the difference and its 95% interval."""
    mse_a, mse_b = (np.asarray(v["mse"], dtype=np.float64) for v in (a, b))
    if mse_a.shape != mse_b.shape:
        raise DataError(f"the two evaluations have different rollout shapes {mse_a.shape} and {mse_b.shape}")
    N = len(mse_a)
    idx = np.random.default_rng(seed).integers(0, N, size=(draws, N))
    out = {"rollouts": N, "draws": draws}
    fa, fb = _psnr_mse(mse_a, h8), _psnr_mse(mse_b, h8)
    d = _psnr_mse(mse_b[idx], h8) - _psnr_mse(mse_a[idx], h8)
    out["psnr_mse_h1_8"] = {"a": float(fa), "b": float(fb), "diff": float(fb - fa),
                            "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]}
    if "sprite_err_px" in a and "sprite_err_px" in b:
        sa = np.asarray(a["sprite_err_px"], dtype=np.float64)[:, h8 - 1]
        sb = np.asarray(b["sprite_err_px"], dtype=np.float64)[:, h8 - 1]
        both = np.isfinite(sa) & np.isfinite(sb)  # NaN: the real frame had no sprite to compare with
        diff = np.where(both, sb - sa, 0.0)
        boot = (diff[idx] * both[idx]).sum(1) / np.maximum(both[idx].sum(1), 1)
        out["sprite_err_h8"] = {"a": float(sa[both].mean()), "b": float(sb[both].mean()),
                                "diff": float(diff[both].mean()), "pairs": int(both.sum()),
                                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}
    return out


def compare_files(path_a: str | Path, path_b: str | Path, setting_a: str | None = None,
                  setting_b: str | None = None, draws: int = 2000, seed: int = 0) -> dict:
    ra, rb = load_eval(path_a), load_eval(path_b)
    if ra["rollouts"] != rb["rollouts"] or ra["horizons"] != rb["horizons"]:
        raise DataError(f"'{path_a}' and '{path_b}' were not made on the same rollouts; evaluate both with the same "
                        f"--episodes, --split, --context, --horizon, --starts, --spacing and --seed")
    name_a, va, h8 = pick(ra, setting_a, path_a)
    name_b, vb, _ = pick(rb, setting_b, path_b)
    out = paired(va, vb, h8, draws, seed)
    out.update(a={"path": str(path_a), "setting": name_a, "checkpoint": ra["checkpoint"]["path"]},
               b={"path": str(path_b), "setting": name_b, "checkpoint": rb["checkpoint"]["path"]}, h8=h8)
    return out


def format_comparison(c: dict) -> str:
    def line(label, f, unit, better):
        lo, hi = f["ci95"]
        verdict = "no clear difference" if lo <= 0 <= hi else ("B better" if (f["diff"] > 0) == better else "A better")
        return (f"{label}: A {f['a']:.2f} {unit}, B {f['b']:.2f} {unit}, B - A {f['diff']:+.2f} "
                f"(95% interval {lo:+.2f} .. {hi:+.2f}): {verdict}")

    lines = [f"A: {c['a']['checkpoint']} [{c['a']['setting']}]   B: {c['b']['checkpoint']} [{c['b']['setting']}]   "
             f"{c['rollouts']} shared rollouts, {c['draws']} paired bootstrap draws",
             line("MSE-PSNR h1-8", c["psnr_mse_h1_8"], "dB", True)]
    if "sprite_err_h8" in c:
        lines.append(line(f"sprite error h{c['h8']}", c["sprite_err_h8"], "px", False))
    return "\n".join(lines)
