"""``worldsim bench latency``: input-to-pixel latency of the real player loop, headless.

For each sampling setting it runs the player (``worldsim.app``) on SDL's dummy driver for
``--duration`` seconds (after a warm-up) while a thread posts real key events at random moments,
some of them taps shorter than a frame. Latency is measured from each event's posting to the flip
of the first frame generated under it, with the breakdown wait / generation / presentation.

JSON (``--json``): top level ``latency_ms`` {p50, p95, p99, max, mean}, ``fps``, ``breakdown_ms``,
``frame_time_ms``, ``jitter_ms``, ``chunk_ms`` (per generated chunk: ``generation``, and ``model``, the
engine's own part of it) for the default setting (frame-wise 2-step), and ``settings``:
the same per setting. Without a shipped model it times a random-weight student of the default
size (speed does not depend on the weights). It prints figures and asserts nothing.
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
    """'1:1,1:2,1:4,3:4' -> [(chunk, steps), ...]."""
    from worldsim.errors import ConfigError

    out = []
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
    from worldsim.runtime import DEFAULT_CHECKPOINT, load_playable
    from worldsim.runtime.testing import write_random_checkpoint

    path = checkpoint or (DEFAULT_CHECKPOINT if Path(DEFAULT_CHECKPOINT).is_file() else None)
    label = path
    if path is None:
        path = write_random_checkpoint(Path(tmp) / "random-default.safetensors", "default", context_frames=8)
        label = "random default-size student"
    p = load_playable(path, dtype=dtype, engine_overrides=engine_overrides)
    return p, label


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="worldsim bench latency", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model (default: assets/default.safetensors, else a random default-size student)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per setting (default 10)")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds per setting before measuring (default 1.5)")
    ap.add_argument("--settings", default="1:2,1:1,1:4,3:4",
                    help="CHUNK:STEPS list; the first is the default setting (default 1:2,1:1,1:4,3:4)")
    ap.add_argument("--fps", type=float, default=60.0, help="generation rate cap as in play.py (0: uncapped)")
    ap.add_argument("--rate", type=float, default=6.0, help="mean synthetic key events per second")
    ap.add_argument("--threads", type=int, default=0,
                    help="generation threads (default 0, as play.py: every core but one; in a process worker pinned)")
    ap.add_argument("--worker", choices=["process", "thread"], default="process",
                    help="where the model generates, as play.py's worker= (default process)")
    ap.add_argument("--window", type=int, default=0, help="KV cache window in frames, as play.py's window= (0: the checkpoint's)")
    ap.add_argument("--sink", type=int, default=-1, help="sink frames, as play.py's sink= (-1: the checkpoint's)")
    ap.add_argument("--dtype", help="auto | fp32 | bf16")
    ap.add_argument("--compile", choices=["cached", "off"], default="cached",
                    help="compiled forwards as play.py's compile=: cached (default: use them if 'worldsim compile' built "
                         "them; a benchmark never builds in the background) or off (eager)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import torch

    from worldsim.app.latency import format_summary
    from worldsim.app.synthetic import run_headless
    from worldsim.stats import json_safe

    from worldsim.runtime.loading import set_generation_threads
    from worldsim.runtime.process_backend import split_cores

    set_generation_threads(1 if args.worker == "process" else args.threads)
    settings = parse_settings(args.settings)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**({"window": args.window} if args.window > 0 else {}), **({"sink": args.sink} if args.sink >= 0 else {})}
        playable, label = load_backend(args.checkpoint, args.dtype, tmp, overrides or None)
        model = playable.backend.model
        playable.backend.compiled_mode = args.compile
        from worldsim.app.cli import in_worker_process, torch_device_type
        from worldsim.app.player import PlayConfig

        play = PlayConfig(worker=args.worker, threads=args.threads)
        worker = "process" if args.worker == "process" and torch_device_type(playable.backend) == "cpu" else "thread"
        split_threads, child_cores, _ = split_cores(args.threads)
        threads = torch.get_num_threads() if worker == "thread" else split_threads
        pinned = worker == "process" and child_cores is not None
        print(f"model: {label} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
              f"{model.cfg.resolution}x{model.cfg.resolution}, weights {str(playable.weights_dtype).split('.')[-1]}); "
              f"window {playable.backend.cfg.window} + sink {playable.backend.cfg.sink}; "
              f"{worker} worker, {threads} generation thread(s){' pinned' if pinned else ''}; fps cap {args.fps:g}; {args.duration:g} s per setting")
        rows = []
        for chunk, steps in settings:
            backend = in_worker_process(playable.backend.with_settings(steps=steps, chunk=chunk), play)
            s = run_headless(backend, seconds=args.duration, warmup_s=args.warmup, fps=args.fps, rate=args.rate,
                             seed=args.seed, model_label=label)
            compiled = bool(backend.settings.get("compiled"))
            if hasattr(backend, "close"):
                backend.close()
            row = {"chunk": chunk, "steps": steps, "compiled": compiled, **{k: s[k] for k in (
                "latency_ms", "breakdown_ms", "fps", "frames", "frame_time_ms", "jitter_ms", "chunk_ms", "inputs",
                "inputs_posted", "restarts")}}
            rows.append(row)
            name = "frame-wise" if chunk == 1 else f"chunk-wise C={chunk}"
            print(f"--- {name} {steps}-step{', compiled' if compiled else ''}")
            print(format_summary(s))
    default = next((r for r in rows if (r["chunk"], r["steps"]) == DEFAULT_SETTING), rows[0])
    result = {
        "setting": {"chunk": default["chunk"], "steps": default["steps"]}, "compiled": default["compiled"],
        **{k: default[k] for k in ("latency_ms", "fps", "breakdown_ms", "frame_time_ms", "jitter_ms", "chunk_ms")},
        "settings": rows, "model": label, "fps_cap": args.fps, "duration_s": args.duration,
        "worker": worker, "threads": threads, "pinned": pinned, "window": playable.backend.cfg.window, "sink": playable.backend.cfg.sink, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2))
        print(f"wrote {args.json}")
    return 0
