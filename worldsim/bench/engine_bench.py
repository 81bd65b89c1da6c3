"""``worldsim bench engine``: generation speed of the engine on this machine.

For each setting (frame-wise 1, 2, 4 steps; chunk-wise C=3 4 steps) and each dtype it measures
milliseconds per frame (p50/p95 over steady-state steps), FPS, and first-frame latency: from a
warm model with its context already in the cache to the first frame out (for a chunk, the whole
chunk must be denoised before its first frame exists). It also reports achieved GFLOP/s against
this machine's measured matmul peak in the same dtype, and optionally (``--long N``) whether cost and
memory stay flat over N frames (rolling KV cache), in the dtype play.py uses here.

dtype ``bf16`` means bf16 weights and activations (no autocast: on CPU, autocast re-casts every
weight on every forward and is slower); ``fp32`` is plain fp32. ``--quick`` times only the dtype play.py
runs on this machine (``worldsim.device.pick_dtype``: bf16 where the CPU has native bf16 matmuls, fp32
where bf16 would be emulated and several times slower).

``--device cuda`` times the CUDA path (Triton kernels; ``--kernels torch`` times the torch references
there instead, for comparison); every timer then waits for the GPU, so the figures are real latencies.
There the steady-state forwards replay as CUDA graphs, as play runs them (``worldsim.engine.cuda_graphs``;
captured in the untimed warm-up step); ``--graphs off`` times the eager launches instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

from worldsim.engine import Engine, EngineConfig
from worldsim.device import dtype_name, parse_dtype
from worldsim.engine.cpu_pack import is_packed, pack_linears, packing_available, unpack_linears
from worldsim.stats import percentiles

SETTINGS = [(1, 1), (1, 2), (1, 4), (3, 4)]  # (chunk, steps)
DTYPES = ("bf16", "fp32")  # the dtypes it times (worldsim.device names)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock timer measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(dtype=torch.bfloat16, n: int = 2048, reps: int = 10, device=torch.device("cpu")) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def load_bench_model(checkpoint: str | None):
    """(model, source, engine settings, action meanings): the shipped model if present (or ``checkpoint``),
    else a random student of the default size: speed does not depend on the weights."""
    from worldsim.checkpoint import load_checkpoint, load_weights
    from worldsim.model import ModelConfig, WorldDiT
    from worldsim.paths import repo_file

    shipped = repo_file("assets/default.safetensors")
    path = checkpoint or (str(shipped) if shipped.is_file() else None)
    if path is None:
        return WorldDiT(ModelConfig()).eval(), "random default-size student", EngineConfig(), None
    tensors, meta = load_checkpoint(path, "model.")
    model = load_weights(tensors, meta, path)
    from worldsim.config import from_dict

    eng = from_dict(EngineConfig, meta.get("engine", {}), f"{path} engine settings")
    return model.eval(), path, eng, meta.get("action_meanings")


def _flops_per_step(engine: Engine) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    packed, compiled = is_packed(engine.model), engine.compiled
    unpack_linears(engine.model)  # the counter knows aten's matmuls, not oneDNN's packed one
    engine.compiled = None  # nor a compiled graph's: the same step counted eagerly
    try:
        with FlopCounterMode(display=False) as fc:
            engine.step(0)
    finally:
        engine.compiled = compiled
        if packed:
            pack_linears(engine.model)
    return float(fc.get_total_flops())


def bench_setting(model, base: EngineConfig, chunk: int, steps: int, dtype: torch.dtype, iters: int,
                  warmup: int, context: int = 8, first_reps: int = 5, device=torch.device("cpu"),
                  pack: bool = True, compiled=None, graphs: bool = False, action_meanings=None) -> dict:
    m = model.to(device, dtype)
    if pack and device.type == "cpu":  # as play.py runs it (worldsim.engine.cpu_pack)
        pack_linears(m)
    else:
        unpack_linears(m)
    cfg = replace(base, chunk=chunk, steps=steps, sampler="renoise", timesteps=[])
    eng = _engine(m, cfg, device, compiled, graphs, action_meanings)
    mc = model.cfg
    ctx = torch.zeros(1, context, mc.channels, mc.resolution, mc.resolution)
    eng.reset(1, seed=0)  # one untimed frame first: CUDA compiles the Triton kernels on first launch
    eng.prefill(ctx)
    eng.step(0)
    first = []
    for r in range(first_reps):
        eng.reset(1, seed=r)
        eng.prefill(ctx)
        sync(device)
        t = time.perf_counter()
        eng.step(0)
        sync(device)
        first.append((time.perf_counter() - t) * 1e3)
    eng.reset(1, seed=0)
    eng.prefill(ctx)
    for _ in range(warmup):
        eng.step(0)
    per_frame = []
    sync(device)
    t_all = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        eng.step(0)
        sync(device)
        per_frame.append((time.perf_counter() - t) * 1e3 / chunk)
    wall = time.perf_counter() - t_all
    replayed = _replays(eng)
    flops = _flops_per_step(eng) / chunk
    pf = percentiles(per_frame)
    return {
        "chunk": chunk, "steps": steps, "dtype": dtype_name(dtype),
        "compiled": eng.compiled is not None and not graphs, "graphs": replayed,
        "palette": len(eng.palette) if eng.palette is not None else 0,  # colours each frame is snapped to
        "fps": iters * chunk / wall, "ms_per_frame_p50": pf["p50"], "ms_per_frame_p95": pf["p95"],
        "first_frame_ms": percentiles(first)["p50"], "gflop_per_frame": flops / 1e9,
        "gflops_achieved": flops / 1e9 / (pf["mean"] / 1e3),
    }


def _engine(model, cfg: EngineConfig, device, compiled=None, graphs: bool = False, action_meanings=None) -> Engine:
    """An engine with its fast forwards: ``compiled`` (worldsim.engine.aot, CPU), or on CUDA the CUDA graphs
    of its steady-state forwards (worldsim.engine.cuda_graphs) with ``graphs``."""
    from worldsim.engine.aot import attach

    eng = Engine(model, cfg, device=device, dtype=torch.float32, action_meanings=action_meanings)
    if graphs:
        from worldsim.engine.cuda_graphs import GraphForwards

        compiled = GraphForwards(model, cfg.window, cfg.sink, cfg.chunk)
    if compiled is not None:
        attach(eng, compiled)
    return eng


def _replays(eng: Engine) -> bool:
    """Whether the engine's forwards replayed CUDA graphs (none: eager, or a capture failed)."""
    return getattr(eng.compiled, "replays", 0) > 0


def long_run(model, base: EngineConfig, frames: int, dtype=torch.bfloat16, device=torch.device("cpu"),
             compiled=None, graphs: bool = False, action_meanings=None) -> dict:
    """Cost and memory at the start and end of a long session (flat if the cache rolls)."""
    eng = _engine(model.to(device, dtype), replace(base, chunk=1, steps=2), device, compiled, graphs, action_meanings)
    mc = model.cfg
    eng.reset(1)
    eng.prefill(torch.zeros(1, 8, mc.channels, mc.resolution, mc.resolution))
    times, rss, gpu = [], [], []
    for i in range(frames):
        t = time.perf_counter()
        eng.step(i % mc.num_actions)
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
        if i == 99 or i == frames - 1:
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if device.type == "cuda":
                gpu.append(torch.cuda.memory_allocated(device) / 2**20)
    first = percentiles(times[:100])["p50"]
    last = percentiles(times[-100:])["p50"]
    out = {"frames": frames, "compiled": eng.compiled is not None and not graphs, "graphs": _replays(eng),
           "ms_per_frame_p50_first100": first, "ms_per_frame_p50_last100": last,
           "max_rss_mb_at_100": rss[0], "max_rss_mb_at_end": rss[-1], "kv_cache_bytes": eng.cache.nbytes()}
    if gpu:
        out.update(gpu_allocated_mb_at_100=gpu[0], gpu_allocated_mb_at_end=gpu[-1])
    return out


def _compiled_for(model, base: EngineConfig, dtype: torch.dtype, source: str, chunk: int = 1):
    """The compiled forwards of ``model`` in ``dtype`` for its cache layout and ``chunk``, built by
    ``worldsim compile``: frame-wise ones must exist (a one-line error), a chunk size without a package
    is timed eagerly (said in a note)."""
    from worldsim.engine import aot
    from worldsim.errors import WorldsimError

    forwards = aot.load_built(model.to("cpu", dtype), base.window, base.sink, chunk=chunk, batch=base.streams)
    name = dtype_name(dtype)
    build = aot.build_command(source, name, base.window, base.sink, chunk,
                              base.guidance if base.guided else None)
    if forwards is None and chunk == 1:
        raise WorldsimError(f"no compiled forwards for {source} in {name} (window {base.window} + sink {base.sink}) "
                            f"under {aot.cache_root()}: run '{build}' first")
    if forwards is None:
        print(f"note: no compiled forwards for chunk {chunk} in {name}: those rows run eagerly ('{build}' builds them)")
    return forwards


def _kernels_label(device: torch.device) -> str:
    if device.type != "cuda":
        return "torch reference (CPU)"
    from kernels.dispatch import use_triton

    return "triton" if use_triton(torch.empty(1, device=device)) else "torch reference"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="worldsim bench engine", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model to time (default: assets/default.safetensors, else a random student)")
    ap.add_argument("--quick", action="store_true", help="a run under 30 s (fewer iterations, only the dtype play.py uses here)")
    ap.add_argument("--iters", type=int, default=200, help="timed steps per setting")
    ap.add_argument("--dtypes", default=None,
                    help="comma list of bf16, fp32 (default: both; with --quick, the dtype play.py uses here)")
    ap.add_argument("--long", type=int, default=0, help="also run this many frames to show flat cost (e.g. 10000)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    ap.add_argument("--kernels", choices=["auto", "torch"], default=None,
                    help="on CUDA: auto = Triton kernels (default), torch = the torch references, to compare")
    ap.add_argument("--no-pack", action="store_true",
                    help="CPU: plain linears instead of the oneDNN-packed ones play.py uses, to compare")
    ap.add_argument("--compiled", action="store_true",
                    help="CPU: frame-wise rows through the compiled forwards 'worldsim compile' built (worldsim.engine.aot)")
    ap.add_argument("--graphs", choices=["auto", "on", "off"], default="auto",
                    help="CUDA: steady-state forwards replayed as CUDA graphs (auto: on, as play runs them) or off (eager)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    from worldsim.device import pick_device, pick_dtype
    from worldsim.errors import ConfigError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    try:
        device = pick_device(args.device)
    except ConfigError as e:
        ap.error(str(e))
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {device.type}: this benchmark times cpu or cuda")
    if args.kernels:
        os.environ["WORLDSIM_KERNELS"] = args.kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compiled and device.type != "cpu":
        ap.error("--compiled times the CPU's compiled forwards; on CUDA use --graphs on|off")
    if args.graphs == "on" and device.type != "cuda":
        ap.error("--graphs on needs --device cuda (CUDA graphs); on the CPU use --compiled")
    graphs = device.type == "cuda" and args.graphs != "off"
    play_dtype = dtype_name(pick_dtype(device))
    if args.dtypes is None:
        dtypes = [play_dtype] if args.quick else ["bf16", "fp32"]
    else:
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in dtypes if d not in DTYPES]
        if not dtypes or bad:
            ap.error(f"--dtypes {args.dtypes}: use a comma list of {', '.join(DTYPES)}")
    model, source, base, meanings = load_bench_model(args.checkpoint)
    iters = 40 if args.quick else args.iters
    n = 1024 if args.quick else (8192 if device.type == "cuda" else 2048)
    peaks = {d: matmul_peak_gflops(parse_dtype(d), n=n, device=device) for d in dtypes}
    kernels_used = _kernels_label(device) + (", CUDA graphs" if graphs else "")
    if device.type == "cpu":
        kernels_used += ", plain linears" if args.no_pack or not packing_available() else ", packed linears"
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, threads {torch.get_num_threads()}")
    print(f"model: {source} ({model.num_params() / 1e6:.2f}M params, {model.cfg.resolution}x{model.cfg.resolution}, "
          f"window {base.window} + sink {base.sink}); {where}; kernels: {kernels_used}; play's dtype here: {play_dtype}; "
          f"matmul peak " + ", ".join(f"{d} {v:.0f}" for d, v in peaks.items()) + " GFLOP/s")
    rows = []
    hdr = f"{'chunk':>5} {'steps':>5} {'dtype':>5} {'FPS':>7} {'ms/frame p50':>12} {'p95':>7} {'first frame ms':>14} {'GFLOP/s':>8} {'% peak':>6}"
    print(hdr)
    for dname in dtypes:
        dtype = parse_dtype(dname)
        compiled = {c: _compiled_for(model, base, dtype, source, c) for c in sorted({c for c, _ in SETTINGS})} \
            if args.compiled else {}
        for chunk, steps in SETTINGS:
            row = bench_setting(model, base, chunk, steps, dtype, iters, warmup=10 if args.quick else 20,
                                device=device, pack=not args.no_pack, compiled=compiled.get(chunk), graphs=graphs,
                                action_meanings=meanings)
            row["fraction_of_peak"] = row["gflops_achieved"] / peaks[dname]
            rows.append(row)
            notes = ("  compiled" if row["compiled"] else "") + ("  graphs" if row["graphs"] else "") + \
                (f"  snapped to {row['palette']} colours" if row["palette"] else "")
            print(f"{chunk:>5} {steps:>5} {dname:>5} {row['fps']:>7.1f} {row['ms_per_frame_p50']:>12.2f} "
                  f"{row['ms_per_frame_p95']:>7.2f} {row['first_frame_ms']:>14.2f} {row['gflops_achieved']:>8.1f} "
                  f"{100 * row['fraction_of_peak']:>5.1f}%{notes}")
    result = {"rows": rows, "model": source, "params": model.num_params(), "matmul_peak_gflops": peaks,
              "play_dtype": play_dtype, "graphs": graphs,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "device": where, "kernels": kernels_used}
    if args.long:
        lr = long_run(model, base, args.long, dtype=parse_dtype(play_dtype), device=device,
                      compiled=_compiled_for(model, base, parse_dtype(play_dtype), source) if args.compiled else None,
                      graphs=graphs, action_meanings=meanings)
        result["long_run"] = lr
        print(f"long run {lr['frames']} frames (frame-wise 2-step {play_dtype}{', compiled' if lr['compiled'] else ''}"
              f"{', graphs' if lr['graphs'] else ''}): "
              f"ms/frame p50 first 100 "
              f"{lr['ms_per_frame_p50_first100']:.2f}, last 100 {lr['ms_per_frame_p50_last100']:.2f}; max RSS "
              f"{lr['max_rss_mb_at_100']:.0f} MB at 100 -> {lr['max_rss_mb_at_end']:.0f} MB at end; KV cache "
              f"{lr['kv_cache_bytes'] / 1e6:.2f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
