"""``worldsim eval``: a checkpoint against real episodes, as a player sees it; ``worldsim eval compare``;
``worldsim eval clips``.

    worldsim eval --episodes data/boxing/heldout --settings 1x2 --free-play 10000 --json runs/eval.json
    worldsim eval compare runs/eval_a.json runs/eval_b.json
    worldsim eval clips --checkpoint runs/teacher/final.safetensors --episodes data/boxing/heldout --json t.json

Thin entry over ``worldsim.eval.evaluate`` (``worldsim.eval.report``): parses flags, loads the
checkpoint and the episodes, writes the JSON atomically (after every stage, so a stopped run keeps
what it measured, marked incomplete), the rollouts and snapshots when asked, and prints two tables:
the player's yardstick (realism, control, stability) and the open-loop PSNR/SSIM table. Settings
come from ``--settings CxS,...`` or from the ``--chunk`` and ``--steps`` lists (all combinations);
with neither, the checkpoint's recommended engine settings (meta ``engine``) are evaluated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from worldsim.errors import CheckpointError, ConfigError, WorldsimError
from worldsim.eval.report import EvalReport, evaluate, table_rows
from worldsim.eval.rollout import EvalConfig, load_eval_episodes
from worldsim.gametime import checkpoint_period
from worldsim.paths import repo_file

DEFAULT_CHECKPOINT = Path("assets/default.safetensors")


CLASSIFIERS_HELP = ("train N classifiers (seeds --seed, --seed+1, ...) on the same frames and report their mean "
                    "accuracy, each kept in the JSON (default 1; one classifier's figure moves by several points "
                    "with its seed)")

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worldsim eval", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help=f"model to evaluate (default: the shipped {DEFAULT_CHECKPOINT})")
    ap.add_argument("--episodes", nargs="+", required=True,
                    help="dataset directories, episode directories or .npz episodes of the checkpoint's game")
    ap.add_argument("--context", type=int, default=8, help="real context frames K per rollout (default 8)")
    ap.add_argument("--horizon", type=int, default=16, help="predicted frames H per rollout (default 16)")
    ap.add_argument("--json", required=True, help="write every figure here (atomically)")
    ap.add_argument("--save-rollouts", metavar="DIR",
                    help="write each rollout as DIR/<episode>_<start>.npz (DIR/<CxS>/... for several settings) "
                         "and the free-play snapshots as PNGs next to the JSON")
    ap.add_argument("--settings", help="comma list of CHUNKxSTEPS, e.g. 1x1,1x2,1x4,3x4")
    ap.add_argument("--steps", help="comma list of denoising steps, e.g. 1,2,4 (with --chunk: all combinations)")
    ap.add_argument("--chunk", help="comma list of chunk sizes, e.g. 1,3")
    ap.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the checkpoint's engine settings, e.g. window=12 sink=2")
    ap.add_argument("--starts", type=int, default=4,
                    help="rollouts per episode: one start in each of this many equal parts of it (default 4)")
    ap.add_argument("--spacing", choices=("stratified", "even"), default="stratified",
                    help="'stratified' (default): each start drawn, seeded, within its part; 'even': evenly "
                         "spaced, the same frames of every episode (the tables before 2026-11-27)")
    ap.add_argument("--batch", type=int, default=16, help="rollouts generated together (default 16)")
    ap.add_argument("--free-play", type=int, default=0, metavar="FRAMES",
                    help="frames of free play under sticky random actions (the model card uses 10000)")
    ap.add_argument("--free-play-paths", type=int, default=1, metavar="N",
                    help="free plays of --free-play frames each, from contexts spread over the episodes, each with "
                         "its own seed; realism pools them (one free play is one path through the game, and the "
                         "figure moves with it); default 1")
    ap.add_argument("--sticky", type=float, default=0.8, help="free play: probability of repeating an action")
    ap.add_argument("--compiled", action="store_true",
                    help="batch-1 generation (free play) through the compiled forwards 'worldsim compile' built, as "
                         "play.py runs it (batched rollouts stay eager)")
    ap.add_argument("--action-response", type=int, default=12, metavar="FRAMES",
                    help="hold each direction this many frames and compare the player's move with the real "
                         "game's (default 12; 0: skip)")
    ap.add_argument("--realism-frames", type=int, default=2000, metavar="N",
                    help="realism: frames per sample of the classifier two-sample test, half train, half test "
                         "(needs --free-play; default 2000; 0: skip)")
    ap.add_argument("--realism-steps", type=int, default=400, help="realism: the classifier's training steps")
    ap.add_argument("--realism-classifiers", type=int, default=1, metavar="N", help="realism: " + CLASSIFIERS_HELP)
    ap.add_argument("--stability-window", type=int, default=1000, metavar="FRAMES",
                    help="stability: realism of the first and the last this-many free-play frames (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", help="only episodes of this split (e.g. heldout)")
    ap.add_argument("--max-episodes", type=int, default=0, help="use at most this many episodes (0: all)")
    ap.add_argument("--miss-penalty", type=float, default=0.0,
                    help="sprite error (px) counted when the prediction shows no sprite (default: resolution/4)")
    ap.add_argument("--bench-json", help="'worldsim bench engine --json' output: adds each setting's FPS to the table")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the device policy)")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 weights (default: the device policy)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


# ---------------------------------------------------------------------------------------------
# checkpoint and settings


def resolve_checkpoint(path: str | None) -> Path:
    if path:
        return Path(path)
    p = repo_file(DEFAULT_CHECKPOINT)
    if p.is_file():
        return p
    raise CheckpointError(f"no --checkpoint given and the shipped model {DEFAULT_CHECKPOINT} is absent; "
                          f"pass --checkpoint PATH to a trained .safetensors")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes a comma list of integers like 1,2,4 (got '{text}')") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{flag} needs positive integers (got '{text}')")
    return vals


def parse_settings(args, base) -> list[tuple[str, object]]:
    """[(name 'CxS', EngineConfig)] in the order asked."""
    if args.settings and (args.steps or args.chunk):
        raise ConfigError("pass either --settings CxS,... or --steps/--chunk lists, not both")
    if args.settings:
        pairs = []
        for item in args.settings.split(","):
            parts = item.strip().lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ConfigError(f"--settings item '{item}' is not CHUNKxSTEPS (e.g. 1x2 or 3x4)")
            pairs.append((int(parts[0]), int(parts[1])))
    elif args.steps or args.chunk:
        chunks = _int_list(args.chunk, "--chunk") if args.chunk else [base.chunk]
        steps = _int_list(args.steps, "--steps") if args.steps else [base.steps]
        pairs = [(c, s) for c in chunks for s in steps]
    else:
        return [(f"{base.chunk}x{base.steps}", base)]
    # Explicit sigmas (the checkpoint's or --engine timesteps=[...]) pin a step count: kept for the
    # settings with that many steps, dropped for the others; asked for on the command line, they must fit.
    ts = list(base.timesteps)
    asked = any(o.split("=", 1)[0].strip() == "timesteps" for o in (getattr(args, "engine", None) or []))
    out = []
    for c, s in dict.fromkeys(pairs):  # keep order, drop repeats
        if asked and len(ts) != s:
            raise ConfigError(f"--engine timesteps={ts} are {len(ts)} steps but setting {c}x{s} asks for {s}; "
                              f"evaluate {c}x{len(ts)} or drop timesteps")
        cfg = dataclasses.replace(base, chunk=c, steps=s, timesteps=ts if len(ts) == s else [])
        cfg.validate()
        out.append((f"{c}x{s}", cfg))
    return out


def attach_compiled(engine, ckpt) -> None:
    """The compiled forwards of this model and cache layout (``worldsim compile``), or a one-line error."""
    from worldsim.device import dtype_name
    from worldsim.engine import aot

    c = engine.cfg
    forwards = aot.load_built(engine.model, c.window, c.sink, chunk=c.chunk, batch=c.streams)
    if forwards is None:
        build = aot.build_command(ckpt, dtype_name(engine.model.patch_embed.weight.dtype), c.window, c.sink, c.chunk,
                                  c.guidance if c.guided else None)
        raise WorldsimError(f"--compiled: no compiled forwards for {ckpt} (window {c.window} + sink {c.sink}, chunk "
                            f"{c.chunk}) under {aot.cache_root()}; run '{build}' first")
    aot.attach(engine, forwards)


def load_for_eval(path: Path, device, dtype, overrides, prefix: str = "model."):
    """(model, meta, base EngineConfig) from a checkpoint; bf16 means bf16 weights, as the bench and
    the player run them (CPU autocast re-casts every weight on every forward)."""
    from worldsim.checkpoint import load_checkpoint, load_weights
    from worldsim.config import load_config
    from worldsim.engine import EngineConfig

    tensors, meta = load_checkpoint(path, prefix)
    model = load_weights(tensors, meta, path).to(device=device, dtype=dtype).eval()
    engine = meta.get("engine") or {}
    if not isinstance(engine, dict):
        raise CheckpointError(f"checkpoint '{path}' has engine settings that are not a mapping: {engine!r}")
    base = load_config(EngineConfig, overrides=overrides, base=engine)
    base.validate()
    return model, meta, base


# ---------------------------------------------------------------------------------------------
# output


def _clean(obj):
    """JSON-safe: NaN/inf -> null, numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(path: Path, obj) -> None:
    from worldsim.data.episode import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, _clean(obj))


def save_rollout_npz(path: Path, frames: np.ndarray, actions: np.ndarray, start: int, prev_action: int,
                     env_id: str, action_meanings, meta: dict) -> None:
    """A rollout as a plain .npz episode (docs/episode-format.md), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, frames=np.ascontiguousarray(frames, np.uint8), actions=np.asarray(actions, np.int64),
                            start=np.int64(start), prev_action=np.int64(prev_action), env_id=np.str_(env_id),
                            action_meanings=np.array(list(action_meanings), dtype=str),
                            meta_json=np.str_(json.dumps(_clean(meta))))
    os.replace(tmp, path)


def bench_fps(path: str | None, dtype_name: str) -> dict[tuple[int, int], float]:
    if not path:
        return {}
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorldsimError(f"--bench-json '{path}' is not a 'worldsim bench engine --json' file ({e})") from None
    fps: dict[tuple[int, int], float] = {}
    for want in (dtype_name, "bf16", "fp32"):  # the eval's dtype first
        for r in rows:
            if r.get("dtype") == want:
                fps.setdefault((int(r["chunk"]), int(r["steps"])), float(r["fps"]))
    return fps


def format_table(rows: list[dict], horizon: int) -> str:
    short = min(8, horizon)

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    cols = [("setting", 10, None), (f"PSNR h1-{short}", 10, ".2f"), ("vs copy", 8, "+.2f"), ("PSNR h16", 9, ".2f"),
            (f"MSE-PSNR h1-{short}", 14, ".2f"), ("vs copy", 8, "+.2f"), (f"SSIM h1-{short}", 10, ".3f"),
            (f"sprite px h{short}", 14, ".2f"), ("miss", 6, ".2f"), (f"opp px h{short}", 11, ".2f"), ("FPS", 7, ".1f")]
    keys = ["setting", "psnr_h1_8", "psnr_gain_vs_copy_last", "psnr_h16", "psnr_mse_h1_8", "psnr_mse_gain_vs_copy_last",
            "ssim_h1_8", "sprite_err_h8", "sprite_miss_h8", "opponent_err_found_h8", "fps"]
    lines = [" ".join(f"{name:>{w}}" for name, w, _ in cols)]
    for r in rows:
        cells = [f"{r['setting']:>10}"] + [f"{f(r.get(k), fmt):>{w}}" for k, (_, w, fmt) in zip(keys[1:], cols[1:])]
        lines.append(" ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["clips"]:
        return clips_main(argv[1:])
    args = build_parser().parse_args(argv)
    from worldsim.checkpoint import file_hash
    from worldsim.device import dtype_name, pick_device, pick_dtype

    t_all = time.perf_counter()
    cfg = EvalConfig(context=args.context, horizon=args.horizon, starts=args.starts, spacing=args.spacing,
                     batch=args.batch, seed=args.seed, free_play=args.free_play, sticky=args.sticky,
                     free_play_paths=args.free_play_paths,
                     miss_penalty_px=args.miss_penalty, action_response=args.action_response,
                     realism_frames=args.realism_frames, realism_steps=args.realism_steps,
                     realism_classifiers=args.realism_classifiers, stability_window=args.stability_window)
    cfg.validate()
    json_path, ckpt = Path(args.json), resolve_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    model, meta, base = load_for_eval(ckpt, device, dtype, args.engine)
    settings = parse_settings(args, base)
    env_id, meanings = checkpoint_game(ckpt, meta, model.cfg.num_actions)
    period = checkpoint_period(meta, ckpt.name)  # a model that records none is not held to the default
    episodes = load_eval_episodes(args.episodes, model.cfg.resolution, env_id, meanings, args.split, args.max_episodes,
                                  frame_period=None if period.is_default else period.period)
    fps_table = bench_fps(args.bench_json, dtype_name(dtype))
    save_dir = Path(args.save_rollouts) if args.save_rollouts else None
    header = {"command": "worldsim eval", "argv": argv, "device": str(device), "dtype": dtype_name(dtype),
              "checkpoint": {"path": str(ckpt), "hash": file_hash(ckpt), "role": meta.get("role"),
                             "stage": meta.get("stage"), "step": meta.get("step"), "params": model.num_params(),
                             "model_config": meta.get("model_config")}}

    def write(report: EvalReport) -> None:
        for s in report.settings:
            s.bench_fps = fps_table.get((s.engine.chunk, s.engine.steps))
        write_json(json_path, {**header, **report.to_json(), "seconds": time.perf_counter() - t_all})

    def say(line: str) -> None:
        print(f"worldsim eval: {line}", file=sys.stderr)

    say(f"{ckpt} ({model.num_params() / 1e6:.2f}M params, {env_id}, {model.cfg.resolution}x{model.cfg.resolution}, "
        f"{header['dtype']}) on {len(episodes)} episodes; settings {', '.join(n for n, _ in settings)}")
    report = evaluate(model, episodes, settings, cfg, env_id, meanings, device=device,
                      prepare_engine=(lambda e: attach_compiled(e, ckpt)) if args.compiled else None,
                      on_rollout=rollout_saver(save_dir, settings, episodes, cfg, env_id, meanings, header)
                      if save_dir is not None else None,
                      on_snapshots=(lambda name, ctx, snaps: save_snapshots(json_path, name, ctx, snaps))
                      if save_dir is not None else None,
                      on_update=write, progress=lambda total, desc: _progress(total, desc, args.quiet), say=say)
    write(report)
    print(format_yardstick(report))
    print(format_table(report.table(), cfg.horizon))
    print(f"wrote {json_path}" + (f" and rollouts under {save_dir}" if save_dir else ""))
    return 0


def checkpoint_game(ckpt: Path, meta: dict, num_actions: int) -> tuple[str, list]:
    """The game a checkpoint models (env_id, action meanings), or a one-line error."""
    env_id, meanings = meta.get("env_id"), meta.get("action_meanings")
    if not env_id or not isinstance(meanings, list):
        raise CheckpointError(f"checkpoint '{ckpt}' does not name its game (env_id, action_meanings); "
                              f"it cannot be checked against episodes")
    if len(meanings) != num_actions:
        raise CheckpointError(f"checkpoint '{ckpt}' lists {len(meanings)} action meanings but its model has "
                              f"{num_actions} actions; it was written inconsistently")
    return env_id, meanings


def rollout_saver(save_dir: Path, settings, episodes, cfg: EvalConfig, env_id: str, meanings, header: dict):
    """``on_rollout`` that writes each rollout as a plain .npz episode (under DIR/<CxS>/ for several settings)."""
    from worldsim.config import to_dict

    K, H, no_action = cfg.context, cfg.horizon, len(meanings)
    engines = {name: to_dict(ecfg) for name, ecfg in settings}

    def save(name: str, i: int, ctx_start: int, frames: np.ndarray) -> None:
        ep, start = episodes[i], ctx_start + K
        sub = save_dir / name if len(settings) > 1 else save_dir
        save_rollout_npz(sub / f"{ep.name}_{start}.npz", frames, ep.actions[start:start + H], start,
                         ep.prev_actions(no_action)[start], env_id, meanings,
                         {"source": str(ep.path), "source_episode": ep.name, "context": K, "setting": name,
                          "engine": engines[name], "checkpoint": header["checkpoint"]["path"],
                          "checkpoint_hash": header["checkpoint"]["hash"], "kind": "eval_rollout"})

    return save


def format_yardstick(report: EvalReport) -> str:
    """The player's table: realism (classifier accuracy, 50% = indistinguishable) beside the
    real-versus-real calibration, stability and control; '-' where a figure was not measured."""
    cfg = report.config
    w = min(cfg.stability_window, cfg.free_play // 2) if cfg.free_play else cfg.stability_window
    wl = f"{w / 1000:g}k" if w >= 1000 else str(w)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    cols = [("setting", 12), ("realism", 8), ("degraded", 9), (f"first {wl}", 9), (f"last {wl}", 9),
            ("player found", 13), ("opp found", 10), ("move ratio", 11), ("player px", 10)]
    rows = report.yardstick()
    balls = any(r.get("ball_found_end") is not None for r in rows)
    if balls:  # the ball on the last window's frames, (on real frames)
        cols.append(("ball found (real)", 18))
    kept = any(r.get("regrown") is not None for r in rows)
    if kept:  # items that came back after play removed them (Breakout's bricks), (in real play)
        cols.append(("regrown (real)", 15))
    posed = any(r.get("pose_late") is not None for r in rows)
    if posed:  # the player's action pose (Boxing's punch) late in the open-loop rollouts, (in the real frames)
        first, last = next(s.summary["horizons"]["late"] for s in report.settings)  # the steps summarize averaged
        late = f"h{first}-{last}"
        cols.append((f"{report.sprite.get('pose', {}).get('what', 'pose')} {late} (real)", 19))
    paths = f", {cfg.free_play_paths} paths" if cfg.free_play_paths > 1 else ""
    lines = [f"realism: classifier accuracy on held-out frames (50% = indistinguishable); control: "
             f"{cfg.action_response} frames held from the real game's states; stability: {cfg.free_play} frames "
             f"of free play{paths}", " ".join(f"{n:>{cw}}" for n, cw in cols)]
    for r in rows:
        cells = [r["setting"], pct(r.get("realism")), pct(r.get("realism_degraded")), pct(r.get("realism_first")),
                 pct(r.get("realism_last")), num(r.get("player_found_end"), ".2f"),
                 num(r.get("opponent_found_end"), ".2f"), num(r.get("move_ratio"), ".2f"), num(r.get("error_px"), ".2f")]
        if balls:
            cells.append("-" if r.get("ball_found_end") is None else
                         f"{r['ball_found_end']:.2f} ({num(r.get('ball_found_real'), '.2f')})")
        if kept:
            cells.append("-" if r.get("regrown") is None else
                         f"{r['regrown']:.1f} ({num(r.get('regrown_real'), '.1f')})")
        if posed:
            cells.append("-" if r.get("pose_late") is None else
                         f"{pct(r['pose_late'])} ({pct(r.get('pose_late_real'))})")
        lines.append(" ".join(f"{c:>{cw}}" for c, (_, cw) in zip(cells, cols)))
    if not report.calibration.get("full"):
        lines.append(f"realism: {report.calibration.get('reason', 'not measured')}")
    return "\n".join(lines)


def compare_main(argv) -> int:
    """``worldsim eval compare A.json B.json``: B - A on the same rollouts with paired-bootstrap intervals."""
    from worldsim.eval.compare import compare_files, format_comparison

    ap = argparse.ArgumentParser(prog="worldsim eval compare",
                                 description="Is model B better than model A on the same held-out rollouts, or is "
                                             "the difference noise? (two 'worldsim eval' JSONs made with the same "
                                             "episodes, split, context, horizon, starts, spacing and seed)")
    ap.add_argument("a", help="worldsim eval JSON of model A")
    ap.add_argument("b", help="worldsim eval JSON of model B")
    ap.add_argument("--a-setting", help="A's setting, e.g. 1x2 (default: its first), or copy_last / mean_frame")
    ap.add_argument("--b-setting", help="the same for B")
    ap.add_argument("--draws", type=int, default=2000, help="bootstrap draws (at least 100; default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the comparison here")
    args = ap.parse_args(argv)
    if args.draws < 100:
        raise WorldsimError(f"--draws must be at least 100 (got {args.draws})")
    c = compare_files(args.a, args.b, args.a_setting, args.b_setting, args.draws, args.seed)
    print(format_comparison(c))
    if args.json:
        write_json(Path(args.json), c)
    return 0


def clips_main(argv) -> int:
    """``worldsim eval clips``: realism of short clips from real states, for a bidirectional teacher (its own
    multi-step samples) or a causal student (through the engine) on one scale (``worldsim.eval.clips``)."""
    from worldsim.checkpoint import file_hash
    from worldsim.device import dtype_name, pick_device, pick_dtype
    from worldsim.eval.clips import (ClipConfig, clip_plan, clip_realism, engine_sampler, generate_clips,
                                     teacher_sampler)

    ap = argparse.ArgumentParser(prog="worldsim eval clips",
                                 description="Can a classifier tell a model's short clips (from real context "
                                             "frames, under the recorded keys) from the real frames? A "
                                             "bidirectional teacher's own realism, and a student's on the "
                                             "same scale")
    ap.add_argument("--checkpoint", help=f"model to evaluate (default: the shipped {DEFAULT_CHECKPOINT})")
    ap.add_argument("--weights", choices=("model", "ema"), default="model",
                    help="which weights of the file: 'model' (a stage's output) or 'ema' (a run's "
                         "checkpoint.safetensors mid-training)")
    ap.add_argument("--episodes", nargs="+", required=True, help="held-out episodes of the checkpoint's game")
    ap.add_argument("--json", required=True, help="write the figures here (atomically)")
    ap.add_argument("--context", type=int, default=2, help="real frames before each clip (default 2)")
    ap.add_argument("--horizon", type=int, default=6, help="generated frames per clip (default 6)")
    ap.add_argument("--frames", type=int, default=2000, help="generated frames in all (default 2000)")
    ap.add_argument("--settings", help="causal model: one CHUNKxSTEPS (default: the checkpoint's engine settings)")
    ap.add_argument("--engine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="causal model: override the checkpoint's engine settings, e.g. window=12")
    ap.add_argument("--teacher-steps", type=int, default=0,
                    help="bidirectional model: Euler steps (default: its recorded sampler's, else 24)")
    ap.add_argument("--guidance", type=float, default=1.0, help="bidirectional model: action guidance w (default 1)")
    ap.add_argument("--batch", type=int, default=16, help="clips generated together (default 16)")
    ap.add_argument("--realism-steps", type=int, default=400, help="the classifier's training steps")
    ap.add_argument("--realism-classifiers", type=int, default=1, metavar="N", help=CLASSIFIERS_HELP)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", help="only episodes of this split (e.g. heldout)")
    ap.add_argument("--max-episodes", type=int, default=0, help="use at most this many episodes (0: all)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the device policy)")
    ap.add_argument("--dtype", default=None, help="fp32 or bf16 weights (default: the device policy)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    cfg = ClipConfig(context=args.context, horizon=args.horizon, frames=args.frames, batch=args.batch,
                     seed=args.seed, realism_steps=args.realism_steps, realism_classifiers=args.realism_classifiers)
    cfg.validate()
    if args.teacher_steps < 0:
        raise ConfigError(f"--teacher-steps must be >= 1 (or 0: the recorded sampler's), got {args.teacher_steps}")
    t0 = time.perf_counter()
    json_path, ckpt = Path(args.json), resolve_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    model, meta, base = load_for_eval(ckpt, device, dtype, args.engine, prefix=weights_prefix(ckpt, args.weights))
    env_id, meanings = checkpoint_game(ckpt, meta, model.cfg.num_actions)
    period = checkpoint_period(meta, ckpt.name)
    episodes = load_eval_episodes(args.episodes, model.cfg.resolution, env_id, meanings, args.split, args.max_episodes,
                                  frame_period=None if period.is_default else period.period)
    if model.cfg.causal:
        from worldsim.engine import Engine

        if args.teacher_steps or args.guidance != 1.0:
            raise ConfigError(f"{ckpt} is a causal model: --teacher-steps and --guidance are for a bidirectional "
                              f"teacher; pick its sampling with --settings CxS")
        settings = parse_settings(argparse.Namespace(settings=args.settings, steps=None, chunk=None,
                                                     engine=args.engine), base)
        if len(settings) != 1:
            raise ConfigError("worldsim eval clips takes one setting (e.g. --settings 1x2)")
        name, ecfg = settings[0]
        sampler = engine_sampler(Engine(model, ecfg, device=device, dtype=dtype, action_meanings=meanings))
        how = {"kind": "causal", "setting": name}
    else:
        if args.settings or args.engine:
            raise ConfigError(f"{ckpt} is a bidirectional model: it has no engine settings; pick its sampling with "
                              f"--teacher-steps N and --guidance W")
        rec = meta.get("sampler") if isinstance(meta.get("sampler"), dict) else {}
        steps = args.teacher_steps or int(rec.get("steps", 24))
        shift = float(rec.get("shift", 3.0))
        sampler = teacher_sampler(model, steps, shift, args.guidance, dtype, device)
        how = {"kind": "bidirectional", "steps": steps, "shift": shift, "guidance": args.guidance}
    plan = clip_plan(episodes, cfg)
    no_action = model.cfg.num_actions
    print(f"worldsim eval clips: {ckpt} ({how['kind']}, {model.num_params() / 1e6:.2f}M params) on "
          f"{len(episodes)} episodes: {len(plan)} clips of {cfg.context} real + {cfg.horizon} generated frames",
          file=sys.stderr)
    bar = _progress(len(plan) * cfg.horizon, "clips", args.quiet)
    fake, real = generate_clips(sampler, episodes, plan, cfg, no_action, bar)
    bar.close()
    res = clip_realism(fake, real, cfg)
    out = {"command": "worldsim eval clips", "argv": argv, "device": str(device), "dtype": dtype_name(dtype),
           "checkpoint": {"path": str(ckpt), "hash": file_hash(ckpt), "weights": args.weights,
                          "role": meta.get("role"), "stage": meta.get("stage"), "step": meta.get("step"),
                          "params": model.num_params()},
           "sampling": how, "config": dataclasses.asdict(cfg), "clips": len(plan), **res,
           "seconds": time.perf_counter() - t0}
    write_json(json_path, out)
    line = lambda r: f"{r['full']['accuracy']:.1%} (degraded {r['degraded']['accuracy']:.1%})"  # noqa: E731
    print(f"clip realism of {ckpt} ({', '.join(f'{k} {v}' for k, v in how.items() if k != 'kind')}): "
          f"{line(res['model'])}")
    if "real_vs_real" in res:
        print(f"real vs real: {line(res['real_vs_real'])}")
    print(f"wrote {json_path}")
    return 0


def weights_prefix(ckpt: Path, weights: str) -> str:
    """'model.' for a stage's output; for a run's checkpoint with --weights ema, its one EMA network's prefix."""
    if weights == "model":
        return "model."
    from worldsim.checkpoint import read_meta

    nets = sorted(read_meta(ckpt).get("ema_updates") or {})  # a training state records its EMA networks here
    if len(nets) != 1:
        raise CheckpointError(f"--weights ema: '{ckpt}' holds " + (f"EMA weights of {nets}" if nets else
                              "no EMA weights") + "; pass a run's checkpoint.safetensors of one network, or "
                              "--weights model")
    return f"ema.{nets[0]}."


def save_snapshots(json_path: Path, name: str, context_frame: np.ndarray, snaps: dict[int, np.ndarray]) -> dict:
    """One PNG per snapshot at model resolution, plus a 4x strip (last real context frame, then the
    snapshots in order) for the model card."""
    import imageio.v3 as iio

    stem = json_path.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n, f in sorted(snaps.items()):
        p = Path(f"{stem}_freeplay_{name}_f{n:05d}.png")
        iio.imwrite(p, f)
        paths[str(n)] = str(p)
    frames = [context_frame] + [snaps[n] for n in sorted(snaps)]
    gap = np.full((context_frame.shape[0], 2, 3), 255, np.uint8)  # white gutter between frames
    strip = np.concatenate([x for f in frames for x in (f, gap)][:-1], 1)
    strip = strip.repeat(4, 0).repeat(4, 1)  # nearest-neighbour 4x: crisp pixels
    p = Path(f"{stem}_freeplay_{name}_strip.png")
    iio.imwrite(p, strip)
    paths["strip"] = str(p)
    return paths


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=quiet, dynamic_ncols=True, mininterval=1.0,
                file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
