"""``worldsim bench latency``: input-to-pixel latency of the real player loop at the game's own speed, headless.

For each sampling setting it runs the player (``worldsim.app``) on SDL's dummy driver for
``--duration`` seconds (after a warm-up) while a thread posts real key events at random moments,
some of them taps shorter than a frame. Latency is measured from each event's posting to the flip
of the first frame generated under it, with the breakdown wait (for the next generation start: the
tick) / generation / presentation.

Play is paced as play.py paces it: one generation per tick, the model's frame period (the game time
one frame spans, ``worldsim.gametime``) divided by ``--speed`` (default 1, the game's own speed;
0 = as fast as the model runs). The tick bounds latency below: a key waits on average half a tick
for the next generation start. The headline speed figure is the time to spare per tick: the tick
minus the generation of a frame (per chunk of C ticks chunk-wise). ``--real ENV_ID`` runs the real
emulator through the same app at its own speed: the reference a player compares with.

JSON (``--json``): top level ``latency_ms`` {p50, p95, p99, max, mean}, ``breakdown_ms`` (``wait``,
``generation``, ``presentation``, each the same percentiles), ``tick_ms``, ``spare_ms`` (p50
generation) and ``spare_p99_ms``, ``pace``, ``fps``, ``frame_time_ms``, ``jitter_ms``, ``chunk_ms``
(per generated chunk: ``generation``, and ``model``, the engine's own part of it) for the default
setting (frame-wise 2-step); ``settings``: the same per setting; ``real``: the same for the emulator
(with ``--real``). Without a shipped model it times a random-weight student of the default size
(speed does not depend on the weights). It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

DEFAULT_SETTING = (1, 2)  # (chunk, steps): frame-wise 2-step, the setting the targets are for


def parse_settings(text: str) -> list[tuple[int, int]]:
    """'1:1,1:2,1:4,3:4' -> [(chunk, steps), ...]; '' -> [] (the real emulator only, with --real)."""
    from worldsim.errors import ConfigError

    out = []
    if not text.strip():
        return out
    for item in text.split(","):
        try:
            c, s = (int(x) for x in item.strip().split(":"))
        except ValueError:
            raise ConfigError(f"--settings item '{item}' is not CHUNK:STEPS (e.g. 1:2 or 3:4)") from None
        if c < 1 or s not in (1, 2, 4):
            raise ConfigError(f"--settings item '{item}': chunk must be >= 1 and steps 1, 2 or 4")
        out.append((c, s))
    return out


def load_backend(checkpoint: str | None, dtype: str | None, tmp: str, engine_overrides: dict | None = None):
    from worldsim.paths import repo_file
    from worldsim.runtime import DEFAULT_CHECKPOINT, load_playable
    from worldsim.runtime.testing import write_random_checkpoint

    shipped = repo_file(DEFAULT_CHECKPOINT)
    path = checkpoint or (str(shipped) if shipped.is_file() else None)
    label = path
    if path is None:
        path = write_random_checkpoint(Path(tmp) / "random-default.safetensors", "default", context_frames=8)
        label = "random default-size student"
    p = load_playable(path, dtype=dtype, engine_overrides=engine_overrides)
    return p, label


ROW_KEYS = ("latency_ms", "breakdown_ms", "fps", "frames", "frame_time_ms", "jitter_ms", "chunk_ms", "inputs",
            "inputs_posted", "restarts")


def pace_row(s: dict, pace, chunk: int) -> dict:
    """The pace figures of one run: the tick, what it leaves to spare at the p50 and the p99 generation
    of a chunk (C ticks per chunk; None when uncapped), the game time."""
    gen = s["chunk_ms"]["generation"]
    return {"tick_ms": pace.tick_ms if pace.tick_ns else None, "spare_ms": pace.spare_ms(gen["p50"], chunk),
            "spare_p99_ms": pace.spare_ms(gen["p99"], chunk), "pace": pace.to_meta()}


def format_pace(row: dict, pace, name: str) -> str:
    """'frame-wise 2-step: real speed (15 steps/s, tick 66.7 ms) with 48.2 ms to spare per tick ...' plus
    the p50/p95/p99/max table of the latency and its parts."""
    c = row.get("chunk", 1)
    per = "per tick" if c == 1 else f"per chunk of {c} ticks"
    if row["tick_ms"] is None:
        head = f"{name}: uncapped (speed 0): {row['fps']:.1f} frames/s; the game's own speed is {pace.period.steps_per_s:g} steps/s"
    else:
        real = "real speed" if pace.speed == 1 else f"speed {pace.speed:g}x"
        head = (f"{name}: {real} ({pace.rate:g} steps/s, tick {row['tick_ms']:.1f} ms) with "
                f"{row['spare_ms']:.1f} ms to spare {per} ({row['spare_p99_ms']:.1f} at the p99 generation)")
        if row["spare_ms"] < 0:
            head += "; the model cannot keep the game's pace here"
    lines = [head, f"  {'ms':<22}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"]
    parts = [("input-to-pixel", row["latency_ms"]), ("  wait for the tick", row["breakdown_ms"]["wait"]),
             ("  generation", row["breakdown_ms"]["generation"]), ("  presentation", row["breakdown_ms"]["presentation"])]
    for label, p in parts:
        lines.append(f"  {label:<22}" + "".join(f"{p[k]:8.1f}" for k in ("p50", "p95", "p99", "max")))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="worldsim bench latency", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model (default: assets/default.safetensors, else a random default-size student)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per setting (default 10)")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds per setting before measuring (default 1.5)")
    ap.add_argument("--settings", default="1:2,1:1,1:4,3:4",
                    help="CHUNK:STEPS list; the first is the default setting (default 1:2,1:1,1:4,3:4; '' with --real: "
                         "the emulator only)")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="pace as play.py's speed=: 1 = the game's own speed (default), 2 fast-forward, 0 = uncapped")
    ap.add_argument("--fps", type=float, help=argparse.SUPPRESS)  # removed: one line naming --speed
    ap.add_argument("--real", "--play-real", dest="real", metavar="ENV_ID",
                    help="also run the real emulator (e.g. ALE/Boxing-v5) through the same app at its own speed")
    ap.add_argument("--rate", type=float, default=6.0, help="mean synthetic key events per second")
    ap.add_argument("--threads", type=int, default=0,
                    help="generation threads (default 0, as play.py: every core but one; in a process worker pinned)")
    ap.add_argument("--worker", choices=["process", "thread"], default="process",
                    help="where the model generates, as play.py's worker= (default process)")
    ap.add_argument("--window", type=int, default=0, help="KV cache window in frames, as play.py's window= (0: the checkpoint's)")
    ap.add_argument("--sink", type=int, default=-1, help="sink frames, as play.py's sink= (-1: the checkpoint's)")
    ap.add_argument("--guidance", type=float, default=-1.0,
                    help="action guidance, as play.py's guidance= (-1: the checkpoint's; 1: off)")
    ap.add_argument("--dtype", help="auto | fp32 | bf16")
    ap.add_argument("--compile", choices=["cached", "off"], default="cached",
                    help="compiled forwards as play.py's compile=: cached (default: use them if 'worldsim compile' built "
                         "them; a benchmark never builds in the background) or off (eager)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    from worldsim.errors import ConfigError
    from worldsim.gametime import Pace, check_speed, checkpoint_period, game_name

    if args.fps is not None:
        raise ConfigError("--fps was removed: the benchmark runs at the game's own speed, the model's frame period; "
                          "pass --speed (1 = the game's own speed, 2 fast-forward, 0 = as fast as the model runs)")
    check_speed(args.speed, "--speed")
    settings = parse_settings(args.settings)
    if not settings and not args.real:
        raise ConfigError("--settings is empty and no --real ENV_ID is given: nothing to measure")

    import torch

    from worldsim.app.latency import format_summary
    from worldsim.app.synthetic import run_headless
    from worldsim.stats import json_safe

    from worldsim.runtime.loading import set_generation_threads
    from worldsim.runtime.process_backend import split_cores

    set_generation_threads(1 if args.worker == "process" else args.threads)
    rows, result = [], {}
    worker, threads, pinned, label, cache = "thread", torch.get_num_threads(), False, "", {}
    with tempfile.TemporaryDirectory() as tmp:
        if settings:
            overrides = {**({"window": args.window} if args.window > 0 else {}),
                         **({"sink": args.sink} if args.sink >= 0 else {}),
                         **({"guidance": args.guidance} if args.guidance >= 0 else {})}
            playable, label = load_backend(args.checkpoint, args.dtype, tmp, overrides or None)
            model = playable.backend.model
            playable.backend.compiled_mode = args.compile
            period = checkpoint_period(playable.meta, Path(playable.path).name)
            if period.note:
                print(f"note: {period.note}")
            pace = Pace(period.period, args.speed, game_name(playable.env_id))
            from worldsim.app.cli import in_worker_process, torch_device_type
            from worldsim.app.player import PlayConfig

            play = PlayConfig(worker=args.worker, threads=args.threads)
            worker = "process" if args.worker == "process" and torch_device_type(playable.backend) == "cpu" else "thread"
            split_threads, child_cores, _ = split_cores(args.threads)
            threads = torch.get_num_threads() if worker == "thread" else split_threads
            pinned = worker == "process" and child_cores is not None
            cache = {"window": playable.backend.cfg.window, "sink": playable.backend.cfg.sink}
            print(f"model: {label} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                  f"{model.cfg.resolution}x{model.cfg.resolution}, weights {str(playable.weights_dtype).split('.')[-1]}); "
                  f"window {cache['window']} + sink {cache['sink']}; {worker} worker, {threads} generation "
                  f"thread(s){' pinned' if pinned else ''}; {args.duration:g} s per setting")
            whence = {"checkpoint": "", "default": "; the model records no frame period: the ALE v5 default"}
            print(pace.announce().split("; speed=")[0] + whence.get(period.source, f"; the frame period of its "
                                                                                   f"{period.source}"))
            for chunk, steps in settings:
                backend = in_worker_process(playable.backend.with_settings(steps=steps, chunk=chunk), play)
                s = run_headless(backend, seconds=args.duration, warmup_s=args.warmup, pace=pace, rate=args.rate,
                                 seed=args.seed, model_label=label)
                compiled = bool(backend.settings.get("compiled"))
                if hasattr(backend, "close"):
                    backend.close()
                row = {"chunk": chunk, "steps": steps, "compiled": compiled, **{k: s[k] for k in ROW_KEYS},
                       **pace_row(s, pace, chunk)}
                rows.append(row)
                name = ("frame-wise" if chunk == 1 else f"chunk-wise C={chunk}") + f" {steps}-step" + (
                    ", compiled" if compiled else "")
                print(f"--- {name}")
                print(format_summary(s))
                print(format_pace(row, pace, name))
    if args.real:
        from worldsim.envs import make_env
        from worldsim.runtime import EnvBackend

        backend = EnvBackend(lambda: make_env(args.real))
        real_pace = Pace(backend.env.frame_period, args.speed, game_name(args.real))
        s = run_headless(backend, seconds=args.duration, warmup_s=args.warmup, pace=real_pace, rate=args.rate,
                         seed=args.seed, model_label=args.real)
        backend.close()
        real = {"env_id": args.real, "chunk": 1, "steps": 0, **{k: s[k] for k in ROW_KEYS},
                **pace_row(s, real_pace, 1)}
        name = f"real emulator {args.real}"
        print(f"--- {name} (the reference)")
        print(format_summary(s))
        print(format_pace(real, real_pace, name))
        result["real"] = real
    if rows:
        default = next((r for r in rows if (r["chunk"], r["steps"]) == DEFAULT_SETTING), rows[0])
        result = {
            "setting": {"chunk": default["chunk"], "steps": default["steps"]}, "compiled": default["compiled"],
            **{k: default[k] for k in ("latency_ms", "breakdown_ms", "tick_ms", "spare_ms", "spare_p99_ms", "pace",
                                       "fps", "frame_time_ms", "jitter_ms", "chunk_ms")},
            "settings": rows, "model": label, **result}
    result.update({"speed": args.speed, "duration_s": args.duration, "worker": worker, "threads": threads,
                   "pinned": pinned, **cache, "machine": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2))
        print(f"wrote {args.json}")
    return 0
