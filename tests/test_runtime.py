"""Runtime on CPU with a tiny random model, no pygame: the action slot (latching, stamps), the
model backend (context alignment, determinism, live switches), the session worker (actions in
order, reset, pause, back-pressure) and its fault reporting and restart."""

import threading
import time

import numpy as np
import pytest
import torch

from worldsim.errors import CheckpointError
from worldsim.runtime import ActionSlot, Session, SessionConfig, load_playable
from worldsim.runtime.testing import SpyBackend, wait_for, write_random_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as play.py on 2 cores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", context_frames=4)


@pytest.fixture
def backend(ckpt):
    return load_playable(ckpt, dtype="fp32").backend


def drain(session, kind=None, timeout=3.0, until=None):
    """Chunks handed out until ``timeout``, or up to the first of ``kind``, or the first ``until(chunk)``."""
    out, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        if session.wait(0.01):
            c = session.poll()
            out.append(c)
            if (kind is not None and c.kind == kind) or (until is not None and until(c)):
                break
    return out


def poll_all(session):
    """Every chunk waiting now (the display's poll, which never blocks)."""
    out = []
    while (c := session.poll()) is not None:
        out.append(c)
    return out


def take_until(session, until, what, timeout=30.0):
    """Chunks handed out up to and including the first ``until(chunk)``; fails naming ``what`` if none
    comes within ``timeout`` (a deadline for a stuck worker, not a speed: a loaded machine only waits longer)."""
    out = drain(session, timeout=timeout, until=until)
    assert out and until(out[-1]), f"no {what} within {timeout:g} s ({len(out)} other chunks)"
    return out


def gen_chunks(session, n, timeout=30.0, where=lambda c: True):
    """The next ``n`` generated chunks that satisfy ``where`` (the display keeps polling meanwhile)."""
    got = []
    take_until(session, lambda c: c.kind == "gen" and where(c) and got.append(c) is None and len(got) >= n,
               f"{n} generated chunks", timeout)
    return got


# -- the slot -------------------------------------------------------------------------------------
def test_slot_tap_shorter_than_a_frame_is_not_lost():
    slot = ActionSlot(default=0)
    slot.press(3, stamp_ns=100)  # key down
    slot.set(0, stamp_ns=105)  # key up before any generation took the action
    assert slot.take() == (3, [100])  # the tap reaches the next generation
    assert slot.take() == (0, [105])  # the release shows one generation later, with its own stamp
    assert slot.take() == (0, [])


def test_slot_latest_wins_and_held_state():
    slot = ActionSlot()
    slot.press(2, 1, held=2)
    slot.press(5, 2, held=5)  # a second press before a generation: the newest wins
    a, stamps = slot.take()
    assert a == 5 and stamps == [1, 2]
    assert slot.take() == (5, [])  # still held
    slot.set(0, 3)
    slot.set(4, 4)
    assert slot.take() == (4, [3, 4])
    slot.press(1, 9)
    slot.clear_stamps()
    assert slot.take() == (1, [])


# -- the backend ----------------------------------------------------------------------------------
def test_backend_context_alignment_and_determinism(ckpt, backend):
    frames, actions = backend.reset(seed=7)
    ctx = backend.context
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(actions, ctx.actions[:-1])  # the last context action is the player's
    out1 = [backend.step(a)[0] for a in (1, 2, 3)]
    b2 = load_playable(ckpt, dtype="fp32").backend
    b2.reset(seed=7)
    out2 = [b2.step(a)[0] for a in (1, 2, 3)]
    for x, y in zip(out1, out2):
        np.testing.assert_array_equal(x, y)
    b2.reset(seed=7)
    assert not np.array_equal(b2.step(5)[0], out1[0])  # the action matters


def test_backend_prefill_uses_producing_actions(backend, monkeypatch):
    seen = {}
    from worldsim.engine import Engine

    orig = Engine.prefill

    def spy(self, frames, prev_actions=None):
        seen["prev"] = prev_actions.clone()
        return orig(self, frames, prev_actions)

    monkeypatch.setattr(Engine, "prefill", spy)
    backend.reset(0)
    a = backend.context.actions
    assert seen["prev"].tolist() == [[backend.no_action, *a[:-1].tolist()]]


def test_backend_live_switch_keeps_playing(backend):
    backend.reset(0)
    for a in (1, 2, 3, 4, 5):
        backend.step(a)
    backend.configure(steps=4, chunk=3)
    assert backend.settings == {"chunk": 3, "steps": 4, "sampler": "renoise", "compiled": False, "palette": 0}
    frames, _ = backend.step(2)
    assert frames.shape == (3, 16, 16, 3)
    backend.configure(steps=1, chunk=1)
    assert backend.step(2)[0].shape == (1, 16, 16, 3)
    assert backend.settings["steps"] == 1


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_playable(tmp_path / "nope.safetensors")
    assert "\n" not in str(e.value) and "not found" in str(e.value)


def test_bf16_weights_on_cpu(ckpt):
    p = load_playable(ckpt, dtype="bf16")
    assert p.weights_dtype == torch.bfloat16 and p.backend.dtype == torch.float32
    p.backend.reset(0)
    f, _ = p.backend.step(1)
    assert f.shape == (1, 16, 16, 3)


# -- the session ----------------------------------------------------------------------------------
def test_frame_clock_does_not_drift_and_never_bursts():
    from worldsim.runtime.session import next_frame_start

    period, t = 16_666_667, 1_000_000_000
    scheduled = next_frame_start(0, t, period)  # a new context: the clock starts at the first start
    assert scheduled == t + period
    for _ in range(600):  # every wait wakes 0.3 ms late: ten seconds later the clock has not moved
        scheduled = next_frame_start(scheduled, scheduled + 300_000, period)
    assert scheduled == t + 601 * period
    late = scheduled + 5 * period  # a start five periods late (slow model): no catch-up burst
    assert next_frame_start(scheduled, late, period) == late + period


def test_session_actions_reach_engine_in_order(backend):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0)).start()
    try:
        ctx = take_until(s, lambda c: c.kind == "context", "context")[-1]
        assert ctx.frames.shape[0] == 4
        got = []
        for a in (1, 2, 3, 4, 5, 0):
            s.slot.press(a, time.perf_counter_ns())
            # wait for the chunk generated under this press: it carries the stamp
            c = take_until(s, lambda c: c.kind == "gen" and c.stamps, f"chunk for action {a}")[-1]
            assert c.t_take_ns <= c.t_done_ns
            got.append(c.action)
        assert got == [1, 2, 3, 4, 5, 0]
        # the engine saw them in the same order (between them: repeats of the held action)
        seen = [a for i, a in enumerate(spy.log["actions"]) if i == 0 or a != spy.log["actions"][i - 1]]
        assert [a for a in seen if a in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 5]
    finally:
        s.stop()


# A worker that must NOT do something (run ahead, generate while paused) is given GRACE seconds in
# which a faulty one would generate dozens of chunks (a tiny model at fps=0 steps in ~1 ms); a loaded
# machine can only hide a fault this way, never fail a correct worker.
GRACE = 0.3


def test_session_back_pressure(backend):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0, max_ahead=1)).start()
    try:
        assert wait_for(lambda: s.wait(0), 30)  # the context chunk waits for the display
        assert not wait_for(lambda: len(spy.log["actions"]) > 0, GRACE)  # nobody polls: no running ahead
        for i in range(1, 6):  # each chunk the display takes makes room for one more generation
            take_until(s, lambda c: True, f"chunk {i}")
            assert wait_for(lambda: len(spy.log["actions"]) >= i, 30)
            assert not wait_for(lambda: len(spy.log["actions"]) > i, 0.05)
    finally:
        s.stop()


def test_session_pause_stops_generation_until_resumed(backend):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0, max_ahead=1)).start()
    try:
        gen_chunks(s, 3)
        s.pause(True)
        n = len(spy.log["actions"])
        during = drain(s, timeout=GRACE)  # the display keeps polling: room is not what holds the worker
        # at most the step in flight when the pause came (and the chunk already waiting)
        assert len(spy.log["actions"]) <= n + 1 and len(during) <= 2
        s.pause(False)
        gen_chunks(s, 4)  # and generation resumes
    finally:
        s.stop()


def test_session_reset_drops_old_context_and_configure_applies(backend):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0)).start()
    try:
        old = take_until(s, lambda c: c.kind == "context", "first context")[-1].context_id
        gen_chunks(s, 3)
        assert wait_for(lambda: s.wait(0), 30)  # a chunk of the old context waits for the display
        s.reset(seed=11)
        chunks = take_until(s, lambda c: c.kind == "context", "context after reset")
        assert len(chunks) == 1  # nothing of the old context is handed out after the reset
        new = chunks[0].context_id
        assert new > old and ("reset", 11) in spy.log["events"]
        s.configure(chunk=3, steps=1)
        c = gen_chunks(s, 1, where=lambda c: c.frames.shape[0] == 3)[0]
        assert c.settings["steps"] == 1 and c.settings["chunk"] == 3 and c.context_id == new
        assert s.settings["chunk"] == 3
    finally:
        s.stop()


class Faulty:
    """fault_hook that misbehaves once at ``at`` steps: 'raise', 'die' (thread exits silently) or 'hang'
    (until ``release``). ``fired`` is set once it has, from the worker thread it ran in (``thread``)."""

    def __init__(self, kind, at=3):
        self.kind, self.at = kind, at
        self.fired, self.release = threading.Event(), threading.Event()
        self.thread = None

    def __call__(self, step):
        if self.fired.is_set() or step < self.at:
            return
        self.thread = threading.current_thread()
        self.fired.set()
        if self.kind == "raise":
            raise RuntimeError("boom")
        if self.kind == "die":
            raise SystemExit  # ends the thread without an exception report
        self.release.wait(30)


class ThreadSpy(SpyBackend):
    """A SpyBackend that also logs which worker thread generated each chunk of frames."""

    def fresh(self):
        return ThreadSpy(self.inner.fresh(), self.log)

    def step(self, action):
        frames, info = super().step(action)
        self.log.setdefault("by_thread", []).append((threading.current_thread(), frames))
        return frames, info


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the 'die' case
@pytest.mark.parametrize("kind,state", [("raise", "raised"), ("die", "died"), ("hang", "stalled")])
def test_session_fault_is_reported_and_restart_resumes(backend, manual_clock, kind, state):
    spy = ThreadSpy(backend)
    # The watchdog runs on a manual clock: a generation is stalled when the test says so, never because
    # a loaded machine made the fresh worker's context prefill slow.
    s = Session(spy, SessionConfig(fps=0, stall_timeout_s=2.0))
    s.clock = manual_clock
    hook = Faulty(kind)
    s.fault_hook = hook
    s.start()
    handed_out = []
    try:
        assert wait_for(lambda: handed_out.extend(poll_all(s)) or hook.fired.is_set(), 30)
        if kind == "hang":
            assert not s.health().faulted  # busy, but not yet for longer than the limit
            manual_clock.advance(1.9)
            assert s.health().state == "ok" and s.health().busy_s == pytest.approx(1.9)
            manual_clock.advance(0.2)
        assert wait_for(lambda: handed_out.extend(poll_all(s)) or s.health().faulted, 30), s.health()
        h = s.health()
        assert h.state == state and h.error
        if kind == "raise":
            assert "boom" in h.error and "RuntimeError" in h.detail
        s.restart()
        assert s.restarts == 1 and s.abandoned == (1 if kind == "hang" else 0)
        chunks = take_until(s, lambda c: c.kind == "context", "fresh context after the restart")
        assert len(chunks) == 1  # nothing of the old worker comes first
        handed_out += chunks + gen_chunks(s, 4)  # play resumed
        assert s.health().state == "ok"
        if kind == "hang":  # the abandoned worker finishes its step; its frames are not handed out
            hook.release.set()
            hook.thread.join(30)
            assert not hook.thread.is_alive()
            abandoned = [f for t, f in spy.log["by_thread"] if t is hook.thread]
            last = abandoned[-1]  # generated after the hang, by a worker that was replaced meanwhile
            handed_out += gen_chunks(s, 2)
            assert not any(c.frames is last for c in handed_out)
            assert s.health().state == "ok"
    finally:
        hook.release.set()
        s.stop()
