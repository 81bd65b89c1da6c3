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


@pytest.fixture(scope="module", autouse=True)
def one_generation_thread():
    """As play.py does on 2 cores: one torch thread, so a busy machine does not stall every op (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    assert backend.settings == {"chunk": 3, "steps": 4, "sampler": "renoise", "compiled": False}
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
        ctx = drain(s, "context")[-1]
        assert ctx.kind == "context" and ctx.frames.shape[0] == 4
        got = []
        for a in (1, 2, 3, 4, 5, 0):
            s.slot.press(a, time.perf_counter_ns())
            # wait for the chunk generated under this press: it carries the stamp
            c = drain(s, timeout=3.0, until=lambda c: c.kind == "gen" and c.stamps)[-1]
            assert c.stamps and c.t_take_ns <= c.t_done_ns
            got.append(c.action)
        assert got == [1, 2, 3, 4, 5, 0]
        # the engine saw them in the same order (between them: repeats of the held action)
        seen = [a for i, a in enumerate(spy.log["actions"]) if i == 0 or a != spy.log["actions"][i - 1]]
        assert [a for a in seen if a in (1, 2, 3, 4, 5)] == [1, 2, 3, 4, 5]
    finally:
        s.stop()


def test_session_back_pressure_and_pause(backend):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0, max_ahead=1)).start()
    try:
        assert wait_for(lambda: s.health().state != "starting" or len(spy.log["actions"]) > 0, 3)
        time.sleep(0.2)  # nobody polls: the worker must not run ahead of the display
        assert len(spy.log["actions"]) <= 1
        s.pause(True)
        drain(s, timeout=0.2)
        n = len(spy.log["actions"])
        time.sleep(0.2)
        assert len(spy.log["actions"]) <= n + 1  # at most the step that was in flight
        s.pause(False)
        assert len(drain(s, timeout=0.3)) > 3
    finally:
        s.stop()


def test_session_reset_drops_old_context_and_configure_applies(backend):
    s = Session(SpyBackend(backend), SessionConfig(fps=0)).start()
    try:
        drain(s, "context")
        drain(s, timeout=0.1)
        s.reset()
        chunks = drain(s, "context")
        assert chunks[-1].kind == "context"
        first_ctx = chunks[-1].context_id
        s.configure(chunk=3, steps=1)
        assert wait_for(lambda: s.settings.get("chunk") == 3)
        c = [c for c in drain(s, timeout=0.3) if c.kind == "gen"][-1]
        assert c.frames.shape[0] == 3 and c.settings["steps"] == 1 and c.context_id == first_ctx
    finally:
        s.stop()


class Faulty:
    """fault_hook that misbehaves once at ``at`` steps: 'raise', 'die' (thread exits silently) or 'hang'."""

    def __init__(self, kind, at=3):
        self.kind, self.at, self.fired = kind, at, False
        self.release = threading.Event()

    def __call__(self, step):
        if self.fired or step < self.at:
            return
        self.fired = True
        if self.kind == "raise":
            raise RuntimeError("boom")
        if self.kind == "die":
            raise SystemExit  # ends the thread without an exception report
        self.release.wait(10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the 'die' case
@pytest.mark.parametrize("kind,state", [("raise", "raised"), ("die", "died"), ("hang", "stalled")])
def test_session_fault_is_reported_and_restart_resumes(backend, kind, state):
    spy = SpyBackend(backend)
    s = Session(spy, SessionConfig(fps=0, stall_timeout_s=0.3))
    hook = Faulty(kind)
    s.fault_hook = hook
    s.start()
    try:
        assert wait_for(lambda: s.poll() is None and s.health().faulted, 5), s.health()  # the display polls
        h = s.health()
        assert h.state == state and h.error
        if kind == "raise":
            assert "boom" in h.error and "RuntimeError" in h.detail
        s.restart()
        assert s.restarts == 1 and s.abandoned == (1 if kind == "hang" else 0)
        chunks = drain(s, "context")
        assert chunks[-1].kind == "context"  # a fresh context
        assert len([c for c in drain(s, timeout=0.3) if c.kind == "gen"]) > 3
        assert s.health().state == "ok"
        if kind == "hang":  # the abandoned worker finishes; its frames are not handed out
            n = len(spy.log["frames"])
            hook.release.set()
            time.sleep(0.1)
            assert len(spy.log["frames"]) >= n
            assert s.health().state == "ok"
    finally:
        hook.release.set()
        s.stop()
