"""Action response: when the player holds a direction, does the model move the player's sprite?

The sprite error of ``worldsim eval`` compares positions under the recorded actions; a model that
ignores actions can still score near copy-last there, because the recorded player mostly stands or
jitters. This measures the action's effect directly. From the same real contexts and the same noise,
the model is rolled out holding each direction (``UP``, ``DOWN``, ``LEFT``, ``RIGHT``, as the game
names them) and holding ``NOOP``; the sprite's displacement over ``frames`` frames, minus the NOOP
rollout's, is the action's effect in the model. The real game's effect is read off the episodes: the
mean one-frame displacement after each action (``actions[t]`` moves ``frames[t]`` to
``frames[t + 1]``) minus NOOP's, times ``frames``. Their ratio (the model's effect projected on the
real one) is 1 for a model that moves the player as the game does and 0 for one that ignores the keys.
Walls and the opponent stop the real player, so that ratio compares models but is no absolute truth;
the second reference is: the real player's displacement over runs in the episodes where the direction
was held ``frames`` frames in a row (minus NOOP's held runs), ``ratio_held``, 1 for a model that moves
as far as the game does when the key is held. In the Boxing collections those runs move the player
0.36-0.66x the one-frame extrapolation (LEFT 0.36, RIGHT 0.52, DOWN 0.64, UP 0.66). A student that
ignores the keys reads 0.0 for every direction.

The third reference is the truth itself (``real_cf``, from ``worldsim.eval.counterfactual``): the
real game replayed to each context's last frame and played on with the same key held. Per context,
``cf_err_px`` is the distance between the model's sprite and the real one after ``frames`` frames
(NOOP held too), and ``ratio_cf`` the model's effect (minus its NOOP rollout) projected on the real
effect from the same moments (minus the real NOOP's): 1 moves the player as far as the game does there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from worldsim.eval.rollout import EvalConfig, EvalEpisode, batch_inputs, rollout
from worldsim.eval.sprites import SpriteSpec, find_sprites

DIRECTIONS = ("UP", "DOWN", "LEFT", "RIGHT")
MIN_REAL_PX_PER_FRAME = 0.05  # directions the real player barely moves in are not scored


def held_keys(meanings: Sequence[str], env_id: str | None = None) -> dict[str, str]:
    """The keys the action response holds, label -> the game's action name: NOOP and the game's directions.
    With ``env_id`` the directions are the player's arrows as the game maps them
    (``worldsim.envs.games.control_directions``: Pong's UP is its RIGHT); without, the actions named
    UP / DOWN / LEFT / RIGHT that ``meanings`` has."""
    if env_id is not None:
        from worldsim.envs.games import control_directions

        dirs = control_directions(env_id, meanings)
    else:
        dirs = {d: d for d in DIRECTIONS if d in meanings}
    return {**({"NOOP": "NOOP"} if "NOOP" in meanings else {}), **dirs}


def real_step_displacement(episodes: Sequence[EvalEpisode], sprite: SpriteSpec,
                           meanings: Sequence[str], keys: dict[str, str] | None = None) -> dict[str, dict]:
    """Mean one-frame sprite displacement (row, col) in pixels after each of NOOP and the directions
    (``keys``: label -> action name, ``held_keys``)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    keys = keys or held_keys(meanings)
    names = list(keys)
    for ep in episodes:
        pos, found = find_sprites(ep.frames, sprite)
        both = found[:-1] & found[1:]
        step = pos[1:] - pos[:-1]  # (T-1, 2)
        for name in names:
            sel = both & (ep.actions[:-1] == meanings.index(keys[name]))
            if sel.any():
                sums[name] = sums.get(name, np.zeros(2)) + step[sel].sum(0)
                counts[name] = counts.get(name, 0) + int(sel.sum())
    return {n: {"px_per_frame": (sums[n] / counts[n]).tolist(), "pairs": counts[n]} for n in names if n in counts}


def real_held_displacement(episodes: Sequence[EvalEpisode], sprite: SpriteSpec, meanings: Sequence[str],
                           frames: int, keys: dict[str, str] | None = None) -> dict[str, dict]:
    """Mean sprite displacement (row, col) in pixels over the runs where NOOP or a direction was held
    ``frames`` frames in a row (every start of such a run counts; the sprite found at both ends)."""
    keys = keys or held_keys(meanings)
    names = list(keys)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for ep in episodes:
        T = len(ep.actions)
        if T <= frames:
            continue
        pos, found = find_sprites(ep.frames, sprite)
        acts = np.asarray(ep.actions)
        windows = np.lib.stride_tricks.sliding_window_view(acts[:T - 1], frames)  # (T - frames, frames)
        ok = found[:T - frames] & found[frames:T]
        move = pos[frames:T] - pos[:T - frames]  # (T - frames, 2)
        for name in names:
            sel = ok & (windows == meanings.index(keys[name])).all(1)
            if sel.any():
                sums[name] = sums.get(name, np.zeros(2)) + move[sel].sum(0)
                counts[name] = counts.get(name, 0) + int(sel.sum())
    return {n: {"px": (sums[n] / counts[n]).tolist(), "runs": counts[n]} for n in names if n in counts}


def action_response(engine, episodes: Sequence[EvalEpisode], plan: Sequence[tuple[int, int]], cfg: EvalConfig,
                    sprite: SpriteSpec, meanings: Sequence[str], no_action: int, frames: int,
                    real: dict[str, dict], real_held: dict[str, dict] | None = None,
                    real_cf: dict[str, np.ndarray] | None = None, keys: dict[str, str] | None = None) -> dict:
    """Hold each direction for ``frames`` frames from the first ``cfg.batch`` contexts of ``plan``
    (``response_items``); compare the sprite's displacement (minus the NOOP rollout's) with the real
    game's (``real_step_displacement``, ``real_held_displacement`` and, per context, the real game's
    frames under the same keys ``real_cf`` (label -> (B, frames, R, R, 3)), where given). ``keys``: label
    -> action name (``held_keys``); results are keyed by label."""
    items = response_items(plan, cfg)
    keys = keys or held_keys(meanings)
    ctx, prev, _, _ = batch_inputs(episodes, items, EvalConfig(context=cfg.context, horizon=1), no_action)
    start_pos, start_found = find_sprites(ctx[:, -1], sprite)
    model_end: dict[str, np.ndarray] = {}

    def displacement(name: str) -> np.ndarray:  # (B, 2), NaN where the sprite is lost
        acts = np.full((len(items), frames), meanings.index(keys[name]), np.int64)
        out = rollout(engine, ctx, prev, acts, seed=cfg.seed)
        pos, found = find_sprites(out[:, -1], sprite)  # NaN where not found
        model_end[name] = pos
        d = pos - start_pos
        d[~(found & start_found)] = np.nan
        return d

    base = displacement("NOOP") if "NOOP" in keys else np.zeros((len(items), 2))
    real_base = np.asarray(real.get("NOOP", {}).get("px_per_frame", [0.0, 0.0]))
    held_base = np.asarray((real_held or {}).get("NOOP", {}).get("px", [0.0, 0.0]))
    per_action, ratios, held_ratios = {}, [], []
    for name in keys:
        if name == "NOOP" or name not in real:
            continue
        effect = displacement(name) - base
        ok = ~np.isnan(effect).any(1)
        model_px = effect[ok].mean(0) if ok.any() else np.full(2, np.nan)
        real_px = (np.asarray(real[name]["px_per_frame"]) - real_base) * frames
        scored = float(np.linalg.norm(real_px)) >= MIN_REAL_PX_PER_FRAME * frames and ok.any()
        ratio = float(model_px @ real_px / (real_px @ real_px)) if scored else None
        per_action[name] = {"action": keys[name], "model_px": model_px.tolist(), "real_px": real_px.tolist(),
                            "ratio": ratio, "rollouts_with_sprite": int(ok.sum())}
        if ratio is not None:
            ratios.append(ratio)
        if real_held and name in real_held and ok.any():
            held_px = np.asarray(real_held[name]["px"]) - held_base
            if float(np.linalg.norm(held_px)) >= MIN_REAL_PX_PER_FRAME * frames:
                r = float(model_px @ held_px / (held_px @ held_px))
                per_action[name].update(real_held_px=held_px.tolist(), held_runs=real_held[name]["runs"], ratio_held=r)
                held_ratios.append(r)
    out = {"frames": frames, "rollouts": len(items), "actions": per_action,
           "mean_ratio": float(np.mean(ratios)) if ratios else None,
           "mean_ratio_held": float(np.mean(held_ratios)) if held_ratios else None}
    if real_cf is not None:
        out["counterfactual"] = counterfactual_scores(model_end, real_cf, sprite)
    return out


def response_items(plan: Sequence[tuple[int, int]], cfg: EvalConfig) -> list[tuple[int, int]]:
    """The contexts the action response starts from: the first ``cfg.batch`` of the plan."""
    return list(plan[:cfg.batch])


def counterfactual_scores(model_end: dict[str, np.ndarray], real_cf: dict[str, np.ndarray], sprite: SpriteSpec) -> dict:
    """Per held key (NOOP and the directions): the mean distance between the model's and the real
    game's sprite at the last frame (``cf_err_px``) and, for the directions, ``ratio_cf``: the model's
    effect (minus NOOP's) projected on the real effect from the same contexts (minus the real NOOP's)."""
    real_end = {}
    for name, f in real_cf.items():
        real_end[name] = find_sprites(f[:, -1], sprite)[0]  # NaN where not found
    actions: dict[str, dict] = {}
    for name in real_end:
        if name not in model_end:
            continue
        err = np.linalg.norm(model_end[name] - real_end[name], axis=1)  # NaN where either is lost
        entry = {"cf_err_px": float(np.nanmean(err)) if np.isfinite(err).any() else None,
                 "contexts": int(np.isfinite(err).sum())}
        if name != "NOOP" and "NOOP" in real_end and "NOOP" in model_end:
            m_eff = model_end[name] - model_end["NOOP"]  # (B, 2): the key's effect in the model ...
            r_eff = real_end[name] - real_end["NOOP"]  # ... and in the game, from the same moments
            ok = np.isfinite(m_eff).all(1) & np.isfinite(r_eff).all(1)
            den = float((r_eff[ok] ** 2).sum())
            entry.update(real_px=r_eff[ok].mean(0).tolist() if ok.any() else None,
                         model_px=m_eff[ok].mean(0).tolist() if ok.any() else None,
                         ratio_cf=float((m_eff[ok] * r_eff[ok]).sum() / den) if den > 0 else None)
        actions[name] = entry
    errs = [v["cf_err_px"] for v in actions.values() if v["cf_err_px"] is not None]
    ratios = [v["ratio_cf"] for v in actions.values() if v.get("ratio_cf") is not None]
    return {"actions": actions, "mean_cf_err_px": float(np.mean(errs)) if errs else None,
            "mean_ratio_cf": float(np.mean(ratios)) if ratios else None}


def format_response(name: str, resp: dict) -> str:
    parts = [f"{a} {v['ratio']:.2f}" for a, v in resp["actions"].items() if v["ratio"] is not None]
    mean = resp["mean_ratio"]
    head = f"action response {name}: " + ("n/a" if mean is None else f"{mean:.2f}x the real game's one-frame move")
    out = head + (f" ({', '.join(parts)}; {resp['frames']} frames held)" if parts else "")
    kept = [v["rollouts_with_sprite"] for v in resp["actions"].values()]
    if kept and min(kept) < resp["rollouts"]:  # a ratio over a few rollouts is one context's story, not the model's
        few = min(kept) if min(kept) == max(kept) else f"{min(kept)}-{max(kept)}"
        out += f"; the player found at both ends in {few} of {resp['rollouts']} rollouts"
    held = resp.get("mean_ratio_held")
    if held is not None:
        hp = [f"{a} {v['ratio_held']:.2f}" for a, v in resp["actions"].items() if v.get("ratio_held") is not None]
        runs = min(v["held_runs"] for v in resp["actions"].values() if v.get("ratio_held") is not None)
        out += f"; {held:.2f}x the real held runs ({', '.join(hp)}; >= {runs} runs each)"
    cf = resp.get("counterfactual")
    if cf and cf["mean_ratio_cf"] is not None:
        cp = [f"{a} {v['ratio_cf']:.2f}" for a, v in cf["actions"].items() if v.get("ratio_cf") is not None]
        ep = [f"{a} {v['cf_err_px']:.1f}" for a, v in cf["actions"].items() if v["cf_err_px"] is not None]
        out += (f"\n  against the real game from the same contexts: {cf['mean_ratio_cf']:.2f}x its move "
                f"({', '.join(cp)}); sprite {cf['mean_cf_err_px']:.2f} px off after {resp['frames']} frames ({', '.join(ep)})")
    return out
