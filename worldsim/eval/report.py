"""One evaluation as a library call: ``evaluate(model, episodes, settings, cfg, ...) -> EvalReport``.

Boundary: a model, evaluation episodes at its resolution, the sampling settings and an ``EvalConfig``
in; an ``EvalReport`` out (``to_json()`` is what ``worldsim eval --json`` writes). No argument parsing
and no files: rollouts, snapshots and partial reports leave through the callbacks the caller passes.

What a player sees comes first (``EvalReport.yardstick``), per sampling setting:
- realism: the classifier two-sample test (``worldsim.eval.realism``) of real held-out frames against
  the model's free-play frames, full frame and degraded, beside the same test of two disjoint sets of
  real episodes (the calibration: what "indistinguishable" reads with this budget);
- control: from the same real states, the real emulator and the model hold each key
  (``worldsim.eval.counterfactual``, ``worldsim.eval.response``): the move ratio per direction and the
  player's distance from the real game's after ``cfg.action_response`` frames;
- stability: frame statistics per window over the free play (``rollout.free_play``), the player (and
  the opponent) found in the last window, and realism of the first and the last ``stability_window``
  frames, each against real frames.
Open-loop PSNR/SSIM and the sprite error under recorded actions (``rollout.evaluate_model``) follow as
the secondary table (``EvalReport.table``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from worldsim.eval.counts import count_spec
from worldsim.eval.realism import RealismConfig, split_real, two_sample_accuracy
from worldsim.eval.rollout import (EvalConfig, EvalEpisode, evaluate_baselines, evaluate_model, free_play, make_plan,
                                   real_reference, summarize, window_edges)
from worldsim.eval.sprites import NoSpriteSpec, SpriteSpec, ball_spec, opponent_spec, sprite_spec

log = logging.getLogger("worldsim.eval")
SNAPSHOT_FRAMES = (1, 1000, 10000)  # free-play frames handed to ``on_snapshots`` (those that exist, and the last)
VIEWS = ("full", "degraded")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(total: int, desc: str) -> _NoBar:
    return _NoBar()


@dataclass
class SettingReport:
    """Everything measured for one sampling setting (chunk x steps)."""

    name: str  # 'CxS'
    engine: Any  # its EngineConfig
    per_horizon: dict
    summary: dict
    per_rollout: dict
    gen_seconds: float
    rollout_frames: int
    action_response: dict | None = None
    free_play: dict | None = None
    realism: dict = field(default_factory=dict)  # view -> RealismResult.to_dict(), or {"available": False, ...}
    stability: dict | None = None
    bench_fps: float | None = None  # filled by a caller that has 'worldsim bench engine' figures

    @property
    def control(self) -> dict:
        """The counterfactual action response, reduced to the yardstick's figures."""
        cf = (self.action_response or {}).get("counterfactual")
        if not cf or "actions" not in cf:
            reason = "no player locator for this game, or --action-response 0" if self.action_response is None \
                else "the episodes cannot be replayed on the real emulator"
            return {"available": False, "reason": reason}
        acts = cf["actions"]
        return {"available": True, "frames": self.action_response["frames"],
                "move_ratio": {a: v.get("ratio_cf") for a, v in acts.items() if a != "NOOP"},
                "error_px": {a: v["cf_err_px"] for a, v in acts.items()},
                "mean_move_ratio": cf["mean_ratio_cf"], "mean_error_px": cf["mean_cf_err_px"]}

    def to_json(self) -> dict:
        from worldsim.config import to_dict

        out = {"name": self.name, "chunk": self.engine.chunk, "steps": self.engine.steps, "engine": to_dict(self.engine),
               "per_horizon": self.per_horizon, "summary": self.summary, "per_rollout": self.per_rollout,
               "gen_seconds": self.gen_seconds, "gen_frames_per_s": self.rollout_frames / max(self.gen_seconds, 1e-9),
               "bench_fps": self.bench_fps, "realism": self.realism, "control": self.control,
               "stability": self.stability}
        if self.action_response is not None:
            out["action_response"] = self.action_response
        if self.free_play is not None:
            out["free_play"] = self.free_play
        return out


@dataclass
class EvalReport:
    """The figures of one evaluation; ``to_json()`` keeps the layout ``worldsim eval compare`` reads
    (``rollouts``, ``horizons``, ``settings[].per_rollout``, ``baselines``)."""

    env_id: str
    action_meanings: list
    resolution: int
    config: EvalConfig
    episodes: list  # [{"name", "path", "frames"}]
    rollouts: list  # [{"episode", "context_start", "start"}] in plan order
    sprite: dict
    baselines: dict = field(default_factory=dict)
    settings: list = field(default_factory=list)  # [SettingReport]
    calibration: dict = field(default_factory=dict)  # realism of real vs real episodes, per view
    counterfactual: dict | None = None
    real_action_displacement: dict | None = None
    real_held_displacement: dict | None = None
    complete: bool = False

    def table(self) -> list[dict]:
        return table_rows(self.settings, self.baselines)

    def yardstick(self) -> list[dict]:
        """One row per setting (and the real-versus-real calibration first): realism full and degraded,
        stability (realism of the first / last window, the player found at the end), control."""
        rows = [{"setting": "real vs real", "realism": _acc(self.calibration.get("full")),
                 "realism_degraded": _acc(self.calibration.get("degraded"))}]
        for s in self.settings:
            st, ctl = s.stability or {}, s.control
            rows.append({"setting": s.name, "realism": _acc(s.realism.get("full")),
                         "realism_degraded": _acc(s.realism.get("degraded")),
                         "realism_first": _acc(st.get("realism_first")), "realism_last": _acc(st.get("realism_last")),
                         "player_found_end": st.get("player_found_rate"),
                         "opponent_found_end": st.get("opponent_found_rate"),
                         "ball_found_end": st.get("ball_found_rate"), "ball_found_real": st.get("ball_found_rate_real"),
                         "regrown": (st.get("counts") or {}).get("regrown"),
                         "regrown_real": (st.get("counts") or {}).get("regrown_real"),
                         "move_ratio": ctl.get("mean_move_ratio"), "error_px": ctl.get("mean_error_px"),
                         "pose_late": s.summary.get("sprite_pose_late"),
                         "pose_late_real": s.summary.get("sprite_pose_late_real")})
        return rows

    def to_json(self) -> dict:
        from worldsim.config import to_dict

        out = {"env_id": self.env_id, "action_meanings": list(self.action_meanings), "resolution": self.resolution,
               "config": to_dict(self.config), "horizons": list(range(1, self.config.horizon + 1)),
               "episodes": self.episodes, "num_rollouts": len(self.rollouts), "rollouts": self.rollouts,
               "sprite": self.sprite, "baselines": self.baselines, "calibration": self.calibration,
               "settings": [s.to_json() for s in self.settings], "table": self.table(),
               "yardstick": self.yardstick(), "complete": self.complete}
        if self.real_action_displacement is not None:
            out["real_action_displacement"] = self.real_action_displacement
            out["real_held_displacement"] = self.real_held_displacement
            out["counterfactual"] = self.counterfactual
        return out


def _acc(r: dict | None) -> float | None:
    return r.get("accuracy") if r else None


def table_rows(settings: Sequence[SettingReport], baselines: dict) -> list[dict]:
    """The secondary table: one row per setting and baseline; PSNR gains are against copy-last's."""
    rows = [{"setting": s.name, **{k: v for k, v in s.summary.items() if k != "horizons"}, "fps": s.bench_fps}
            for s in settings]
    rows += [{"setting": name.replace("_", "-"), **{k: v for k, v in b["summary"].items() if k != "horizons"},
              "fps": None} for name, b in baselines.items()]
    copy = baselines.get("copy_last", {}).get("summary", {})
    for r in rows:
        for key in ("psnr", "psnr_mse"):
            mine, theirs = r.get(f"{key}_h1_8"), copy.get(f"{key}_h1_8")
            r[f"{key}_gain_vs_copy_last"] = mine - theirs if mine is not None and theirs is not None else None
    return rows


def sprite_specs(env_id: str, penalty: float) -> tuple[SpriteSpec | None, SpriteSpec | None, SpriteSpec | None, dict]:
    """(player, opponent, ball, what the JSON says about them) for a game; (None, None, None, reason)
    without a player entry. Most games have no opponent or ball entry: no message for those."""
    try:
        sprite = sprite_spec(env_id)
    except NoSpriteSpec as e:
        return None, None, None, {"available": False, "reason": str(e)}
    info = {"available": True, "what": sprite.what, "colors": sprite.colors, "tol": sprite.tol, "rows": sprite.rows,
            "cols": sprite.cols, "miss_penalty_px": penalty}
    if sprite.pose_width > 0:
        info["pose"] = {"what": sprite.pose, "width": sprite.pose_width}
    others = {}
    for name, lookup in (("opponent", opponent_spec), ("ball", ball_spec)):
        try:
            others[name] = spec = lookup(env_id)
        except NoSpriteSpec:
            continue
        info[name] = {"what": spec.what, "colors": spec.colors, "tol": spec.tol, "rows": spec.rows, "cols": spec.cols}
    return sprite, others.get("opponent"), others.get("ball"), info


class FrameKeeper:
    """Keeps the free-play frames the realism tests need: ``n`` spread evenly over all ``total`` frames,
    and the first and the last ``window``."""

    def __init__(self, total: int, n: int, window: int):
        self.spread = set(np.linspace(1, total, n).round().astype(int).tolist()) if n > 0 else set()
        self.window, self.total = window, total
        self.frames: dict[int, np.ndarray] = {}

    def __call__(self, i: int, frame: np.ndarray) -> None:
        if i in self.spread or i <= self.window or i > self.total - self.window:
            self.frames[i] = frame.copy()

    def take(self, which: str) -> np.ndarray:
        """'spread', 'first' or 'last': uint8 (n, R, R, 3) in time order."""
        if which == "spread":
            keys = sorted(self.spread)
        elif which == "first":
            keys = range(1, self.window + 1)
        else:
            keys = range(self.total - self.window + 1, self.total + 1)
        return np.stack([self.frames[k] for k in keys])


class PathKeepers:
    """The realism frames of several free plays (paths): each path keeps its share of the spread frames and
    of its first and last windows, so the pooled samples are as large as one path's would be. ``take``
    returns them path after path, each in time order (the realism test splits each sequence by time)."""

    def __init__(self, total: int, n: int, window: int, paths: int):
        self.window = window
        self.keepers = [FrameKeeper(total, n // paths + (p < n % paths), window // paths + (p < window % paths))
                        for p in range(paths)]

    def path(self, p: int) -> FrameKeeper:
        return self.keepers[p]

    def take(self, which: str) -> list[np.ndarray]:
        return [k.take(which) for k in self.keepers]


def evaluate(model, episodes: Sequence[EvalEpisode], settings: Sequence[tuple[str, Any]], cfg: EvalConfig,
             env_id: str, action_meanings: Sequence[str], *, device=None,
             prepare_engine: Callable[[Any], None] | None = None,
             on_rollout: Callable[[str, int, int, np.ndarray], None] | None = None,
             on_snapshots: Callable[[str, np.ndarray, dict], dict | None] | None = None,
             on_update: Callable[["EvalReport"], None] | None = None,
             progress: Callable[[int, str], Any] = _no_progress, say: Callable[[str], None] = log.info) -> EvalReport:
    """Evaluate ``model`` under each of ``settings`` ([(name 'CxS', EngineConfig)]) on ``episodes``.

    ``prepare_engine(engine)``: called on each setting's engine before use (e.g. attach compiled
    forwards); ``on_rollout(setting, episode index, context start, frames)``: each open-loop rollout;
    ``on_snapshots(setting, last context frame, {n: frame})``: the free-play frames at
    ``SNAPSHOT_FRAMES``, its return value is kept in the report; ``on_update(report)``: after each
    stage, so a caller can write partial results; ``progress(total, desc)``: a bar with update/close;
    ``say(line)``: one-line notes (skipped metrics, the action response)."""
    import torch

    from worldsim.engine import Engine
    from worldsim.eval.response import (action_response, format_response, held_keys, real_held_displacement,
                                        real_step_displacement)

    cfg.validate()
    R, no_action = model.cfg.resolution, model.cfg.num_actions
    plan = make_plan(episodes, cfg)
    penalty = cfg.miss_penalty_px or R / 4
    sprite, opponent, ball, sprite_info = sprite_specs(env_id, penalty)
    # what free play watches besides the player, where the game has it: free_play's keywords
    watched = {"opponent": opponent, "ball": ball, "counter": count_spec(env_id)}
    if sprite is None:
        say(f"sprite metric skipped: {sprite_info['reason']}")
    K, H = cfg.context, cfg.horizon
    report = EvalReport(env_id=env_id, action_meanings=list(action_meanings), resolution=R, config=cfg,
                        episodes=[{"name": e.name, "path": str(e.path), "frames": len(e.frames)} for e in episodes],
                        rollouts=[{"episode": episodes[i].name, "context_start": s, "start": s + K} for i, s in plan],
                        sprite=sprite_info)

    base_rollouts: dict = {}
    baselines = evaluate_baselines(episodes, plan, cfg, sprite, penalty, no_action, base_rollouts, opponent)
    report.baselines = {name: {"per_horizon": per_h, "summary": summarize(per_h, H), "per_rollout": base_rollouts[name]}
                        for name, per_h in baselines.items()}
    reference = real_reference(episodes, sprite, max(1, cfg.free_play // max(cfg.windows, 1)), **watched) \
        if cfg.free_play else None
    real_moves = real_held = real_cf = None
    if sprite is not None and cfg.action_response > 0:
        keys = held_keys(action_meanings, env_id)  # label -> action: Pong's UP is its RIGHT
        real_moves = real_step_displacement(episodes, sprite, action_meanings, keys)
        real_held = real_held_displacement(episodes, sprite, action_meanings, cfg.action_response, keys)
        real_cf, report.counterfactual = real_counterfactuals(episodes, plan, cfg, action_meanings, say, keys)
        report.real_action_displacement, report.real_held_displacement = real_moves, real_held

    real_frames = [e.frames for e in episodes]
    real_a, real_b = split_real(real_frames) if len(episodes) >= 2 else (real_frames, None)
    realism_skip = realism_reason(cfg, len(episodes))
    if realism_skip is None and real_b is not None:
        for view in VIEWS:
            report.calibration[view] = two_sample_accuracy(real_a, real_b, realism_config(cfg), view).to_dict()
    else:
        report.calibration = {"available": False, "reason": realism_skip or "needs at least 2 evaluation episodes"}
    if on_update is not None:
        on_update(report)

    for name, ecfg in settings:
        engine = Engine(model, ecfg, device=device, dtype=torch.float32, action_meanings=action_meanings)
        if prepare_engine is not None:
            prepare_engine(engine)
        bar = progress(len(plan) * H, f"eval {name}")
        t0 = time.perf_counter()
        per_rollout: dict = {}
        hook = None if on_rollout is None else (lambda i, s, f, name=name: on_rollout(name, i, s, f))
        per_h = evaluate_model(engine, episodes, plan, cfg, sprite, penalty, no_action, hook, bar, per_rollout, opponent)
        bar.close()
        entry = SettingReport(name=name, engine=ecfg, per_horizon=per_h, summary=summarize(per_h, H),
                              per_rollout=per_rollout, gen_seconds=time.perf_counter() - t0, rollout_frames=len(plan) * H)
        report.settings.append(entry)
        if real_moves:
            entry.action_response = action_response(engine, episodes, plan, cfg, sprite, action_meanings, no_action,
                                                    cfg.action_response, real_moves, real_held, real_cf, keys)
            say(format_response(name, entry.action_response))
        if cfg.free_play:
            keeper = free_play_realism_frames(cfg) if realism_skip is None else None
            entry.free_play = run_free_play(engine, episodes, plan, cfg, action_meanings, sprite, watched, reference,
                                            no_action, name, on_snapshots, keeper, progress)
            if keeper is not None:
                entry.realism, entry.stability = model_realism(keeper, real_a, cfg, entry.free_play)
            else:
                entry.realism = {"available": False, "reason": realism_skip}
                entry.stability = stability_figures(entry.free_play, None, None, 0)
        else:
            entry.realism = {"available": False, "reason": realism_skip}
        if on_update is not None:
            on_update(report)
    report.complete = True
    return report


def realism_config(cfg: EvalConfig) -> RealismConfig:
    return RealismConfig(frames=cfg.realism_frames, train_steps=cfg.realism_steps, seed=cfg.seed,
                         classifiers=cfg.realism_classifiers)


def realism_reason(cfg: EvalConfig, n_episodes: int) -> str | None:
    """Why the realism tests cannot run with these settings, or None."""
    if cfg.realism_frames == 0:
        return "skipped (realism frames 0)"
    if cfg.free_play < RealismConfig.min_frames:
        return f"needs at least {RealismConfig.min_frames} frames of free play (--free-play FRAMES)"
    return None


def free_play_realism_frames(cfg: EvalConfig) -> PathKeepers:
    window = min(cfg.stability_window, cfg.free_play // 2)
    return PathKeepers(cfg.free_play, min(cfg.realism_frames, cfg.free_play * cfg.free_play_paths), window,
                       cfg.free_play_paths)


def model_realism(keeper: PathKeepers, real, cfg: EvalConfig, fp: dict) -> tuple[dict, dict]:
    """Realism of the free play (spread over all of it; full frame and degraded) and the stability
    figures (realism of its first and last window, each against the same real frames)."""
    rc = realism_config(cfg)
    realism = {view: two_sample_accuracy(real, keeper.take("spread"), rc, view).to_dict() for view in VIEWS}
    first = last = None
    if keeper.window >= rc.min_frames:
        wc = RealismConfig(**{**rc.__dict__, "frames": keeper.window})
        first = two_sample_accuracy(real, keeper.take("first"), wc).to_dict()
        last = two_sample_accuracy(real, keeper.take("last"), wc).to_dict()
    return realism, stability_figures(fp, first, last, keeper.window)


def stability_figures(fp: dict, first: dict | None, last: dict | None, window: int) -> dict:
    """The drift of frame statistics at the end of free play, the player (and opponent and ball) found
    there, and the realism of the first and last ``window`` frames."""
    drift = fp["drift_last_window"]
    return {"frames": fp["frames"], "drift": drift, "player_found_rate": drift.get("sprite_found_rate"),
            "player_found_rate_real": drift.get("sprite_found_rate_real"),
            "opponent_found_rate": drift.get("opponent_found_rate"),
            "opponent_found_rate_real": drift.get("opponent_found_rate_real"),
            "ball_found_rate": drift.get("ball_found_rate"), "ball_found_rate_real": drift.get("ball_found_rate_real"),
            "counts": fp.get("counts"), "window": window, "realism_first": first, "realism_last": last}


def real_counterfactuals(episodes, plan, cfg: EvalConfig, meanings, say, keys: dict[str, str] | None = None):
    """The real game's frames under each held key from the action response's contexts (replayed from
    the episodes' seeds), and what the report says about them; (None, reason) when the episodes cannot
    be replayed (plain .npz files, sticky actions, another emulator)."""
    from worldsim.eval.counterfactual import NotReplayable, held_frames
    from worldsim.eval.response import held_keys, response_items

    items = response_items(plan, cfg)
    keys = {label: meanings.index(a) for label, a in (keys or held_keys(meanings)).items()}  # label -> index
    t0 = time.perf_counter()
    try:
        frames_by_key = held_frames(episodes, items, cfg.context, keys, cfg.action_response)
    except NotReplayable as e:
        say(f"no real counterfactuals for the action response: {e}")
        return None, {"available": False, "reason": str(e)}
    return frames_by_key, {"available": True, "contexts": len(items), "frames": cfg.action_response,
                           "keys": list(keys), "seconds": round(time.perf_counter() - t0, 2)}


def run_free_play(engine, episodes, plan, cfg: EvalConfig, meanings, sprite, watched, reference, no_action, name,
                  on_snapshots, keeper, progress) -> dict:
    """Free play from the first rollout's context, and with ``cfg.free_play_paths`` > 1 more free plays from
    contexts spread over the plan, each with its own seed (their frames go to ``keeper`` only). The first
    path's frame statistics are returned; its snapshots go to ``on_snapshots``. ``watched``: free_play's
    ``opponent``, ``ball`` and ``counter`` keywords, each None where the game has none."""
    import dataclasses

    P = cfg.free_play_paths
    starts = [plan[round(p * len(plan) / P) % len(plan)] for p in range(P)]
    for p in range(1, P):
        i, ctx_start = starts[p]
        bar = progress(cfg.free_play, f"free play {name}, path {p + 1}/{P}")
        free_play(engine, episodes[i], ctx_start, dataclasses.replace(cfg, seed=cfg.seed + p), meanings, sprite,
                  reference, no_action, progress=bar, on_frame=None if keeper is None else keeper.path(p))
        bar.close()
    i, ctx_start = plan[0]
    snaps: dict[int, np.ndarray] = {}
    at = sorted({n for n in SNAPSHOT_FRAMES if n <= cfg.free_play} | {cfg.free_play})
    bar = progress(cfg.free_play, f"free play {name}")
    out = free_play(engine, episodes[i], ctx_start, cfg, meanings, sprite, reference, no_action,
                    on_snapshot=lambda n, f: snaps.__setitem__(n, f.copy()), snapshot_at=at, progress=bar,
                    on_frame=None if keeper is None else keeper.path(0), **watched)
    bar.close()
    out["windows_edges"] = window_edges(cfg.free_play, cfg.windows).tolist()
    out["paths"] = [{"episode": episodes[e].name, "context_start": int(c), "seed": cfg.seed + p}
                    for p, (e, c) in enumerate(starts)]
    if on_snapshots is not None and snaps:
        saved = on_snapshots(name, episodes[i].frames[ctx_start + cfg.context - 1], snaps)
        if saved:
            out["snapshots"] = saved
    return out

