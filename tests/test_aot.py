"""Compiled steady-state forwards (worldsim.engine.aot).

The traced graph (``SteadyForward``, run eagerly) must compute the engine's eager forward, through
ring wrap-around and sink re-rotation; the engine must use it only where it applies (full cache,
batch 1, frame-wise, unchanged weights). The AOTInductor package of a tiny model must match the eager
engine, be found by key, refuse other weights and a damaged file with one line, and play.py's backend
must pick it up. Building needs a C++ compiler (skips with that reason without one)."""

import json
import os
import shutil

import pytest
import torch

from worldsim.engine import Engine, EngineConfig, aot
from worldsim.model import ModelConfig, WorldDiT

WINDOW, SINK = 6, 1


def tiny(anchor=True, seed=0, temporal_every=2, refine=0):
    torch.manual_seed(seed)
    m = WorldDiT(ModelConfig(resolution=16, patch=4, dim=32, depth=4, heads=2, kv_heads=1, num_actions=5,
                             temporal_every=temporal_every, anchor=anchor,
                             anchor_history=2 if anchor else 1, refine=refine)).eval()
    with torch.no_grad():  # zero-init output layers would make every comparison trivially pass
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


class Counting:
    """A runner that counts its calls (the engine took the compiled path)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def traced_runners(model, window=WINDOW, sink=SINK, chunk=1) -> dict:
    """The graphs that get exported, run eagerly in place of the compiled ones."""
    prefix = (sink + window) * model.cfg.tokens_per_frame
    return {(t, d): Counting(aot.SteadyForward(model, t, d, prefix, chunk)) for t, d in aot.graphs(chunk)}


def traced_forwards(model, window=WINDOW, sink=SINK, chunk=1, batch=1) -> aot.CompiledForwards:
    """Ready forwards over the traced graphs (a package as ``build`` describes it, never compiled)."""
    meta = {**aot.spec(model, window, sink, chunk, batch), "key": aot.package_key(model, window, sink, chunk, batch)}
    package = aot.Package(traced_runners(model, window, sink, chunk), meta, path="<traced>")
    return aot.CompiledForwards.of(model, package)


MEANINGS = ["NOOP", "FIRE", "UP", "DOWN", "UPFIRE"]  # the tiny model's actions, for action guidance


def engines(model, steps, context=8, sampler="renoise", window=WINDOW, sink=SINK, seed=0, chunk=1, guidance=1.0,
            contrast="button"):
    out = []
    g = torch.Generator().manual_seed(seed)
    ctx = torch.rand(1, context, 3, 16, 16, generator=g) * 2 - 1
    acts = torch.randint(0, 5, (1, context), generator=g)
    for _ in range(2):
        e = Engine(model, EngineConfig(steps=steps, window=window, sink=sink, sampler=sampler, seed=3, chunk=chunk,
                                       guidance=guidance, guidance_contrast=contrast), action_meanings=MEANINGS)
        e.reset(1)
        e.prefill(ctx, acts)
        out.append(e)
    return out


def calls(forwards):
    return sum(r.calls for r in forwards.package.runners.values())


@pytest.mark.parametrize("anchor,refine", [(True, 0), (False, 0), (True, 6)], ids=["anchored", "plain", "refined"])
@pytest.mark.parametrize("steps,sampler", [(1, "renoise"), (2, "renoise"), (2, "euler"), (4, "renoise")])
def test_traced_graph_engine_matches_eager(anchor, refine, steps, sampler):
    m = tiny(anchor, refine=refine)
    eager, graph = engines(m, steps, sampler=sampler)
    fw = traced_forwards(m)
    aot.attach(graph, fw)
    with torch.no_grad():
        for t in range(20):  # past the window: the ring wraps and the sink is re-rotated every frame
            torch.testing.assert_close(graph.step(t % 5), eager.step(t % 5), atol=2e-5, rtol=1e-5)
    assert calls(fw) == 20 * steps  # every forward went through the graph (the cache was full after prefill)
    torch.testing.assert_close(graph.cache.k[0], eager.cache.k[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("steps,sampler", [(2, "euler"), (2, "renoise")])
def test_traced_graphs_serve_button_guidance(steps, sampler):
    """Guidance on the button shares the player's cache: the batch-1 graphs run every forward, one more a
    step whose key holds FIRE (1 and 4 of the tiny model's keys)."""
    m = tiny()
    eager, graph = engines(m, steps, sampler=sampler, guidance=4.0)
    fw = traced_forwards(m)
    aot.attach(graph, fw)
    with torch.no_grad():
        for t in range(12):
            torch.testing.assert_close(graph.step(t % 5), eager.step(t % 5), atol=2e-5, rtol=1e-5)
    fire = sum(t % 5 in (1, 4) for t in range(12))
    assert calls(fw) == (12 + fire) * steps


def test_traced_batch_two_graphs_serve_classifier_free_guidance():
    m = tiny()
    eager, graph = engines(m, 2, guidance=2.0, contrast="none")
    fw = traced_forwards(m, batch=2)
    aot.attach(graph, fw)
    with torch.no_grad():
        for t in range(8):
            torch.testing.assert_close(graph.step(t % 5), eager.step(t % 5), atol=2e-5, rtol=1e-5)
    assert calls(fw) == 8 * 2 and graph.cache.B == 2
    assert aot.package_key(m, WINDOW, SINK, 1, 2) != aot.package_key(m, WINDOW, SINK, 1, 1)
    _, other = engines(m, 2, guidance=2.0, contrast="none")
    one = traced_forwards(m)  # a package for one stream: this engine runs eagerly
    aot.attach(other, one)
    with torch.no_grad():
        other.step(1)
    assert calls(one) == 0


@pytest.mark.parametrize("steps", [1, 4])
def test_traced_chunk_wise_graphs_match_eager(steps):
    m = tiny(temporal_every=1)
    eager, graph = engines(m, steps, chunk=3, context=9)
    fw = traced_forwards(m, chunk=3)
    aot.attach(graph, fw)
    with torch.no_grad():
        for t in range(8):  # 24 frames: the ring wraps several times
            a = torch.tensor([[t % 5, (t + 1) % 5, (t + 2) % 5]])
            torch.testing.assert_close(graph.step(a), eager.step(a), atol=2e-5, rtol=1e-5)
    assert calls(fw) == 8 * steps
    with pytest.raises(aot.AotError, match="chunk 3; the engine has 6 \\+ 1, chunk 1"):
        aot.attach(Engine(m, EngineConfig(window=WINDOW, sink=SINK)), fw)


def test_graph_only_once_the_cache_is_full_and_for_one_frame_wise_row():
    m = tiny()
    eager, graph = engines(m, 2, context=2)  # 2 of 7 slots: the next 5 frames fill the cache eagerly
    fw = traced_forwards(m)
    aot.attach(graph, fw)
    with torch.no_grad():
        for t in range(10):
            before, full = calls(fw), graph.cache.full
            torch.testing.assert_close(graph.step(1), eager.step(1), atol=2e-5, rtol=1e-5)
            # full before the step: both forwards compiled; else the fused one ran eagerly (and the
            # second one compiled if the commit inside the step filled the cache)
            assert calls(fw) - before == (2 if full else int(graph.cache.full))
        assert graph.cache.full and calls(fw) > 0
        # batch 2: eager
        e2 = Engine(m, EngineConfig(steps=2, window=WINDOW, sink=SINK))
        aot.attach(e2, fw)
        e2.reset(2)
        e2.prefill(torch.zeros(2, 8, 3, 16, 16))
        n = calls(fw)
        e2.step(0)
        assert calls(fw) == n


def test_changed_weights_turn_the_graph_off():
    m = tiny()
    eager, graph = engines(m, 2)
    fw = traced_forwards(m)
    aot.attach(graph, fw)
    with torch.no_grad():
        graph.step(0), eager.step(0)
        m.out.bias.add_(0.5)  # an optimiser step or a load: the frozen weights of a package would be stale
        n = calls(fw)
        torch.testing.assert_close(graph.step(2), eager.step(2), atol=2e-5, rtol=1e-5)
    assert calls(fw) == n


def test_key_follows_weights_and_layout_and_attach_checks_them():
    a, b = tiny(seed=0), tiny(seed=1)
    assert aot.package_key(a, 6, 1) == aot.package_key(tiny(seed=0), 6, 1)
    assert len({aot.package_key(a, 6, 1), aot.package_key(b, 6, 1), aot.package_key(a, 4, 1),
                aot.package_key(a, 6, 0), aot.package_key(a, 6, 1, chunk=3)}) == 5
    fw = traced_forwards(a)
    e = Engine(b, EngineConfig(window=WINDOW, sink=SINK))
    with pytest.raises(aot.AotError, match="other weights"):
        aot.attach(e, fw)
    with pytest.raises(aot.AotError, match="window 6 \\+ sink 1.*worldsim compile --window 4 --sink 1 --chunk 1"):
        aot.attach(Engine(a, EngineConfig(window=4, sink=SINK)), fw)


def test_build_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    with aot.build_lock("k", tmp_path) as mine:
        assert mine and aot.build_running("k", tmp_path)
        with aot.build_lock("k", tmp_path) as second:
            assert not second
    assert not aot.build_running("k", tmp_path)
    (tmp_path / ".k.lock").write_text("999999999")  # a pid that does not exist: a build that died
    assert not aot.build_running("k", tmp_path)
    with aot.build_lock("k", tmp_path) as mine:
        assert mine


def test_load_refuses_a_missing_or_foreign_package(tmp_path):
    with pytest.raises(aot.AotError, match="meta.json.*worldsim compile"):
        aot.Package.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": aot.FORMAT, "torch": "0.0"}))
    with pytest.raises(aot.AotError, match="torch 0.0"):
        aot.Package.load(tmp_path)


# -- the life cycle (CompiledForwards): absent -> building -> loading -> ready | failed -----------
# A package on disk whose graph files stand for the traced graphs (``_load_graph`` patched): the file
# handling, polls, builds and loads are the real ones, without a C++ compiler.
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_package(model, root, window=WINDOW, sink=SINK, chunk=1):
    """Write a package as ``build`` leaves it (meta.json last), graph files holding 'traced'."""
    key = aot.package_key(model, window, sink, chunk)
    d = root / key
    d.mkdir(parents=True)
    for t, dr in aot.graphs(chunk):
        (d / f"forward_t{t}_d{dr}.pt2").write_text("traced")
    (d / "meta.json").write_text(json.dumps({**aot.spec(model, window, sink, chunk), "key": key}))
    return d


@pytest.fixture
def traced_loader(monkeypatch):
    """``_load_graph`` that turns a 'traced' file into the traced graph of ``model`` (set by the test) and
    refuses anything else, as the real loader refuses a truncated file."""
    state = {"model": None}

    def load(f):
        if f.read_text() != "traced":
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        t, d = (int(part[1:]) for part in f.stem.split("_")[1:])
        m = state["model"]
        return Counting(aot.SteadyForward(m, t, d, (SINK + WINDOW) * m.cfg.tokens_per_frame))

    monkeypatch.setattr(aot, "_load_graph", load)
    return state


def test_forwards_find_a_package_built_meanwhile_and_switch_mid_session(tmp_path, traced_loader):
    m = tiny()
    traced_loader["model"] = m
    clock, said = FakeClock(), []
    eager, graph = engines(m, 2)
    fw = aot.CompiledForwards(m, WINDOW, SINK, root=tmp_path, log=said.append, clock=clock)
    aot.attach(graph, fw)
    with torch.no_grad():
        torch.testing.assert_close(graph.step(0), eager.step(0), atol=2e-5, rtol=1e-5)
        assert fw.state == "absent" and not fw.ready  # looked once: nothing built, no build asked for
        fake_package(m, tmp_path)  # 'worldsim compile' in another terminal finishes
        graph.step(1), eager.step(1)
        assert fw.state == "absent"  # not looked for again before POLL_S
        clock.now += aot.POLL_S
        graph.step(2), eager.step(2)  # the step's forward looks, finds it, loads it on a thread
        assert fw.wait(30) and fw.state == "ready" and fw.path == tmp_path / fw.key
        assert "run them from now on" in said[-1]
        before = calls(fw)
        torch.testing.assert_close(graph.step(3), eager.step(3), atol=2e-5, rtol=1e-5)
    assert calls(fw) - before == 2  # both forwards of the step after the switch ran the graphs


class FakeBuild:
    """Stands in for the background ``worldsim compile`` process: running until ``returncode`` is set."""

    def __init__(self):
        self.calls, self.returncode = [], None

    def __call__(self, checkpoint, dtype, window, sink, chunk=1, guidance=None):
        self.calls.append((checkpoint, dtype, window, sink, chunk) + ((guidance,) if guidance is not None else ()))
        return self

    def poll(self):
        return self.returncode


SOURCE = {"checkpoint": "tiny.safetensors", "dtype": "fp32"}


def test_failed_background_builds_are_retried_then_play_stays_eager(tmp_path, monkeypatch):
    m = tiny()
    fake, clock, said = FakeBuild(), FakeClock(), []
    monkeypatch.setattr(aot, "build_in_background", fake)
    fw = aot.CompiledForwards(m, WINDOW, SINK, build_from=SOURCE, root=tmp_path, log=said.append, clock=clock)
    assert fw.poll() == "building" and fake.calls == [("tiny.safetensors", "fp32", WINDOW, SINK, 1)]
    assert "compiling the model's frame-wise forwards" in said[0]
    fake.returncode = 1  # ended without a package
    for _ in range(2 * aot.BUILD_TRIES):
        fw.poll()
    assert fw.state == "failed" and len(fake.calls) == aot.BUILD_TRIES
    assert "the background build failed" in said[-1] and said[-1].endswith("playing eagerly")
    x = torch.zeros(1, 1, 3, 16, 16)
    clock.now += 10 * aot.POLL_S
    assert not fw.accepts(x, None, 0, torch.float32) and len(fake.calls) == aot.BUILD_TRIES  # for good


def test_another_process_building_is_waited_for_not_duplicated(tmp_path, monkeypatch):
    m = tiny()
    fake = FakeBuild()
    monkeypatch.setattr(aot, "build_in_background", fake)
    fw = aot.CompiledForwards(m, WINDOW, SINK, build_from=SOURCE, root=tmp_path, log=lambda *a: None)
    (tmp_path / f".{aot.package_key(m, WINDOW, SINK)}.lock").write_text(str(os.getpid()))  # a live holder
    assert fw.poll() == "building" and fake.calls == []


@pytest.mark.parametrize("build_from", [SOURCE, None], ids=["auto", "cached"])
def test_a_damaged_package_is_set_aside_and_built_again_only_where_we_build(tmp_path, monkeypatch, traced_loader,
                                                                            build_from):
    m = tiny()
    traced_loader["model"] = m
    fake, said = FakeBuild(), []
    monkeypatch.setattr(aot, "build_in_background", fake)
    bad = fake_package(m, tmp_path)
    (bad / "forward_t1_d0.pt2").write_text("trac")  # a copy cut short
    fw = aot.CompiledForwards(m, WINDOW, SINK, build_from=build_from, root=tmp_path, log=said.append)
    if build_from is None:  # 'cached': not ours to rebuild; eager, the package left for a look
        assert fw.poll(wait=True) == "failed" and bad.exists()
        assert "does not load" in said[-1] and "worldsim compile --force" in said[-1]
        return
    assert fw.poll(wait=True) == "absent" and not bad.exists()
    assert len(list(tmp_path.glob(f".bad-*-{bad.name}"))) == 1 and "set aside, building them again" in said[-1]
    assert fw.poll() == "building" and len(fake.calls) == 1


def test_weights_changed_after_the_package_was_found_are_not_served(tmp_path, traced_loader):
    m = tiny()
    traced_loader["model"] = m
    fake_package(m, tmp_path)
    eager, graph = engines(m, 2)
    fw = aot.CompiledForwards(m, WINDOW, SINK, root=tmp_path, log=lambda *a: None)
    assert fw.poll(wait=True) == "ready"
    aot.attach(graph, fw)
    with torch.no_grad():
        m.out.bias.add_(0.5)  # a load or an optimiser step after the key was taken
        torch.testing.assert_close(graph.step(1), eager.step(1), atol=2e-5, rtol=1e-5)
    assert calls(fw) == 0
    with pytest.raises(aot.AotError, match="other weights"):  # a new engine on the changed model is refused
        aot.attach(Engine(m, EngineConfig(window=WINDOW, sink=SINK)), fw)


# -- the real package (AOTInductor): one build for the tests below -------------------------------
def _no_compiler() -> str | None:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++): AOTInductor cannot build"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny fp32 checkpoint, as play.py loads it, and its package built into a private cache."""
    reason = _no_compiler()
    if reason:
        pytest.skip(reason)
    from worldsim.runtime import load_playable
    from worldsim.runtime.testing import write_random_checkpoint

    root = tmp_path_factory.mktemp("aotcache")
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                                   engine={"window": WINDOW, "sink": SINK, "steps": 2})
    old = os.environ.get("WORLDSIM_CACHE_DIR")
    os.environ["WORLDSIM_CACHE_DIR"] = str(root)
    try:
        b = load_playable(ckpt, dtype="fp32").backend
        path = aot.build(b.model, b.cfg.window, b.cfg.sink, log=lambda *a: None)
        yield ckpt, b, path
    finally:
        if old is None:
            os.environ.pop("WORLDSIM_CACHE_DIR", None)
        else:
            os.environ["WORLDSIM_CACHE_DIR"] = old


@pytest.mark.slow
def test_package_matches_eager_engine(built):
    from worldsim.runtime.compile_cli import check

    _, b, path = built
    assert aot.find(b.model, WINDOW, SINK) == path
    assert aot.build(b.model, WINDOW, SINK) == path  # found, not rebuilt
    forwards = aot.CompiledForwards.of(b.model, aot.Package.load(path))
    c = check(b, forwards, chunks=6, timed=3)
    assert c["max_abs_diff_first"] < 1e-4, c  # fp32 in, fp32 out: only the order of sums differs
    assert c["max_abs_diff"] < 1e-3, c


@pytest.mark.slow
def test_package_refuses_a_damaged_graph(built, tmp_path):
    _, _, path = built
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    g = bad / "forward_t2_d1.pt2"
    g.write_bytes(g.read_bytes()[:1000])  # truncated
    with pytest.raises(aot.AotError, match="does not load.*worldsim compile --force"):
        aot.Package.load(bad)


@pytest.mark.slow
def test_backend_uses_a_built_package_and_off_does_not(built):
    from worldsim.runtime import load_playable

    ckpt, _, _ = built
    for mode, want in (("cached", True), ("off", False)):
        b = load_playable(ckpt, dtype="fp32").backend
        b.compiled_mode = mode
        b.prepare()
        b.reset(0)
        frames, _ = b.step(1)
        assert frames.shape == (1, 16, 16, 3)
        assert b.settings["compiled"] is want
        assert b.describe()["compiled"]["state"] == ("ready" if want else "off")


@pytest.mark.slow
def test_compile_cli_finds_the_package_and_checks_it(built, tmp_path, capsys):
    from worldsim.runtime.compile_cli import main

    ckpt, _, path = built
    out = tmp_path / "c.json"
    assert main(["--checkpoint", str(ckpt), "--dtype", "fp32", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["package"] == str(path) and r["check"]["max_abs_diff_first"] < 1e-4
    assert "already compiled" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown override 'steps=2'"):
        main(["--checkpoint", str(ckpt), "steps=2"])


@pytest.mark.slow
def test_auto_mode_builds_in_the_background_and_switches_mid_session(built, tmp_path, monkeypatch):
    from worldsim.runtime import load_playable

    ckpt, _, path = built
    monkeypatch.setenv("WORLDSIM_CACHE_DIR", str(tmp_path))  # an empty cache: nothing built yet
    fake = FakeBuild()
    monkeypatch.setattr(aot, "build_in_background", fake)
    b = load_playable(ckpt, dtype="fp32").backend
    b.compiled_mode, b.source = "auto", {"checkpoint": str(ckpt), "dtype": "fp32"}
    now = [0.0]
    fw = b.compiled_forwards
    fw.clock = lambda: now[0]
    b.prepare()
    assert fake.calls == [(str(ckpt), "fp32", WINDOW, SINK, 1, 1.0)] and b.describe()["compiled"]["state"] == "building"
    b.reset(0)
    b.step(0)
    assert b.settings["compiled"] is False  # eager while it builds
    shutil.copytree(path, aot.cache_root() / path.name)  # the build finishes
    b.step(0)
    assert fw.state == "building"  # looked for every POLL_S, not every step
    now[0] += aot.POLL_S
    b.step(0)  # finds it and loads it beside generation
    assert fw.wait(60) and fw.state == "ready"
    b.step(0)
    assert b.settings["compiled"] is True and b.engine.compiled is not None
    assert len(fake.calls) == 1
    b.configure(chunk=3)  # chunk-wise play: its own package, built when first used
    b.step(0)
    assert fake.calls[-1] == (str(ckpt), "fp32", WINDOW, SINK, 3, 1.0) and b.settings["compiled"] is False
    b.configure(chunk=1)  # back to frame-wise: the loaded package at once
    b.step(0)
    assert b.settings["compiled"] is True


@pytest.mark.slow
def test_auto_mode_without_a_compiler_plays_eagerly_and_says_why(built, tmp_path, monkeypatch, capsys):
    from worldsim.runtime import load_playable

    ckpt, _, _ = built
    monkeypatch.setenv("WORLDSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(aot.shutil, "which", lambda name: None)
    fake = FakeBuild()
    monkeypatch.setattr(aot, "build_in_background", fake)
    b = load_playable(ckpt, dtype="fp32").backend
    b.compiled_mode, b.source = "auto", {"checkpoint": str(ckpt), "dtype": "fp32"}
    b.prepare()
    b.reset(0)
    b.step(0)
    assert fake.calls == [] and b.describe()["compiled"]["state"] == "failed"
    assert "no C++ compiler found (g++)" in capsys.readouterr().err


def test_play_compile_setting_is_checked(tmp_path, capsys):
    from worldsim.app.cli import compile_mode, main as play_main
    from worldsim.errors import WorldsimError

    assert [compile_mode(v) for v in ("auto", "cached", "off", False, "False", True)] == \
        ["auto", "cached", "off", "off", "off", "auto"]
    with pytest.raises(WorldsimError, match="compile must be 'auto', 'cached' or 'off'"):
        compile_mode("fast")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    assert play_main(["--headless", "--checkpoint", str(tmp_path / "none.safetensors"), "compile=fast"]) == 2
    assert "compile must be" in capsys.readouterr().err  # before the checkpoint is even looked at


def test_a_failing_graph_falls_back_to_eager_for_good():
    m = tiny()
    eager, graph = engines(m, 2)
    fw = traced_forwards(m)
    aot.attach(graph, fw)

    def broken(*args):
        raise RuntimeError("simulated fault in the compiled code")

    fw.package.runners[(1, 0)] = fw.package.runners[(2, 1)] = broken
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="simulated fault.*eagerly from here on"):
        torch.testing.assert_close(graph.step(1), eager.step(1), atol=2e-5, rtol=1e-5)
    assert graph.compiled is None
    with torch.no_grad():
        torch.testing.assert_close(graph.step(2), eager.step(2), atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_auto_mode_sets_a_damaged_package_aside_and_builds_it_again(built, tmp_path, monkeypatch, capsys):
    from worldsim.runtime import load_playable

    ckpt, _, path = built
    monkeypatch.setenv("WORLDSIM_CACHE_DIR", str(tmp_path))
    bad = aot.cache_root() / path.name
    shutil.copytree(path, bad)
    g = bad / "forward_t1_d0.pt2"
    g.write_bytes(g.read_bytes()[:500])  # a copy cut short
    fake = FakeBuild()
    monkeypatch.setattr(aot, "build_in_background", fake)
    b = load_playable(ckpt, dtype="fp32").backend
    b.compiled_mode, b.source = "auto", {"checkpoint": str(ckpt), "dtype": "fp32"}
    b.prepare()
    assert not bad.exists() and len(list(aot.cache_root().glob(f".bad-*-{path.name}"))) == 1
    assert "set aside, building them again" in capsys.readouterr().err
    b.reset(0)
    b.step(0)  # the next poll starts the build; play goes on eagerly
    assert fake.calls == [(str(ckpt), "fp32", WINDOW, SINK, 1, 1.0)] and b.settings["compiled"] is False


@pytest.mark.slow
def test_play_in_a_process_worker_runs_the_built_package(built, tmp_path):
    """play.py end to end: the generating child process finds the package (prepare, before 'ready')."""
    from worldsim.app.cli import main as play_main

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    ckpt, _, _ = built
    out = tmp_path / "play.json"
    # --max-seconds counts from the start: the child's start (torch import, package load) can take most
    # of a few seconds on a busy 2-core box, so leave room for frames after it
    assert play_main(["--headless", "--checkpoint", str(ckpt), "--dtype", "fp32", "--max-seconds", "12",
                      "--json", str(out), "compile=cached"]) == 0
    s = json.loads(out.read_text())
    assert s["frames"] >= 1 and s["settings"]["compiled"] is True


@pytest.mark.slow
def test_backend_does_not_take_back_forwards_its_engine_dropped(built):
    from worldsim.runtime import load_playable

    ckpt, _, _ = built
    b = load_playable(ckpt, dtype="fp32").backend
    b.compiled_mode = "cached"
    b.prepare()
    b.reset(0)

    def broken(*args):
        raise RuntimeError("simulated fault in the compiled code")

    forwards = b.compiled_forwards
    forwards.package.runners = {k: broken for k in forwards.package.runners}
    with pytest.warns(RuntimeWarning, match="simulated fault"):
        for _ in range(4):  # past the 3 frames that fill the cache
            b.step(0)
    assert b.settings["compiled"] is False and b.engine.compiled_error
    b.step(0)  # the backend's poll does not re-attach the graphs that failed
    assert b.engine.compiled is None
