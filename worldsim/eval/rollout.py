"""Open-loop rollouts of a world model against real episodes, and long free play.

Boundary: takes an engine (anything with ``cfg.chunk``, ``reset(B, seed)``, ``prefill(frames,
prev_actions)``, ``step(actions)``, see ``worldsim.engine``) and episodes already at the model's
resolution; returns per-horizon metric arrays and free-play statistics. No argument parsing, no
files except through the callbacks the caller passes (``on_rollout``, ``on_snapshot``).

Alignment: ``actions[t]`` is chosen after ``frames[t]`` and produces
``frames[t + 1]``. A rollout whose context starts at ``s`` prefills frames ``s .. s+K-1`` with the
actions that produced them (``[a_{s-1}, ..., a_{s+K-2}]``, "no action" for an episode's first
frame), then ``step(a_t)`` for ``t = s+K-1, ..., s+K+H-2`` predicts frames ``s+K .. s+K+H-1``. The
first predicted frame's index ``s+K`` is the rollout's ``start``; horizon step h (1-based) is frame
``start + h - 1``.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

# uint8 frames <-> model tensors as play converts them, and the training data's resize (one module for all)
from worldsim.data.frames import resize_frames, to_model, to_uint8
from worldsim.errors import DataError, WorldsimError
from worldsim.eval.counts import AnyCountSpec, count_items, count_summary, regrown
from worldsim.eval.metrics import PSNR_MAX_DB, FrameStats, color_histogram, hist_l1, mse, psnr, ssim, to_unit
from worldsim.eval.sprites import SpriteSpec, find_sprites, sprite_errors, sprite_pose

log = logging.getLogger("worldsim.eval")
MSE_FLOOR = 10 ** (-PSNR_MAX_DB / 10)  # psnr_mse of identical sets: the same cap as per-frame PSNR


@dataclass
class EvalConfig:
    """What ``worldsim eval`` measures; the CLI fills it from its flags."""

    context: int = 8  # K real frames (with their actions) seed every rollout
    horizon: int = 16  # H predicted frames compared with the real ones
    starts: int = 4  # rollouts per episode: one context start in each of ``starts`` equal parts of it
    # "stratified": each start drawn (seeded) within its part; "even": evenly spaced, the same frames of
    # every episode. Why not "even": Boxing's games all last the same 1,787 frames (its 2-minute clock),
    # so evenly spaced starts land on the same moment of every game, and at frame 1,183 the screen stands
    # still for a few frames in most games: 9 of 40 rollouts began on a frame identical to the last
    # context frame (6% of all frames are), where copy-last scores PSNR's 100 dB cap.
    spacing: str = "stratified"
    batch: int = 16  # rollouts generated side by side in one engine batch (B > 1 is much faster per frame)
    seed: int = 0  # engine noise; every setting sees the same seeds so settings are paired
    free_play: int = 0  # frames of free play under sticky random actions (0: skip)
    # free plays, each of ``free_play`` frames from another rollout context with its own seed: one is one
    # path through the game, and the realism figure moves with where it goes; realism and the first/last
    # windows pool all paths, the frame statistics and snapshots are the first path's
    free_play_paths: int = 1
    sticky: float = 0.8  # free play: probability of repeating the previous action
    miss_penalty_px: float = 0.0  # sprite found nowhere in a prediction counts as this error (0: resolution / 4)
    windows: int = 20  # free play: statistics per window, this many windows over the run
    action_response: int = 12  # control: frames each key is held from the same states as the real game (0: skip)
    realism_frames: int = 2000  # realism: frames per sample of the classifier two-sample test (0: skip)
    realism_steps: int = 400  # realism: the classifier's optimiser steps (a fixed budget, a couple of CPU-minutes)
    realism_classifiers: int = 1  # realism: classifiers of consecutive seeds on the same frames, accuracy averaged
    stability_window: int = 1000  # stability: realism of the first and the last this-many free-play frames

    def validate(self) -> None:
        if self.context < 1 or self.horizon < 1:
            raise WorldsimError(f"--context and --horizon must be >= 1 (got {self.context}, {self.horizon})")
        if self.starts < 1 or self.batch < 1:
            raise WorldsimError(f"--starts and --batch must be >= 1 (got {self.starts}, {self.batch})")
        if self.spacing not in ("stratified", "even"):
            raise WorldsimError(f"--spacing must be 'stratified' or 'even' (got {self.spacing!r})")
        if self.free_play < 0:
            raise WorldsimError(f"--free-play must be >= 0 (got {self.free_play})")
        if self.free_play_paths < 1:
            raise WorldsimError(f"--free-play-paths must be >= 1 (got {self.free_play_paths})")
        if not 0.0 <= self.sticky < 1.0:
            raise WorldsimError(f"--sticky must be in [0, 1) (got {self.sticky})")
        if self.action_response < 0:
            raise WorldsimError(f"--action-response must be >= 0 frames (0: skip), got {self.action_response}")
        if self.realism_frames < 0 or 0 < self.realism_frames < 8:
            raise WorldsimError(f"--realism-frames must be 0 (skip) or at least 8 per sample (got {self.realism_frames})")
        if self.realism_steps < 1 or self.stability_window < 1 or self.realism_classifiers < 1:
            raise WorldsimError(f"--realism-steps, --realism-classifiers and --stability-window must be >= 1 (got "
                                f"{self.realism_steps}, {self.realism_classifiers}, {self.stability_window})")


# ---------------------------------------------------------------------------------------------
# episodes at the model's resolution


@dataclass
class EvalEpisode:
    name: str  # rollouts are saved as <name>_<start>.npz
    path: Path
    frames: np.ndarray  # (T, R, R, 3) uint8 at the model's resolution
    actions: np.ndarray  # (T,) int64: actions[t] is chosen after frames[t] and produces frames[t + 1]

    def prev_actions(self, no_action: int) -> np.ndarray:
        """The action that produced each frame: [no_action, a_0, ..., a_{T-2}] (T,)."""
        return np.concatenate([[no_action], self.actions[:-1]]).astype(np.int64)


def check_game(path, env_id: str, action_meanings: Sequence[str], want_env: str, want_actions: Sequence[str]) -> None:
    """Refuse an episode of another game than the checkpoint's, naming both."""
    if env_id != want_env or list(action_meanings) != list(want_actions):
        what = (f"game '{env_id}' but the checkpoint models '{want_env}'" if env_id != want_env else
                f"action set {list(action_meanings)} but the checkpoint's {want_env} model has {list(want_actions)}")
        raise DataError(f"episode '{path}' is of {what}; evaluate with episodes of '{want_env}' "
                        f"(or pass that game's checkpoint)")


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Episode names for rollout files: the file stem / directory name, prefixed where two episodes
    share it by as many parent folders as tell them apart (train/ep_000001 and heldout/ep_000001 ->
    train_ep_000001, heldout_ep_000001; boxing/heldout/ep_000001 and boxing_scripted/heldout/ep_000001
    -> boxing_heldout_ep_000001, boxing_scripted_heldout_ep_000001), so no rollout file overwrites
    another. The same episode given twice gets a counter."""
    stems = [p.stem if p.suffix == ".npz" else p.name for p in paths]
    folders = [[f for f in Path(p).parent.parts if f not in (Path(p).anchor, "", ".")] for p in paths]
    names = list(stems)
    for stem in {s for s in stems if stems.count(s) > 1}:
        group = [i for i, s in enumerate(stems) if s == stem]
        for depth in range(1, max(len(folders[i]) for i in group) + 1):  # the fewest folders that tell them apart
            cand = {i: "_".join([*folders[i][-depth:], stem]) for i in group}
            if len(set(cand.values())) == len(group):
                break
        for i in group:
            names[i] = cand[i]
    if len(set(names)) < len(names):  # the same episode twice (or names that still collide): count them
        names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    return names


def load_eval_episodes(paths: Sequence[str | Path], resolution: int, env_id: str, action_meanings: Sequence[str],
                       split: str | None = None, max_episodes: int = 0,
                       frame_period=None) -> list[EvalEpisode]:
    """Every episode under ``paths`` (datasets, episode directories, ``.npz``), checked against the
    model's game (and, given the model's ``frame_period``, its time step: a model of frameskip 4 judged
    on frameskip-2 episodes would be judged against a game twice as slow) and resized to ``resolution``."""
    from worldsim.data.episode import list_episodes, read_episode
    from worldsim.gametime import episode_period

    found: list[Path] = []
    for p in paths:
        found += list_episodes(p)
    if split is not None:
        found = [p for p in found if read_episode(p, load_frames=False).split == split]
    if max_episodes > 0:
        found = found[:max_episodes]
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise DataError(f"no episodes found in {where}" + (f" with split '{split}'" if split else "")
                        + "; pass a dataset directory, episode directories or .npz files")
    out = []
    for path, name in zip(found, unique_names(found)):
        ep = read_episode(path)
        check_game(path, ep.env_id, ep.action_meanings, env_id, action_meanings)
        ep_period = episode_period(ep.meta)  # None: an episode that records none is not held to a guess
        if frame_period is not None and ep_period is not None and abs(ep_period.ms - frame_period.ms) > 1e-6:
            raise DataError(f"episode '{path}' steps {ep_period.describe()}, the model "
                            f"{frame_period.describe()}; evaluate it on episodes collected at its frameskip "
                            f"(worldsim collect --frameskip {frame_period.frameskip})")
        acts = np.asarray(ep.actions, np.int64)
        if len(acts) and (acts.min() < 0 or acts.max() >= len(action_meanings)):
            raise DataError(f"episode '{path}' has actions outside [0, {len(action_meanings)}); "
                            f"check it with 'worldsim data validate {path}'")
        out.append(EvalEpisode(name, Path(path), resize_frames(ep.frames, resolution), acts))
    return out


def plan_starts(T: int, context: int, horizon: int, n: int, rng: np.random.Generator | None = None) -> list[int]:
    """Up to ``n`` context starts over an episode of T frames, each leaving room for K context
    frames, H predicted frames and the action after the last one (so a saved rollout has an action
    for every frame). Evenly spaced without ``rng``; with it, one start drawn uniformly in each of n
    equal parts of the possible starts (stratified: spread like "even", without its fixed phase)."""
    last = T - context - horizon  # the last start: frame s+K+H-1 must exist
    if last < 0:
        return []
    if rng is None:
        if n == 1:
            return [last // 2]
        return sorted({int(round(v)) for v in np.linspace(0, last, n)})
    edges = np.linspace(0, last + 1, n + 1).round().astype(int)  # n parts [lo, hi) of the last + 1 possible starts
    return [int(lo + rng.integers(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def make_plan(episodes: Sequence[EvalEpisode], cfg: EvalConfig) -> list[tuple[int, int]]:
    """(episode index, context start) of every rollout; too-short episodes are skipped with a warning."""
    plan, short = [], []
    for i, ep in enumerate(episodes):
        # seeded by the episode's name (its rollout files' name): it keeps its starts beside other episodes
        # unless a name clash prefixes the name with its folders
        rng = np.random.default_rng([cfg.seed, zlib.crc32(ep.name.encode())]) if cfg.spacing == "stratified" else None
        starts = plan_starts(len(ep.actions), cfg.context, cfg.horizon, cfg.starts, rng)
        if not starts:
            short.append(f"{ep.name} ({len(ep.actions)} frames)")
        plan += [(i, s) for s in starts]
    if short:
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        log.warning("skipping %d episodes shorter than context %d + horizon %d: %s%s", len(short), cfg.context,
                    cfg.horizon, ", ".join(short[:5]), more)
    if not plan:
        raise DataError(f"no episode has the {cfg.context + cfg.horizon} frames a rollout needs "
                        f"(context {cfg.context} + horizon {cfg.horizon}); lower --context/--horizon")
    return plan


# ---------------------------------------------------------------------------------------------
# driving the engine


@torch.no_grad()
def rollout(engine, context: np.ndarray, prev_actions: np.ndarray, actions: np.ndarray, seed: int,
            progress=None) -> np.ndarray:
    """Prefill ``context`` (B, K, R, R, 3) uint8 with ``prev_actions`` (B, K), then generate under
    ``actions`` (B, H): uint8 (B, H, R, R, 3). With chunk C the last chunk is cut at H (its extra
    actions repeat the last one; those frames are dropped)."""
    B, H = actions.shape
    C = engine.cfg.chunk
    n = math.ceil(H / C) * C
    acts = np.concatenate([actions, np.repeat(actions[:, -1:], n - H, 1)], 1)  # (B, n)
    engine.reset(B, seed=seed)
    dev = getattr(engine, "device", "cpu")
    engine.prefill(to_model(context).to(dev), torch.as_tensor(prev_actions, dtype=torch.long))
    out = []
    for t in range(0, n, C):
        out.append(to_uint8(engine.step(torch.as_tensor(acts[:, t:t + C], dtype=torch.long))))  # (B, C, R, R, 3)
        if progress is not None:
            progress.update(B * min(C, H - t))
    return np.concatenate(out, 1)[:, :H]


def batch_inputs(episodes: Sequence[EvalEpisode], items: Sequence[tuple[int, int]], cfg: EvalConfig, no_action: int):
    """Context frames (B, K, R, R, 3), their prev actions (B, K), rollout actions (B, H), real frames (B, H, R, R, 3)."""
    K, H = cfg.context, cfg.horizon
    ctx, prev, acts, real = [], [], [], []
    for i, s in items:
        ep = episodes[i]
        pa = ep.prev_actions(no_action)
        ctx.append(ep.frames[s:s + K])
        prev.append(pa[s:s + K])
        acts.append(ep.actions[s + K - 1:s + K - 1 + H])
        real.append(ep.frames[s + K:s + K + H])
    return np.stack(ctx), np.stack(prev), np.stack(acts), np.stack(real)


# ---------------------------------------------------------------------------------------------
# metrics per horizon step


# Metrics kept per rollout in the JSON (``per_rollout``): the frame error behind MSE-PSNR and the sprite error.
PER_ROLLOUT = ("mse", "sprite_err_px")


class HorizonMetrics:
    """Collects (B, H) arrays per metric; ``summary()`` gives per-horizon means (NaN-aware)."""

    def __init__(self):
        self.values: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, v) -> None:
        self.values.setdefault(name, []).append(np.asarray(v, np.float64))

    def per_horizon(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for name, parts in self.values.items():
            a = np.concatenate(parts)  # (N, H)
            n = np.isfinite(a).sum(0)
            mean = np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), np.nan)
            out[name] = [_num(v) for v in mean]
            if name in ("psnr", "ssim"):
                out[name + "_std"] = [_num(v) for v in np.sqrt(np.nansum((a - mean) ** 2, 0) / np.maximum(n, 1))]
            if name == "mse":  # PSNR of the mean error: no frame pair weighs more than its error
                out["psnr_mse"] = [_num(v) for v in 10 * np.log10(1.0 / np.maximum(mean, MSE_FLOOR))]
        return out

    def per_rollout(self, names: Sequence[str] = PER_ROLLOUT) -> dict[str, list]:
        """Each rollout's values (N lists of H; None where undefined) of ``names``, in plan order: what
        a paired comparison of two models on the same rollouts needs (``worldsim.eval.compare``)."""
        return {name: [[_num(v) for v in row] for row in np.concatenate(self.values[name])]
                for name in names if name in self.values}


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def frame_metrics(pred: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR, SSIM and MSE (pixels in [0, 1]) of uint8 (B, H, R, R, 3) predictions against real frames:
    (B, H) arrays by name."""
    B, H = real.shape[:2]
    p = to_unit(np.broadcast_to(pred, real.shape).reshape(B * H, *real.shape[2:]))
    r = to_unit(real.reshape(B * H, *real.shape[2:]))
    err = mse(p, r)
    return {"psnr": psnr(p, r, err=err).view(B, H).numpy(), "ssim": ssim(p, r).view(B, H).numpy(),
            "mse": err.view(B, H).numpy()}


def add_frame_metrics(m: "HorizonMetrics", pred: np.ndarray, real: np.ndarray) -> None:
    for name, v in frame_metrics(pred, real).items():
        m.add(name, v)


def add_sprite_metrics(m: HorizonMetrics, pred: np.ndarray, real_pos, real_found, sprite: SpriteSpec,
                       penalty: float, prefix: str = "sprite") -> None:
    B, H = real_found.shape
    pp, pf = find_sprites(np.broadcast_to(pred, (B, H) + pred.shape[-3:]).reshape(B * H, *pred.shape[-3:]), sprite)
    err, dist = sprite_errors(pp.reshape(B, H, 2), pf.reshape(B, H), real_pos, real_found, penalty)
    m.add(f"{prefix}_err_px", err)
    m.add(f"{prefix}_err_found_px", dist)
    m.add(f"{prefix}_miss_rate", np.where(real_found, ~pf.reshape(B, H), np.nan))


def add_all_sprite_metrics(m: HorizonMetrics, pred: np.ndarray, real: np.ndarray, sprite: SpriteSpec | None,
                           opponent: SpriteSpec | None, penalty: float) -> None:
    """The player's sprite metrics (``sprite_*``) and, for a game with an opponent entry, the same for
    the opponent (``opponent_*``: in Boxing most of the open-loop error is its placement)."""
    for spec, prefix in ((sprite, "sprite"), (opponent, "opponent")):
        if spec is not None:
            add_sprite_metrics(m, pred, *real_sprites(real, spec), spec, penalty, prefix)
            if spec.pose_width > 0:  # the action pose, in the model's frames and in the real ones
                B, H = real.shape[:2]
                flat = np.broadcast_to(pred, real.shape).reshape(B * H, *real.shape[2:])
                m.add(f"{prefix}_pose_rate", sprite_pose(flat, spec).reshape(B, H))
                m.add(f"{prefix}_pose_rate_real", sprite_pose(real.reshape(B * H, *real.shape[2:]), spec).reshape(B, H))


def real_sprites(real: np.ndarray, sprite: SpriteSpec):
    B, H = real.shape[:2]
    pos, found = find_sprites(real.reshape(B * H, *real.shape[2:]), sprite)
    return pos.reshape(B, H, 2), found.reshape(B, H)


def evaluate_model(engine, episodes: Sequence[EvalEpisode], plan: Sequence[tuple[int, int]], cfg: EvalConfig,
                   sprite: SpriteSpec | None, penalty: float, no_action: int,
                   on_rollout: Callable[[int, int, np.ndarray], None] | None = None, progress=None,
                   per_rollout: dict | None = None, opponent: SpriteSpec | None = None) -> dict:
    """Roll the engine out over ``plan`` in batches; per-horizon PSNR, SSIM and sprite error. With
    ``per_rollout`` (a dict), each rollout's MSE and sprite error per horizon go into it too."""
    m = HorizonMetrics()
    for b, lo in enumerate(range(0, len(plan), cfg.batch)):
        items = plan[lo:lo + cfg.batch]
        ctx, prev, acts, real = batch_inputs(episodes, items, cfg, no_action)
        pred = rollout(engine, ctx, prev, acts, seed=cfg.seed + b, progress=progress)  # (B, H, R, R, 3)
        add_frame_metrics(m, pred, real)
        add_all_sprite_metrics(m, pred, real, sprite, opponent, penalty)
        if on_rollout is not None:
            for (i, start), frames in zip(items, pred):
                on_rollout(i, start, frames)
    if per_rollout is not None:
        per_rollout.update(m.per_rollout())
    return m.per_horizon()


def mean_frame(episodes: Sequence[EvalEpisode]) -> np.ndarray:
    """The mean of every evaluation frame, float (R, R, 3) in 0..255 (the 'mean frame' baseline)."""
    total = sum(ep.frames.astype(np.float64).sum(0) for ep in episodes)
    return total / sum(len(ep.frames) for ep in episodes)


def evaluate_baselines(episodes: Sequence[EvalEpisode], plan: Sequence[tuple[int, int]], cfg: EvalConfig,
                       sprite: SpriteSpec | None, penalty: float, no_action: int,
                       per_rollout: dict | None = None, opponent: SpriteSpec | None = None) -> dict:
    """Copy the last context frame for every horizon; the mean frame for every horizon. With
    ``per_rollout`` (a dict): ``per_rollout[name]`` gets each baseline's per-rollout values."""
    copy_last, mean_m = HorizonMetrics(), HorizonMetrics()
    mf = mean_frame(episodes)  # (R, R, 3) float
    for lo in range(0, len(plan), cfg.batch):
        ctx, _, _, real = batch_inputs(episodes, plan[lo:lo + cfg.batch], cfg, no_action)
        last = ctx[:, -1:]  # (B, 1, R, R, 3)
        add_frame_metrics(copy_last, last, real)
        # The mean frame stays float: rounding it would penalise the baseline for nothing.
        B, H = real.shape[:2]
        r = to_unit(real.reshape(B * H, *real.shape[2:]))
        mft = torch.from_numpy(mf).permute(2, 0, 1).float().div(255)[None].expand_as(r)
        err = mse(mft, r)
        mean_m.add("psnr", psnr(mft, r, err=err).view(B, H).numpy())
        mean_m.add("ssim", ssim(mft, r).view(B, H).numpy())
        mean_m.add("mse", err.view(B, H).numpy())
        add_all_sprite_metrics(copy_last, last, real, sprite, opponent, penalty)
    if per_rollout is not None:
        per_rollout.update(copy_last=copy_last.per_rollout(), mean_frame=mean_m.per_rollout())
    return {"copy_last": copy_last.per_horizon(), "mean_frame": mean_m.per_horizon()}


def summarize(per_h: dict, horizon: int) -> dict:
    """The table's figures: PSNR and SSIM averaged over h 1-8, PSNR at h 16, sprite error at h 8 (or
    the longest horizon there is, named in ``horizons``; the opponent's where both frames show it). ``psnr_*`` average per-frame PSNR (a frame
    identical to the real one counts 100 dB); ``psnr_mse_*`` take each horizon's PSNR of the mean
    squared error over the rollouts (a set of frames scored as one image set, as in most video
    prediction tables), so a few exact repeats cannot outweigh the rest."""
    short = min(8, horizon)
    late = range(short + 1, horizon + 1) if horizon > short else range(1, horizon + 1)

    def avg(key, hs):
        vals = [per_h[key][h - 1] for h in hs] if key in per_h else []
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def at(key, h):
        return per_h[key][h - 1] if key in per_h and h <= horizon else None

    return {"psnr_h1_8": avg("psnr", range(1, short + 1)), "psnr_h16": at("psnr", 16),
            "psnr_mse_h1_8": avg("psnr_mse", range(1, short + 1)), "psnr_mse_h16": at("psnr_mse", 16),
            "ssim_h1_8": avg("ssim", range(1, short + 1)), "sprite_err_h8": at("sprite_err_px", short),
            "sprite_err_found_h8": at("sprite_err_found_px", short), "sprite_miss_h8": at("sprite_miss_rate", short),
            "opponent_err_found_h8": at("opponent_err_found_px", short),
            # the action pose after the first frames, where a model that stops drawing it on its own frames shows
            "sprite_pose_late": avg("sprite_pose_rate", late), "sprite_pose_late_real": avg("sprite_pose_rate_real", late),
            "horizons": {"h1_8": [1, short], "h16": 16 if horizon >= 16 else None, "h8": short,
                         "late": [late[0], late[-1]]}}


# ---------------------------------------------------------------------------------------------
# long-horizon health: free play


def window_edges(n: int, windows: int) -> np.ndarray:
    return np.linspace(0, n, min(windows, n) + 1).round().astype(int)


def tracked_specs(sprite: SpriteSpec | None, opponent: SpriteSpec | None = None,
                  ball: SpriteSpec | None = None) -> dict[str, SpriteSpec]:
    """The bodies whose found rate free play reports, by the name its JSON uses."""
    return {k: v for k, v in (("sprite", sprite), ("opponent", opponent), ("ball", ball)) if v is not None}


def real_reference(episodes: Sequence[EvalEpisode], sprite: SpriteSpec | None, window: int,
                   opponent: SpriteSpec | None = None, ball: SpriteSpec | None = None,
                   counter: AnyCountSpec | None = None) -> dict:
    """Statistics of the real frames that free play is compared with, and how much real windows of
    the free-play window's length differ from the whole (the histogram distance of real play)."""
    st = FrameStats()
    for ep in episodes:
        st.add(ep.frames, continues=False)
    ref_hist = st.normalised_hist
    out = st.summary()
    window = max(1, window)
    dists = [hist_l1(color_histogram(ep.frames[i:i + window]), ref_hist)
             for ep in episodes for i in range(0, max(len(ep.frames) - window + 1, 1), window)]
    out["hist_l1_typical"] = float(np.mean(dists))
    for name, spec in tracked_specs(sprite, opponent, ball).items():
        found = [find_sprites(ep.frames, spec)[1] for ep in episodes]
        out[f"{name}_found_rate"] = float(np.mean(np.concatenate(found)))
    if counter is not None:  # the counted state in real play: how far blending lets a count rise
        out["count_regrown"] = max(regrown(count_items(ep.frames, counter), counter.smooth) for ep in episodes)
    out["_hist"] = ref_hist
    return out


@torch.no_grad()
def free_play(engine, episode: EvalEpisode, ctx_start: int, cfg: EvalConfig, action_meanings: Sequence[str],
              sprite: SpriteSpec | None, reference: dict, no_action: int,
              on_snapshot: Callable[[int, np.ndarray], None] | None = None, snapshot_at: Sequence[int] = (),
              progress=None, on_frame: Callable[[int, np.ndarray], None] | None = None,
              opponent: SpriteSpec | None = None, ball: SpriteSpec | None = None,
              counter: AnyCountSpec | None = None) -> dict:
    """Generate ``cfg.free_play`` frames under sticky random actions from a real context and report
    per-window frame statistics next to the real ones: drift shows as numbers (collapse: std and
    found rate fall; blur: histogram distance grows; freezing: temporal change falls to 0; the player,
    and the ``opponent`` and ``ball`` where given, found on fewer frames; the ``counter``'s items, where
    given, coming back after play removed them). ``on_frame(n, frame)`` sees every frame
    (n from 1), e.g. to keep some for the realism test."""
    from worldsim.envs.policies import StickyPolicy

    N, K, C = cfg.free_play, cfg.context, engine.cfg.chunk
    policy = StickyPolicy(action_meanings, seed=cfg.seed, repeat_prob=cfg.sticky)
    engine.reset(1, seed=cfg.seed)
    dev = getattr(engine, "device", "cpu")
    engine.prefill(to_model(episode.frames[None, ctx_start:ctx_start + K]).to(dev),
                   torch.as_tensor(episode.prev_actions(no_action)[None, ctx_start:ctx_start + K]))
    edges = window_edges(N, cfg.windows)
    snaps = set(int(s) for s in snapshot_at if 1 <= s <= N)
    last = episode.frames[ctx_start + K - 1]
    tracked = tracked_specs(sprite, opponent, ball)
    stats: list[FrameStats] = []
    found: dict[str, list[list[bool]]] = {name: [] for name in tracked}  # per window
    counts: list[np.ndarray] = []
    buf: list[np.ndarray] = []

    def flush():  # statistics over a block of frames at once: per-frame numpy calls would cost more than the model
        if buf:
            block = np.stack(buf)  # (n, R, R, 3)
            stats[-1].add(block)
            for name, spec in tracked.items():
                found[name][-1].extend(find_sprites(block, spec)[1].tolist())
            if counter is not None:
                counts.append(count_items(block, counter))
            buf.clear()

    made = 0
    t0 = time.perf_counter()
    while made < N:
        acts = [policy(last) for _ in range(C)]  # the policy sees the latest frame (random play ignores it)
        frames = to_uint8(engine.step(torch.tensor([acts], dtype=torch.long)))[0][:N - made]  # (<=C, R, R, 3)
        for f in frames:
            if made == edges[len(stats)]:  # the first frame of the next window
                flush()
                stats.append(FrameStats(after=last))
                for rows in found.values():
                    rows.append([])
            made += 1
            buf.append(f)
            if on_frame is not None:
                on_frame(made, f)
            if len(buf) >= 256:
                flush()
            if made in snaps and on_snapshot is not None:
                on_snapshot(made, f)
            last = f
        if progress is not None:
            progress.update(len(frames))
    flush()
    seconds = time.perf_counter() - t0
    ref_hist = reference["_hist"]
    windows = []
    for i, st in enumerate(stats):
        row = {"first_frame": int(edges[i]) + 1, "last_frame": int(edges[i + 1]), **st.summary(ref_hist)}
        row.pop("frames")
        for name, rows in found.items():
            row[f"{name}_found_rate"] = float(np.mean(rows[i])) if rows[i] else None
        windows.append(row)
    real = {k: v for k, v in reference.items() if not k.startswith("_")}
    end = windows[-1]
    drift = {"mean": end["mean"] - real["mean"], "std_ratio": end["std"] / max(real["std"], 1e-9),
             "hist_l1": end["hist_l1"], "hist_l1_real_typical": real["hist_l1_typical"],
             "temporal_change_ratio": (end["temporal_change"] / max(real["temporal_change"], 1e-9)
                                       if end["temporal_change"] is not None and real["temporal_change"] else None)}
    for name in tracked:
        drift[f"{name}_found_rate"] = end[f"{name}_found_rate"]
        drift[f"{name}_found_rate_real"] = real.get(f"{name}_found_rate")
    out = {"frames": N, "context": {"episode": episode.name, "context_start": ctx_start},
           "policy": {**policy.describe(), "seed": cfg.seed}, "seconds": seconds, "fps": N / max(seconds, 1e-9),
           "windows": windows, "real": real, "drift_last_window": drift}
    if counter is not None:
        start = count_items(episode.frames[None, ctx_start + K - 1], counter)[0]
        out["counts"] = {**count_summary(np.concatenate(counts), start, int(edges[1] - edges[0]), counter),
                         "regrown_real": real.get("count_regrown")}
    return out
