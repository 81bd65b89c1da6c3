"""``worldsim eval``: roll a checkpoint out against real episodes and write the metrics JSON.

    worldsim eval --episodes data/boxing/heldout --context 8 --horizon 16 --json runs/eval.json \\
        --settings 1x1,1x2,1x4,3x4 --starts 8 --free-play 10000 --save-rollouts runs/rollouts

Thin entry: parses flags, loads the checkpoint and the episodes, runs ``worldsim.eval.rollout`` for
every sampling setting (chunk x steps), prints one table and writes the JSON atomically. Settings
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
import torch

from worldsim.errors import CheckpointError, ConfigError, WorldsimError
from worldsim.eval.rollout import (EvalConfig, evaluate_baselines, evaluate_model, free_play, load_eval_episodes,
                                   make_plan, real_reference, summarize, window_edges)
from worldsim.eval.response import action_response, format_response, real_held_displacement, real_step_displacement
from worldsim.eval.sprites import NoSpriteSpec, opponent_spec, sprite_spec

DEFAULT_CHECKPOINT = Path("assets/default.safetensors")
SNAPSHOT_FRAMES = (1, 1000, 10000)  # free-play frames saved as PNG (those that exist, and the last)


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
    ap.add_argument("--sticky", type=float, default=0.8, help="free play: probability of repeating an action")
    ap.add_argument("--compiled", action="store_true",
                    help="batch-1 generation (free play) through the compiled forwards 'worldsim compile' built, as "
                         "play.py runs it (batched rollouts stay eager)")
    ap.add_argument("--action-response", type=int, default=12, metavar="FRAMES",
                    help="hold each direction this many frames and compare the player's move with the real "
                         "game's (default 12; 0: skip)")
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
    for p in (DEFAULT_CHECKPOINT, Path(__file__).resolve().parents[2] / DEFAULT_CHECKPOINT):
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
    forwards = aot.load_built(engine.model, c.window, c.sink, chunk=c.chunk)
    if forwards is None:
        build = aot.build_command(ckpt, dtype_name(engine.model.patch_embed.weight.dtype), c.window, c.sink, c.chunk)
        raise WorldsimError(f"--compiled: no compiled forwards for {ckpt} (window {c.window} + sink {c.sink}, chunk "
                            f"{c.chunk}) under {aot.cache_root()}; run '{build}' first")
    aot.attach(engine, forwards)


def load_for_eval(path: Path, device, dtype, overrides):
    """(model, meta, base EngineConfig) from a checkpoint; bf16 means bf16 weights, as the bench and
    the player run them (CPU autocast re-casts every weight on every forward)."""
    from worldsim.checkpoint import load_checkpoint, load_weights
    from worldsim.config import load_config
    from worldsim.engine import EngineConfig

    tensors, meta = load_checkpoint(path, "model.")
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
    """A rollout as a plain .npz episode (DESIGN interchange form), written atomically."""
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
    args = build_parser().parse_args(argv)
    from worldsim.checkpoint import file_hash
    from worldsim.config import to_dict
    from worldsim.device import dtype_name, pick_device, pick_dtype
    from worldsim.engine import Engine

    t_all = time.perf_counter()
    cfg = EvalConfig(context=args.context, horizon=args.horizon, starts=args.starts, spacing=args.spacing, batch=args.batch,
                     seed=args.seed, free_play=args.free_play, sticky=args.sticky, miss_penalty_px=args.miss_penalty)
    cfg.validate()
    if args.action_response < 0:
        raise WorldsimError(f"--action-response must be >= 0 frames (0: skip), got {args.action_response}")
    json_path = Path(args.json)
    ckpt = resolve_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    model, meta, base = load_for_eval(ckpt, device, dtype, args.engine)
    settings = parse_settings(args, base)
    mc = model.cfg
    R, no_action = mc.resolution, mc.num_actions
    env_id = meta.get("env_id")
    meanings = meta.get("action_meanings")
    if not env_id or not isinstance(meanings, list):
        raise CheckpointError(f"checkpoint '{ckpt}' does not name its game (env_id, action_meanings); "
                              f"it cannot be checked against episodes")
    if len(meanings) != no_action:
        raise CheckpointError(f"checkpoint '{ckpt}' lists {len(meanings)} action meanings but its model has "
                              f"{no_action} actions; it was written inconsistently")
    episodes = load_eval_episodes(args.episodes, R, env_id, meanings, args.split, args.max_episodes)
    plan = make_plan(episodes, cfg)
    penalty = cfg.miss_penalty_px or R / 4
    try:
        sprite = sprite_spec(env_id)
        sprite_info = {"available": True, "what": sprite.what, "colors": sprite.colors, "tol": sprite.tol,
                       "rows": sprite.rows, "cols": sprite.cols, "miss_penalty_px": penalty}
    except NoSpriteSpec as e:
        sprite, sprite_info = None, {"available": False, "reason": str(e)}
        print(f"worldsim eval: sprite metric skipped: {e}", file=sys.stderr)
    try:  # the opponent's placement, where the game has one (no message otherwise: most games have none)
        opponent = opponent_spec(env_id) if sprite is not None else None
    except NoSpriteSpec:
        opponent = None
    if opponent is not None:
        sprite_info["opponent"] = {"what": opponent.what, "colors": opponent.colors, "tol": opponent.tol,
                                   "rows": opponent.rows, "cols": opponent.cols}
    fps_table = bench_fps(args.bench_json, dtype_name(dtype))
    K, H = cfg.context, cfg.horizon

    result = {
        "command": "worldsim eval", "argv": list(sys.argv[1:] if argv is None else argv), "complete": False,
        "checkpoint": {"path": str(ckpt), "hash": file_hash(ckpt), "role": meta.get("role"), "stage": meta.get("stage"),
                       "step": meta.get("step"), "params": model.num_params(), "model_config": meta.get("model_config")},
        "env_id": env_id, "action_meanings": meanings, "resolution": R, "device": str(device),
        "dtype": dtype_name(dtype), "config": to_dict(cfg), "horizons": list(range(1, H + 1)),
        "episodes": [{"name": e.name, "path": str(e.path), "frames": len(e.frames)} for e in episodes],
        "num_rollouts": len(plan),
        "rollouts": [{"episode": episodes[i].name, "context_start": s, "start": s + K} for i, s in plan],
        "sprite": sprite_info, "baselines": {}, "settings": [], "table": [],
    }
    save_dir = Path(args.save_rollouts) if args.save_rollouts else None
    print(f"worldsim eval: {ckpt} ({model.num_params() / 1e6:.2f}M params, {env_id}, {R}x{R}, {result['dtype']}) on "
          f"{len(episodes)} episodes, {len(plan)} rollouts of context {K} + horizon {H}; settings "
          f"{', '.join(n for n, _ in settings)}", file=sys.stderr)
    try:
        base_rollouts: dict = {}
        baselines = evaluate_baselines(episodes, plan, cfg, sprite, penalty, no_action, base_rollouts, opponent)
        for name, per_h in baselines.items():
            result["baselines"][name] = {"per_horizon": per_h, "summary": summarize(per_h, H),
                                         "per_rollout": base_rollouts[name]}
        copy_summary = result["baselines"]["copy_last"]["summary"]
        reference = real_reference(episodes, sprite, max(1, cfg.free_play // max(cfg.windows, 1))) \
            if cfg.free_play else None
        real_moves = real_step_displacement(episodes, sprite, meanings) \
            if sprite is not None and args.action_response > 0 else None
        real_held = real_held_displacement(episodes, sprite, meanings, args.action_response) \
            if real_moves is not None else None
        real_cf = None
        if real_moves is not None:
            result["real_action_displacement"] = real_moves
            result["real_held_displacement"] = real_held
            real_cf, result["counterfactual"] = real_counterfactuals(episodes, plan, cfg, meanings, args.action_response,
                                                                     args.quiet)
        for name, ecfg in settings:
            engine = Engine(model, ecfg, device=device, dtype=torch.float32)
            if args.compiled:
                attach_compiled(engine, ckpt)
            sub = save_dir / name if save_dir is not None and len(settings) > 1 else save_dir

            def on_rollout(i, ctx_start, frames, sub=sub, name=name, ecfg=ecfg):
                if sub is None:
                    return
                ep, start = episodes[i], ctx_start + K
                save_rollout_npz(sub / f"{ep.name}_{start}.npz", frames, ep.actions[start:start + H], start,
                                 ep.prev_actions(no_action)[start], env_id, meanings,
                                 {"source": str(ep.path), "source_episode": ep.name, "context": K, "setting": name,
                                  "engine": to_dict(ecfg), "checkpoint": str(ckpt),
                                  "checkpoint_hash": result["checkpoint"]["hash"], "kind": "eval_rollout"})

            bar = _progress(len(plan) * H, f"eval {name}", args.quiet)
            t0 = time.perf_counter()
            rollout_values: dict = {}
            per_h = evaluate_model(engine, episodes, plan, cfg, sprite, penalty, no_action, on_rollout, bar,
                                   rollout_values, opponent)
            secs = time.perf_counter() - t0
            bar.close()
            summary = summarize(per_h, H)
            entry = {"name": name, "chunk": ecfg.chunk, "steps": ecfg.steps, "engine": to_dict(ecfg),
                     "per_horizon": per_h, "summary": summary, "per_rollout": rollout_values, "gen_seconds": secs,
                     "gen_frames_per_s": len(plan) * H / max(secs, 1e-9),
                     "bench_fps": fps_table.get((ecfg.chunk, ecfg.steps))}
            result["settings"].append(entry)
            if real_moves:
                entry["action_response"] = action_response(engine, episodes, plan, cfg, sprite, meanings, no_action,
                                                            args.action_response, real_moves, real_held, real_cf)
                print(format_response(name, entry["action_response"]), file=sys.stderr)
            if cfg.free_play:
                entry["free_play"] = run_free_play(engine, episodes, plan, cfg, meanings, sprite, reference,
                                                   no_action, name, json_path if save_dir is not None else None,
                                                   args.quiet)
        result["table"] = table_rows(result, copy_summary)
        result["complete"] = True
    finally:
        result["seconds"] = time.perf_counter() - t_all
        write_json(json_path, result)
    print(format_table(result["table"], H))
    print(f"wrote {json_path}" + (f" and rollouts under {save_dir}" if save_dir else ""))
    return 0


def real_counterfactuals(episodes, plan, cfg, meanings, frames: int, quiet: bool):
    """The real game's frames under each held key from the action response's contexts (replayed from
    the episodes' seeds), and what the JSON says about them; (None, reason) when the episodes cannot be
    replayed (plain .npz files, sticky actions, another emulator)."""
    from worldsim.eval.counterfactual import NotReplayable, held_frames
    from worldsim.eval.response import DIRECTIONS, response_items

    items = response_items(plan, cfg)
    keys = {a: meanings.index(a) for a in ("NOOP", *DIRECTIONS) if a in meanings}
    t0 = time.perf_counter()
    try:
        frames_by_key = held_frames(episodes, items, cfg.context, keys, frames)
    except NotReplayable as e:
        if not quiet:
            print(f"worldsim eval: no real counterfactuals for the action response: {e}", file=sys.stderr)
        return None, {"available": False, "reason": str(e)}
    return frames_by_key, {"available": True, "contexts": len(items), "frames": frames, "keys": list(keys),
                           "seconds": round(time.perf_counter() - t0, 2)}


def table_rows(result: dict, copy: dict) -> list[dict]:
    """One row per setting and baseline; PSNR gains are against copy-last's summary ``copy``."""
    rows = []
    for s in result["settings"]:
        row = {"setting": s["name"], **{k: v for k, v in s["summary"].items() if k != "horizons"},
               "fps": s["bench_fps"]}
        rows.append(row)
    for name, b in result["baselines"].items():
        rows.append({"setting": name.replace("_", "-"), **{k: v for k, v in b["summary"].items() if k != "horizons"},
                     "fps": None})
    for r in rows:
        for key in ("psnr", "psnr_mse"):
            mine, theirs = r.get(f"{key}_h1_8"), copy.get(f"{key}_h1_8")
            r[f"{key}_gain_vs_copy_last"] = mine - theirs if mine is not None and theirs is not None else None
    return rows


def run_free_play(engine, episodes, plan, cfg, meanings, sprite, reference, no_action, name, json_path, quiet):
    """Free play from the first rollout's context; PNG snapshots next to the JSON when asked."""
    i, ctx_start = plan[0]
    snaps: dict[int, np.ndarray] = {}
    at = sorted({n for n in SNAPSHOT_FRAMES if n <= cfg.free_play} | {cfg.free_play})
    bar = _progress(cfg.free_play, f"free play {name}", quiet)
    out = free_play(engine, episodes[i], ctx_start, cfg, meanings, sprite, reference, no_action,
                    on_snapshot=lambda n, f: snaps.__setitem__(n, f.copy()), snapshot_at=at, progress=bar)
    bar.close()
    out["windows_edges"] = window_edges(cfg.free_play, cfg.windows).tolist()
    if json_path is not None and snaps:
        out["snapshots"] = save_snapshots(json_path, name, episodes[i].frames[ctx_start + cfg.context - 1], snaps)
    return out


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
