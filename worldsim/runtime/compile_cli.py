"""``worldsim compile``: compile a checkpoint's frame-wise forwards for this CPU (``worldsim.engine.aot``).

Loads the model as play.py does (same dtype, window, sink), builds the package into the cache (or
finds it there), then checks it: from one prefilled state, the eager and the compiled engine generate
the same frames to bf16 rounding, and it prints both speeds.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from worldsim.errors import WorldsimError


def _time_engine(engine, steps: int) -> float:
    """Median ms a frame over ``steps`` steps (a step makes one chunk)."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step(0)
        times.append((time.perf_counter() - t) * 1e3 / engine.cfg.chunk)
    times.sort()
    return times[len(times) // 2]


def check(backend, forwards, chunks: int = 24, timed: int = 60) -> dict:
    """Eager against compiled from one state over ``chunks`` steps (a chunk each, one frame frame-wise):
    the largest difference on the first, the mean one on the last (the same noise; the sessions drift
    apart slowly as rounding differs), and ms a frame of each."""
    import torch

    from worldsim.engine.aot import attach

    engines = []
    for compiled in (False, True):
        b = backend.fresh()
        b.reset(0)  # as play starts: the checkpoint's context prefilled, linears packed
        if compiled:
            attach(b.engine, forwards)
        engines.append(b.engine)
    diffs, means = [], []
    with torch.no_grad():
        for t in range(chunks):
            a = t % backend.no_action
            x_eager, x_aot = (e.step(a) for e in engines)
            diffs.append(float((x_eager - x_aot).abs().max()))
            means.append(float((x_eager - x_aot).abs().mean()))
        mse = float(((x_eager - x_aot) / 2).pow(2).mean())  # frames in [-1, 1]: PSNR on the [0, 1] scale
        ms = {name: _time_engine(e, timed) for name, e in zip(("eager", "compiled"), engines)}
    return {"max_abs_diff_first": diffs[0], "max_abs_diff": max(diffs), "mean_abs_diff_last": means[-1],
            "psnr_last_db": 10 * math.log10(1 / mse) if mse > 0 else float("inf"), "frames": chunks * backend.cfg.chunk,
            "ms_per_frame": ms, "steps": len(backend.cfg.sigmas()) - 1}


def main(argv=None) -> int:
    from worldsim.engine import aot
    from worldsim.runtime import DEFAULT_CHECKPOINT, load_playable

    ap = argparse.ArgumentParser(prog="worldsim compile", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"model (default {DEFAULT_CHECKPOINT})")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="weights dtype, as play.py's dtype= (auto: bf16 where the CPU has native bf16)")
    ap.add_argument("--window", type=int, default=0, help="KV cache window in frames, as play.py's window= (0: the checkpoint's)")
    ap.add_argument("--sink", type=int, default=-1, help="sink frames, as play.py's sink= (-1: the checkpoint's)")
    ap.add_argument("--chunk", type=int, default=1,
                    help="frames per chunk the forwards are for (default 1, frame-wise; play.py's chunk-wise C: 3)")
    ap.add_argument("--guidance", type=float, default=-1.0,
                    help="action guidance, as play.py's guidance= (-1: the checkpoint's); classifier-free guidance "
                         "needs forwards for two streams")
    ap.add_argument("--compile-threads", type=int, default=None, help="Inductor compile workers (default: its own choice)")
    ap.add_argument("--no-check", action="store_true", help="skip the eager-vs-compiled check after building")
    ap.add_argument("--force", action="store_true", help="build again even if built (a damaged package is set aside)")
    ap.add_argument("--json", help="write the result (package, build seconds, check) to this file")
    ap.add_argument("--quiet", action="store_true", help="print only errors and the final line")
    ap.add_argument("overrides", nargs="*",
                    help="window=W sink=S chunk=C guidance=G (as the flags; what play.py's background build passes)")
    args = ap.parse_args(argv)
    for item in args.overrides:
        k, sep, v = item.partition("=")
        if not sep or k not in ("window", "sink", "chunk", "guidance"):
            raise WorldsimError(f"unknown override '{item}': worldsim compile takes window=W, sink=S, chunk=C and "
                                f"guidance=G")
        try:
            setattr(args, k, float(v) if k == "guidance" else int(v))
        except ValueError:
            raise WorldsimError(f"override '{item}' needs {'a number' if k == 'guidance' else 'an integer'}") from None
    if args.chunk < 1:
        raise WorldsimError(f"--chunk must be >= 1 (got {args.chunk})")
    overrides = {"chunk": args.chunk}
    if args.window:
        overrides["window"] = args.window
    if args.sink >= 0:
        overrides["sink"] = args.sink
    if args.guidance >= 0:
        overrides["guidance"] = args.guidance
    p = load_playable(args.checkpoint, device="cpu", dtype=None if args.dtype == "auto" else args.dtype,
                      engine_overrides=overrides)
    b = p.backend
    model, window, sink, chunk = b.model, b.cfg.window, b.cfg.sink, b.cfg.chunk
    batch = b.cfg.streams  # classifier-free guidance carries a second stream in every forward
    say = (lambda *a: None) if args.quiet else print
    what = ("frame-wise" if chunk == 1 else f"chunk-wise C={chunk}") + (f", classifier-free guidance {b.cfg.guidance:g}" if batch > 1 else "")
    existing = aot.find(model, window, sink, chunk=chunk, batch=batch)
    if existing is not None and args.force:
        aside = aot.discard(existing)
        say(f"set the built package aside: {aside}")
        existing = None
    t0 = time.perf_counter()
    if existing is not None:
        path = existing
        say(f"already compiled: {path}")
    else:
        sp = aot.spec(model, window, sink, chunk, batch)
        say(f"compiling {args.checkpoint} ({what}) for this CPU ({sp['cpu']}, {sp['dtype']}, window {window} + sink "
            f"{sink}): about 1-2 minutes")
        key = aot.package_key(model, window, sink, chunk, batch)
        with aot.build_lock(key) as mine:
            if not mine:
                raise WorldsimError(f"another process is compiling this model now ({aot.cache_root()}/.{key}.lock); "
                                    f"wait for it, or delete the lock if no build runs")
            path = aot.build(model, window, sink, chunk=chunk, batch=batch, compile_threads=args.compile_threads, log=say)
    build_s = time.perf_counter() - t0
    result = {"package": str(path), "build_s": round(build_s, 1), "checkpoint": args.checkpoint,
              "window": window, "sink": sink, "chunk": chunk, "guidance": b.cfg.guidance}
    if not args.no_check:
        forwards = aot.CompiledForwards.of(model, aot.Package.load(path))
        result["check"] = c = check(b, forwards)
        say(f"check ({c['steps']}-step, {what}, one state, the same noise): eager and compiled differ by at most "
            f"{c['max_abs_diff_first']:.4f} on the first frame (rounding); after {c['frames']} frames by "
            f"{c['mean_abs_diff_last']:.4f} on average (PSNR {c['psnr_last_db']:.1f} dB between them: rounding grows "
            f"as on another machine); {c['ms_per_frame']['eager']:.2f} ms a frame eager, "
            f"{c['ms_per_frame']['compiled']:.2f} compiled")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"compiled forwards: {path} ({build_s:.0f} s); play.py uses them from now on")
    return 0
