"""The CUDA path on a real GPU: each Triton kernel compiled and run against its torch reference, and
the engine with Triton kernels against the engine with the references. Skips without a CUDA device
(CI has none; run ``python -m pytest -q -m gpu`` on a GPU machine).

The kernel cases and tolerances are the interpreter tests' (test_kernels_attention.py and
test_kernels_schedule_update.py say why each bound is what it is), plus the shapes the engine
actually launches; here the kernels are compiled by Triton for the device instead of interpreted.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import test_kernels_attention as ta
import test_kernels_schedule_update as ts
from kernels.attention import block_causal_attention_torch
from kernels.schedule_update import noise_update_torch
from test_engine import ANCHOR_IDS, ANCHORS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run -m gpu on a GPU machine)"),
]

triton = pytest.importorskip("triton", reason="triton is not installed (Linux only)")
CUDA = torch.device("cuda")

# The engine's launches: the shipped student (D=64, 64 tokens per frame) at frame-wise and chunk-wise
# settings, the cache full (window 12 + 2 sinks) and nearly empty; plus batch 8 for training-sized calls.
ENGINE_SHAPES = [
    ta.Case("engine,frame,full-cache", 1, 2, 2, 64, 64, 64, (15 * 64,), 15 * 64, int_len=True),
    ta.Case("engine,frame,fused-context", 1, 2, 2, 128, 64, 64, (9 * 64,), 15 * 64, int_len=True),
    ta.Case("engine,chunk3,full-cache", 1, 2, 2, 192, 64, 64, (17 * 64,), 17 * 64, int_len=True),
    ta.Case("batch8,ragged", 8, 4, 2, 64, 64, 64, tuple(64 * (2 + i) for i in range(8)), 10 * 64),
]
ATTN_CASES = [(c, dt) for c in ta.SHAPES + ENGINE_SHAPES for dt in ta.DTYPES]


@pytest.fixture(autouse=True)
def _demand_triton(monkeypatch):
    """No quiet fallback: a declined launch raises instead of testing the reference against itself."""
    monkeypatch.setenv("WORLDSIM_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("case,dtype", ATTN_CASES, ids=[f"{c.id}-{dt}" for c, dt in ATTN_CASES])
def test_attention_on_cuda_matches_reference(case, dtype):
    import kernels

    i = ATTN_CASES.index((case, dtype))
    q, k, v, lens = ta.make_inputs(case, seed=i)
    lo = ta.DTYPES[dtype]
    qd, kd, vd = (t.to(CUDA, lo) for t in (q, ta.poison(k, case.lens), ta.poison(v, case.lens)))
    lens_d = lens if isinstance(lens, int) else lens.to(CUDA)
    out = kernels.block_causal_attention(qd, kd, vd, lens_d, case.chunk, case.scale)
    torch.cuda.synchronize()
    ref = block_causal_attention_torch(q, k, v, lens, case.chunk, case.scale)  # fp32 oracle on the CPU
    assert out.shape == q.shape and out.dtype == lo and out.is_cuda
    assert torch.isfinite(out).all(), "NaN/inf in the output: the kernel read the poisoned tail or a 0/0"
    err = ta.rel_rms(out.cpu(), ref)
    if dtype == "fp32":
        assert err <= ta.FP32_TOL, f"{case.id}: fp32 rel-RMS {err:.2e} > {ta.FP32_TOL:.0e}"
        return
    torch_out = block_causal_attention_torch(qd, kd, vd, lens_d, case.chunk, case.scale)  # torch on the GPU, same dtype
    torch_err = ta.rel_rms(torch_out.cpu(), ref)
    bound = max(ta.LOW_PREC_RATIO * torch_err, ta.LOW_PREC_FLOOR)
    assert err <= bound, f"{case.id}: {dtype} rel-RMS {err:.2e} > {ta.LOW_PREC_RATIO} x torch's {torch_err:.2e}"


@pytest.mark.parametrize("mode,pred_type,dtype", ts.EXPLICIT, ids=[f"{m}-{p}-{d}" for m, p, d in ts.EXPLICIT])
def test_noise_update_on_cuda_matches_reference(mode, pred_type, dtype):
    import kernels

    i = ts.EXPLICIT.index((mode, pred_type, dtype))
    x, pred, noise = ts.explicit_inputs(i, dtype)
    out = kernels.noise_update(x.to(CUDA), pred.to(CUDA), ts.SIGMA.to(CUDA), ts.SIGMA_NEXT.to(CUDA), mode,
                               noise=noise.to(CUDA), pred_type=pred_type)
    ref = noise_update_torch(x, pred, ts.SIGMA, ts.SIGMA_NEXT, mode, noise=noise, pred_type=pred_type)
    ts.assert_matches(out.cpu(), ref)


def test_noise_update_on_cuda_draws_standard_normal_noise_per_seed():
    import kernels

    z = torch.zeros(ts.NOISE_SHAPE, device=CUDA)
    eps = kernels.noise_update(z, z, 1.0, 1.0, "renoise", seed=5).cpu()
    assert torch.equal(eps, kernels.noise_update(z, z, 1.0, 1.0, "renoise", seed=5).cpu())  # deterministic
    assert torch.equal(kernels.noise_update(z[:1], z[:1], 1.0, 1.0, "renoise", seed=5).cpu(), eps[:1])  # flat index
    other = kernels.noise_update(z, z, 1.0, 1.0, "renoise", seed=6).cpu()
    assert float((other == eps).float().mean()) < 1e-3
    e = eps.flatten().double()
    n = e.numel()
    assert abs(float(e.mean())) < 5 / n**0.5 and abs(float(e.std()) - 1) < 5 * (0.5 / n) ** 0.5
    assert abs(float((e[1:] * e[:-1]).mean())) < 5 / n**0.5  # neighbours uncorrelated


def _generate(model, cfg, kernels_mode, monkeypatch, n_steps=12, seed=3):
    from worldsim.engine import Engine

    monkeypatch.setenv("WORLDSIM_KERNELS", kernels_mode)
    mc = model.cfg
    g = torch.Generator().manual_seed(0)
    ctx = torch.rand(2, 4, mc.channels, mc.resolution, mc.resolution, generator=g) * 2 - 1
    actions = torch.randint(0, mc.num_actions, (2, n_steps * cfg.chunk), generator=g)
    eng = Engine(model, cfg, device=CUDA, dtype=torch.float32)
    eng.reset(2, seed=seed)
    eng.prefill(ctx)
    out = torch.cat([eng.step(a) for a in actions.split(cfg.chunk, dim=1)], 1)
    torch.cuda.synchronize()
    return out.cpu()


def _tiny(chunk: int, anchor: bool | str):
    from test_engine import tiny_model

    return tiny_model(chunk, anchor=anchor).to(CUDA)


# Deterministic settings only: renoise draws its noise in-kernel (Philox) under Triton and from torch's
# generator in the reference, so those runs differ by design; 1-step and Euler draw nothing after the start.
GEN_SETTINGS = [(1, 1, "renoise"), (1, 2, "euler"), (3, 2, "euler"), (1, 4, "euler")]


@pytest.mark.parametrize("anchor", ANCHORS, ids=ANCHOR_IDS)
@pytest.mark.parametrize("chunk,steps,sampler", GEN_SETTINGS, ids=lambda v: str(v))
def test_engine_triton_equals_reference_on_cuda(chunk, steps, sampler, anchor, monkeypatch):
    from worldsim.engine import EngineConfig

    m = _tiny(chunk, anchor)
    cfg = EngineConfig(chunk=chunk, steps=steps, sampler=sampler, shift=2.0, window=6, sink=1)  # rolls over
    got = _generate(m, cfg, "triton", monkeypatch)
    want = _generate(m, cfg, "torch", monkeypatch)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_engine_with_frame_local_blocks_triton_equals_reference_on_cuda(monkeypatch):
    """temporal_every=2 (the shipped student's form): frame-local blocks run torch SDPA, the cached ones
    the Triton attention; together they must still give the reference's frames."""
    from test_engine import tiny_model
    from worldsim.engine import EngineConfig

    m = tiny_model(1, temporal_every=2, anchor="input").to(CUDA)
    cfg = EngineConfig(chunk=1, steps=2, sampler="euler", shift=3.0, window=6, sink=1)
    got = _generate(m, cfg, "triton", monkeypatch)
    want = _generate(m, cfg, "torch", monkeypatch)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_shipped_model_on_cuda_triton_vs_reference(monkeypatch):
    """The real model: in fp32 the Triton run equals the reference run (1 step: deterministic); in bf16
    (how it plays) the Triton run's distance to the fp32 frames is at most twice the bf16 reference's."""
    from pathlib import Path

    from worldsim.checkpoint import build_model, load_checkpoint
    from worldsim.config import from_dict
    from worldsim.engine import EngineConfig

    path = Path(__file__).resolve().parent.parent / "assets" / "default.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    tensors, meta = load_checkpoint(str(path), "model.")
    model = build_model(meta)
    model.load_state_dict(tensors)
    model = model.eval().to(CUDA)
    base = from_dict(EngineConfig, meta.get("engine", {}), "shipped engine settings")
    cfg = dataclasses.replace(base, chunk=1, steps=1, sampler="renoise", timesteps=[])
    a = _generate(model, cfg, "triton", monkeypatch, n_steps=16)
    ref = _generate(model, cfg, "torch", monkeypatch, n_steps=16)
    torch.testing.assert_close(a, ref, atol=2e-3, rtol=1e-3)
    a16 = _generate(model.to(torch.bfloat16), cfg, "triton", monkeypatch, n_steps=16)
    r16 = _generate(model, cfg, "torch", monkeypatch, n_steps=16)  # still bf16: .to() works in place
    assert torch.isfinite(a16).all()
    err_t, err_r = float((a16 - ref).abs().mean()), float((r16 - ref).abs().mean())
    assert err_t <= 2 * err_r + 1e-3, f"bf16 Triton mean |diff| to fp32 {err_t:.4f} > 2 x torch bf16's {err_r:.4f}"


# -- CUDA graphs of the steady-state forwards (worldsim.engine.cuda_graphs) --------------------------------
def _graph_pair(model, cfg, seed=3, context=8):
    """(eager engine, engine on CUDA graphs) on the same context and noise seed."""
    from worldsim.engine import Engine, aot
    from worldsim.engine.cuda_graphs import GraphForwards

    mc = model.cfg
    ctx = torch.rand(1, context, mc.channels, mc.resolution, mc.resolution, generator=torch.Generator().manual_seed(0))
    out = []
    for graphs in (False, True):
        eng = Engine(model, cfg, device=CUDA, dtype=torch.float32)
        if graphs:
            aot.attach(eng, GraphForwards(model, cfg.window, cfg.sink, cfg.chunk))
        eng.reset(1, seed=seed)
        eng.prefill(ctx * 2 - 1)
        out.append(eng)
    return out


def _play(eng, n_chunks, seed=1):
    g = torch.Generator().manual_seed(seed)
    C, A = eng.cfg.chunk, eng.model.cfg.num_actions
    out = torch.cat([eng.step(torch.randint(0, A, (1, C), generator=g)) for _ in range(n_chunks)], 1)
    torch.cuda.synchronize()
    return out.cpu()


GRAPH_SETTINGS = [(1, 1), (1, 2), (1, 4), (3, 2), (3, 4)]


@pytest.mark.parametrize("kernels_mode", ["triton", "torch"])
@pytest.mark.parametrize("anchor", ANCHORS, ids=ANCHOR_IDS)
@pytest.mark.parametrize("chunk,steps", GRAPH_SETTINGS, ids=lambda v: str(v))
def test_cuda_graph_replay_equals_eager_past_the_cache_wrap(chunk, steps, anchor, kernels_mode, monkeypatch):
    """Real CUDA graphs, the Triton kernels (or the torch references) inside them: the frames are the eager
    engine's through the ring's wrap and the sinks' re-rotation, every steady forward a replay."""
    from worldsim.engine import EngineConfig

    monkeypatch.setenv("WORLDSIM_KERNELS", kernels_mode)
    m = _tiny(chunk, anchor)
    cfg = EngineConfig(chunk=chunk, steps=steps, shift=2.0, window=6, sink=1)
    eager, graph = _graph_pair(m, cfg)
    fw = graph.compiled
    before = fw.replays  # (the context's last frame may already replay one: the cache was full before it)
    n = 24 // chunk  # 24 frames: the window of 6 wraps four times
    want, got = _play(eager, n), _play(graph, n)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert fw.state == "ready" and fw.replays - before == n * steps and len(fw.runners) == 2


def test_cuda_graphs_are_dropped_when_the_weights_change():
    from worldsim.engine import EngineConfig

    m = _tiny(1, "input")
    eager, graph = _graph_pair(m, EngineConfig(steps=2, window=6, sink=1))
    _play(eager, 3), _play(graph, 3)
    fw = graph.compiled
    captured = fw.captures
    with torch.no_grad():
        m.out.bias.add_(0.5)
    torch.testing.assert_close(_play(graph, 4, seed=2), _play(eager, 4, seed=2), atol=1e-4, rtol=1e-4)
    assert fw.captures == captured + 2  # both graphs captured again, over the new weights


def test_cuda_graph_frame_path_allocates_nothing():
    """After the first steady steps the frame path neither grows the caching allocator (a cudaMalloc
    synchronises the device) nor captures: a 2-step frame-wise session of 200 frames."""
    from worldsim.engine import EngineConfig

    m = _tiny(1, "input2")
    _, graph = _graph_pair(m, EngineConfig(steps=2, window=6, sink=1))
    _play(graph, 10)
    reserved, captured = torch.cuda.memory_reserved(CUDA), graph.compiled.captures
    for t in range(200):  # each frame dropped as play drops it once shown (nothing kept that would need room)
        graph.step(t % m.cfg.num_actions)
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved(CUDA) == reserved and graph.compiled.captures == captured


def test_shipped_model_on_cuda_graphs_vs_eager_bf16():
    """The shipped model as play runs it (bf16 weights, 2 steps): graph frames stay within bf16 rounding
    of the eager frames over 64 frames of free play."""
    from pathlib import Path

    from worldsim.checkpoint import load_checkpoint, load_weights
    from worldsim.config import from_dict
    from worldsim.engine import EngineConfig

    path = Path(__file__).resolve().parent.parent / "assets" / "default.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    tensors, meta = load_checkpoint(str(path), "model.")
    model = load_weights(tensors, meta, str(path)).eval().to(CUDA, torch.bfloat16)
    base = from_dict(EngineConfig, meta.get("engine", {}), "shipped engine settings")
    eager, graph = _graph_pair(model, dataclasses.replace(base, chunk=1, steps=2, timesteps=[]))
    before = graph.compiled.replays
    want, got = _play(eager, 64), _play(graph, 64)
    assert graph.compiled.replays - before == 128
    err = float((got - want).abs().mean())
    assert err < 2e-2, f"graph vs eager mean |diff| {err:.4f} over 64 bf16 frames"


def test_backend_captures_before_the_first_frame_and_on_a_settings_switch():
    """play.py's backend on CUDA: ``prepare`` (the worker's start, outside the stall clock) warms up and
    captures; the played frames then only replay, also after a switch to 4 steps and to chunk-wise."""
    import numpy as np

    from worldsim.engine import EngineConfig
    from worldsim.runtime.backend import Context, ModelBackend

    m = _tiny(1, "input2")
    ctx = Context(np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8), np.zeros(8, np.int64))
    b = ModelBackend(m, EngineConfig(steps=2, window=6, sink=1), ctx, device=CUDA, compiled="auto")
    b.prepare()
    fw = b.engine.compiled
    captured = fw.captures
    assert fw.ready and captured >= 2
    b.reset(5)
    for t in range(10):
        b.step(t % 5)
    assert fw.captures == captured and fw.replays > 0 and b.settings["compiled"]
    for steps, chunk in ((4, None), (None, 3)):
        b.configure(steps=steps, chunk=chunk)
        fw = b.engine.compiled
        captured = fw.captures
        assert len(fw.runners) == 2
        frames, _ = b.step(1)
        assert frames.shape[0] == b.cfg.chunk and fw.captures == captured
