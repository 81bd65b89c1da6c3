"""CUDA-graph forwards' bookkeeping on the CPU (worldsim.engine.cuda_graphs).

The capture mechanism is injected: ``Recording`` "captures" by calling the forward once over the static
buffers and "replays" by calling it again on the same buffers, writing the same output buffer, which is
what a CUDA graph does with its fixed addresses. So these tests check everything but the CUDA driver:
the static inputs are written in place, replays equal eager generation through the cache's wrap for
1/2/4 steps and chunk-wise, the engine uses graphs only where they were captured, a weights change or a
new cache drops them, and a failed capture falls back to eager with one warning. tests/test_gpu.py runs
the same with real CUDA graphs."""

import warnings

import pytest
import torch

from test_aot import WINDOW, SINK, engines, tiny
from worldsim.engine import Engine, EngineConfig, aot
from worldsim.engine.cuda_graphs import GraphForwards, cache_buffers


class Recording:
    """A capture backend for the CPU: one call per capture and per replay, over the same buffers."""

    device_type = "cpu"

    def __init__(self):
        self.captured = 0
        self.replayed = 0

    def __call__(self, fn):
        self.captured += 1
        out = fn()

        def replay():
            self.replayed += 1
            out.copy_(fn())  # a graph writes its output buffer in place

        return replay, out


class Failing:
    device_type = "cpu"

    def __call__(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def on_graphs(model, steps=2, chunk=1, capture=None, **kw):
    """(eager engine, engine on graph forwards, the forwards): the same context and seed (test_aot.engines)."""
    eager, graph = engines(model, steps, chunk=chunk, **kw)
    fw = GraphForwards(model, WINDOW, SINK, chunk, capture=capture or Recording())
    aot.attach(graph, fw)
    return eager, graph, fw


def same_frames(graph, eager, chunks, start=0):
    """Step both engines ``chunks`` times under the same actions; the frames must agree."""
    C = graph.cfg.chunk
    with torch.no_grad():
        for t in range(start, start + chunks):
            a = torch.tensor([[(t + i) % 5 for i in range(C)]])
            torch.testing.assert_close(graph.step(a), eager.step(a), atol=1e-6, rtol=1e-6)


def static_addresses(fw):
    return {k: (r.x.data_ptr(), r.sigma.data_ptr(), r.actions.data_ptr(), r.rot.data_ptr(), r.out.data_ptr())
            for k, r in fw.runners.items()}


@pytest.mark.parametrize("anchor", [True, False], ids=["anchored", "plain"])
@pytest.mark.parametrize("chunk,steps", [(1, 1), (1, 2), (1, 4), (3, 1), (3, 4)], ids=lambda v: str(v))
def test_replayed_graphs_equal_eager_generation_past_the_cache_wrap(chunk, steps, anchor):
    m = tiny(anchor)
    eager, graph, fw = on_graphs(m, steps, chunk, context=9)
    same_frames(graph, eager, 2)  # the first steady steps capture (the first after a prefill is unfused)
    addresses = static_addresses(fw)
    n = 24 // chunk - 2  # past the window: the ring wraps and the sink is re-rotated every frame
    same_frames(graph, eager, n, start=2)
    assert fw.captures == 2 and set(fw.runners) == {(2 * chunk, chunk), (chunk, 0)} and fw.ready
    assert fw.replays == fw._capture_with.replayed == (n + 2) * steps  # every forward replayed a graph
    assert static_addresses(fw) == addresses  # inputs and output written in place, never reallocated
    assert all(r.buffers == cache_buffers(graph.cache) for r in fw.runners.values())  # over the engine's cache
    last = fw.runners[(chunk, 0)] if steps > 1 else fw.runners[(2 * chunk, chunk)]
    p0 = graph.cache.frames - (0 if steps > 1 else chunk)  # the last replay's first position
    assert torch.equal(last.rot, m.rope.rotations(torch.arange(p0, p0 + last.frames)))
    torch.testing.assert_close(graph.cache.k[0], eager.cache.k[0], atol=1e-6, rtol=1e-6)


def test_graphs_only_where_captured_batch_dtype_full_cache():
    m = tiny()
    eager, graph, fw = on_graphs(m, context=2)  # 2 of 7 slots: the next 5 frames fill the cache eagerly
    with torch.no_grad():
        for t in range(10):
            full = graph.cache.full
            before = fw.replays
            torch.testing.assert_close(graph.step(1), eager.step(1), atol=1e-6, rtol=1e-6)
            assert fw.replays - before == (2 if full else int(graph.cache.full))
        x1, x2 = torch.zeros(1, 1, 3, 16, 16), torch.zeros(1, 2, 3, 16, 16)
        assert fw.accepts(x1, graph.cache, 0, torch.float32) and fw.accepts(x2, graph.cache, 1, torch.float32)
        assert not fw.accepts(x1, graph.cache, 0, torch.bfloat16)  # autocast: not what was captured
        assert not fw.accepts(torch.zeros(1, 3, 3, 16, 16), graph.cache, 0, torch.float32)  # no such graph
        with torch.enable_grad():
            assert not fw.accepts(x1, graph.cache, 0, torch.float32)  # training: eager
        e2 = Engine(m, EngineConfig(steps=2, window=WINDOW, sink=SINK))  # batch 2: eager
        aot.attach(e2, fw)
        e2.reset(2)
        e2.prefill(torch.zeros(2, 8, 3, 16, 16))
        n, captured = fw.replays, fw.captures
        e2.step(0)
        assert fw.replays == n and fw.captures == captured
        filling = Engine(m, EngineConfig(steps=2, window=WINDOW, sink=SINK))
        filling.reset(1)
        filling.prefill(torch.zeros(1, 2, 3, 16, 16))
        assert not filling.cache.full and not fw.accepts(x1, filling.cache, 0, torch.float32)


def test_a_changed_weight_drops_the_graphs_and_the_next_step_recaptures():
    m = tiny()
    eager, graph, fw = on_graphs(m)
    with torch.no_grad():
        graph.step(0), eager.step(0), graph.step(1), eager.step(1)  # both graphs captured
        old = dict(fw.runners)
        m.out.bias.add_(0.5)  # an optimiser step or a load
        torch.testing.assert_close(graph.step(2), eager.step(2), atol=1e-6, rtol=1e-6)
        assert fw.captures == 4 and all(fw.runners[k] is not old[k] for k in old)
        m.out.weight = torch.nn.Parameter(m.out.weight * 1.5)  # replaced by assignment: another address
        torch.testing.assert_close(graph.step(3), eager.step(3), atol=1e-6, rtol=1e-6)
        assert fw.captures == 6


def test_a_new_engine_cache_is_captured_again_and_capture_runs_off_the_step():
    m = tiny()
    _, first, fw = on_graphs(m)
    assert fw.capture(first.cache) == 2 and fw.captures == 2  # prepare: before any step
    eager, second = engines(m, 2, seed=1)
    aot.attach(second, fw)  # a settings switch: a new engine, new cache buffers, the same forwards
    with torch.no_grad():
        for t in range(3):
            torch.testing.assert_close(second.step(t), eager.step(t), atol=1e-6, rtol=1e-6)
    assert fw.captures == 4 and all(r.buffers == cache_buffers(second.cache) for r in fw.runners.values())


def test_a_failed_capture_warns_once_and_play_goes_on_eagerly():
    m = tiny()
    eager, graph, fw = on_graphs(m, capture=Failing())
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(6):
            torch.testing.assert_close(graph.step(t % 5), eager.step(t % 5), atol=1e-6, rtol=1e-6)
    said = [w for w in caught if "CUDA graph capture failed" in str(w.message)]
    assert len(said) == 1 and "not permitted when stream is capturing" in str(said[0].message)
    assert fw.state == "failed" and not fw.runners and graph.compiled is fw  # the engine keeps asking: no
    assert not fw.accepts(torch.zeros(1, 1, 3, 16, 16), graph.cache, 0, torch.float32)


def test_the_backend_makes_graph_forwards_only_on_cuda():
    from worldsim.runtime.backend import Context, ModelBackend
    import numpy as np

    m = tiny()
    ctx = Context(np.zeros((8, 16, 16, 3), np.uint8), np.zeros(8, np.int64))
    cpu = ModelBackend(m, EngineConfig(window=WINDOW, sink=SINK), ctx, compiled="cached")
    assert isinstance(cpu.compiled_forwards, aot.CompiledForwards)
    assert ModelBackend(m, EngineConfig(window=WINDOW, sink=SINK), ctx, compiled="off").compiled_forwards is None
