"""The process backend (how play.py runs the model on CPU): the same frames as in-process, live
settings, errors and a dead child reported as exceptions, a hung child killed by the Session's
restart instead of being abandoned, and a start that a dead or stopped child cannot block. A tiny
random model; each test starts real child processes."""

import os
import signal
import tempfile
import threading

import numpy as np
import pytest

from worldsim.errors import ConfigError
from worldsim.runtime import ProcessBackend, Session, SessionConfig, load_playable
from worldsim.runtime.testing import HangingBackend, generation_children, wait_for, write_random_checkpoint


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", context_frames=4)
    return load_playable(ckpt, dtype="fp32").backend


@pytest.fixture(scope="module")
def wide_backend(tmp_path_factory):
    """64x64 frames and 8 of them as context: start data (~100 KB) larger than a pipe holds."""
    import dataclasses

    from worldsim.runtime.testing import tiny_model_config

    mc = dataclasses.replace(tiny_model_config(6), resolution=64, patch=8)
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "wide.safetensors", model_config=mc,
                                   context_frames=8)
    return load_playable(ckpt, dtype="fp32").backend


def test_child_generates_the_same_frames_and_switches_settings(backend):
    local = backend.fresh()
    pb = ProcessBackend(backend.fresh(), threads=1)
    try:
        f0, a0 = local.reset(3)
        f1, a1 = pb.reset(3)
        assert pb.pid is not None and pb.pid != os.getpid() and pb.child_threads == 1
        assert np.array_equal(f0, f1) and np.array_equal(a0, a1)
        for a in (1, 2, 0, 5):
            want, _ = local.step(a)
            got, info = pb.step(a)
            assert got.dtype == np.uint8 and np.array_equal(got, want)
        pb.configure(steps=1, chunk=3)
        assert pb.settings["steps"] == 1 and pb.settings["chunk"] == 3
        frames, _ = pb.step(2)
        assert frames.shape[0] == 3
        assert pb.model is backend.model and pb.kind == "model"  # static attributes from the parent's copy
    finally:
        pb.close()
    assert pb._proc.exitcode == 0  # a clean 'close', not a kill


def test_child_error_and_death_raise_in_the_caller(backend):
    pb = ProcessBackend(backend.fresh(), threads=1)
    try:
        pb.reset(0)
        with pytest.raises(RuntimeError, match="in the generation process: .*action"):
            pb.step(999)  # out of range: the engine's check raises in the child
        pb.step(1)  # the child survives its own exceptions
        os.kill(pb.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"generation process died \(exit code -9\)"):
            pb.step(1)
    finally:
        pb.close()


def test_session_kills_a_hung_child_and_resumes(backend, manual_clock):
    pb = ProcessBackend(HangingBackend(backend.fresh(), hang_at=3), threads=1)
    s = Session(pb, SessionConfig(fps=0, stall_timeout_s=2.0))
    s.clock = manual_clock  # the watchdog's time moves only below, once the hanging step is the one running
    assert s.kills_hung_workers
    s.start()
    try:
        gens = []
        assert wait_for(lambda: (c := s.poll()) is not None and c.kind == "gen" and gens.append(c) is None
                        and len(gens) == 3, 60)  # steps 0-2; step 3 hangs in the child
        assert wait_for(lambda: manual_clock.advance(0.5) or s.health().state == "stalled", 60), s.health()
        hung_pid = pb.pid
        s.restart()
        assert s.restarts == 1 and s.abandoned == 0  # killed, not left behind
        assert not pb._proc.is_alive() and pb._proc.exitcode == -signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)
        assert wait_for(lambda: (c := s.poll()) is not None and c.kind == "gen", 60)  # play resumed
        assert s.backend.pid not in (None, hung_pid)
        assert s.health().state == "ok"
    finally:
        s.stop()
    assert not s.backend._proc.is_alive()


def test_split_cores_gives_the_display_a_core_of_its_own(monkeypatch):
    from worldsim.runtime import process_backend as pbm

    monkeypatch.setattr(pbm.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert pbm.split_cores(0) == (3, {1, 2, 3}, {0})
    assert pbm.split_cores(2) == (2, None, None)  # a given count is not pinned
    monkeypatch.setattr(pbm.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert pbm.split_cores(0) == (1, None, None)  # one core: nothing to split


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs 2+ usable cores and Linux affinity")
def test_default_threads_pin_the_child_and_give_the_parent_its_cores_back(backend):
    """threads=0: the child runs every core but the first, pinned; the parent's threads (a thread started
    before the child included) run on the first core until the child ends, then on their old cores."""
    import threading

    before = os.sched_getaffinity(0)
    first, rest = min(before), before - {min(before)}
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()
    pb = ProcessBackend(backend.fresh(), threads=0)
    try:
        frames, _ = pb.reset(0)
        assert frames.dtype == np.uint8
        assert pb.child_threads == len(rest) and pb.child_cores == rest
        assert os.sched_getaffinity(pb.pid) == rest
        assert os.sched_getaffinity(0) == {first} and os.sched_getaffinity(other.native_id) == {first}
        assert pb.describe()["pinned"] == sorted(rest)
        pb.step(1)
    finally:
        pb.close()
        done.set()
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs 2+ usable cores and Linux affinity")
@pytest.mark.slow  # two children started at once, each pinned to the same core
def test_overlapping_children_unpin_the_parent_only_when_the_last_ends(backend):
    before = os.sched_getaffinity(0)
    a, b = ProcessBackend(backend.fresh(), threads=0), ProcessBackend(backend.fresh(), threads=0)
    try:
        a.reset(0)
        b.reset(0)
        assert os.sched_getaffinity(b.pid) == before - {min(before)}  # split as the first was
        a.close()
        assert os.sched_getaffinity(0) == {min(before)}  # b still runs: the parent stays on its core
    finally:
        a.close()
        b.close()
    assert os.sched_getaffinity(0) == before


def _start_in_thread(pb):
    """``pb.start_worker()`` in a thread (as the Session runs it); the dict gets the error it raised."""
    out: dict = {}

    def start():
        try:
            pb.start_worker()
        except RuntimeError as e:
            out["error"] = str(e)

    t = threading.Thread(target=start, daemon=True)
    t.start()
    return t, out


def test_a_child_killed_while_it_starts_fails_the_start_at_once(wide_backend, tmp_path, monkeypatch):
    """The start data (more than a pipe holds) goes by a file: a child killed while it imports torch
    ends the start with an error instead of blocking the parent for good."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pb = ProcessBackend(wide_backend.fresh(), threads=1, start_timeout_s=60)
    t, out = _start_in_thread(pb)
    try:
        assert wait_for(lambda: generation_children(os.getpid()), 30, poll=0.005)
        os.kill(generation_children(os.getpid())[0], signal.SIGKILL)
        t.join(30)
        assert not t.is_alive(), "the start blocked on a dead child"
        assert "died while it started (exit code -9)" in out["error"]
        assert list(tmp_path.glob("worldsim-worker-*")) == []  # the start data does not outlive the start
    finally:
        pb.close()


def test_a_child_stopped_while_it_starts_is_killed_after_start_timeout(backend):
    pb = ProcessBackend(backend.fresh(), threads=1, start_timeout_s=1.5)
    t, out = _start_in_thread(pb)
    try:
        assert wait_for(lambda: generation_children(os.getpid()), 30, poll=0.005)
        pid = generation_children(os.getpid())[0]
        os.kill(pid, signal.SIGSTOP)
        t.join(30)
        assert not t.is_alive()
        assert "did not start within 1.5 s (start_timeout_s)" in out["error"]
        assert pb._proc.exitcode == -signal.SIGKILL and pid not in generation_children(os.getpid())
    finally:
        pb.close()


class _GatedStart:
    """A backend whose start blocks until ``gate`` opens (a worker that hangs while it starts)."""

    kind = "model"
    settings: dict = {}

    def __init__(self, gate: threading.Event):
        self.gate = gate

    def start_worker(self):
        self.gate.wait(60)

    def fresh(self):
        opened = threading.Event()
        opened.set()
        return _GatedStart(opened)

    def reset(self, seed=None):
        return np.zeros((1, 4, 4, 3), np.uint8), np.zeros(0, np.int64)

    def step(self, action):
        return np.zeros((1, 4, 4, 3), np.uint8), {}


def test_session_counts_a_worker_not_started_in_time_as_stalled():
    gate = threading.Event()
    s = Session(_GatedStart(gate), SessionConfig(fps=0, start_timeout_s=5))
    now = [0]
    s.clock = lambda: now[0]
    s.start()
    try:
        h = s.health()
        assert h.state == "starting" and h.phase == "start" and not h.faulted
        now[0] += int(5.5e9)
        h = s.health()
        assert h.state == "stalled" and h.phase == "start" and "not started in 5.5 s" in h.error
        s.restart()
        assert wait_for(lambda: (c := s.poll()) is not None and c.kind == "gen", 10)
        assert s.health().state == "ok" and s.restarts == 1 and s.abandoned == 1  # a thread cannot be killed
    finally:
        gate.set()
        s.stop()


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "soon"])
def test_start_timeout_must_be_a_positive_number_of_seconds(backend, value):
    with pytest.raises(ConfigError, match=r"start_timeout_s must be a number of seconds > 0"):
        ProcessBackend(backend, threads=1, start_timeout_s=value)
    with pytest.raises(ConfigError, match=r"start_timeout_s must be a number of seconds > 0"):
        Session(backend, SessionConfig(start_timeout_s=value))
