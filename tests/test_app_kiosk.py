"""Kiosk mode, headless with real key events: the attract loop plays by itself, Esc and window
close do nothing, a key press starts a visitor session on a fresh context that ends on idle or
max length with one JSON line, the operator chord and SIGTERM leave cleanly, and a hung worker is
replaced while the booth keeps presenting frames."""

import io
import json
import os
import signal
import threading
import time

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.app.kiosk import KioskConfig  # noqa: E402
from worldsim.app.player import PlayConfig  # noqa: E402
from worldsim.app.recorder import Recorder  # noqa: E402
from worldsim.app.synthetic import build_player, post_key  # noqa: E402
from worldsim.data.episode import list_episodes, read_episode  # noqa: E402
from worldsim.data.validate import validate  # noqa: E402
from worldsim.runtime import load_playable  # noqa: E402
from worldsim.runtime.testing import SpyBackend, write_random_checkpoint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as play.py on 2 cores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", context_frames=4)


@pytest.fixture
def spy(ckpt):
    return SpyBackend(load_playable(ckpt, dtype="fp32").backend)


def kiosk(spy, recorder=None, **kw):
    play = PlayConfig(fullscreen=True, hud=False, start_screen=False, speed=4, max_seconds=20,
                      stall_timeout_s=kw.pop("stall_timeout_s", 2.0))
    cfg = KioskConfig(play=play, **{"attract_policy": "scripted", **kw})
    log = io.StringIO()
    k = build_player(spy, kiosk=cfg, log_stream=log, env_id="worldsim/Tiny-v0", recorder=recorder)
    return k, log


def lines(log):
    return [json.loads(x) for x in log.getvalue().splitlines()]


class Steps:
    def __init__(self, steps, timeout=15.0):
        self.steps, self.i, self.t0, self.timeout = list(steps), 0, time.monotonic(), timeout

    def __call__(self, k, now):
        if time.monotonic() - self.t0 > self.timeout:
            k.request_quit("test timeout")
        elif self.i < len(self.steps) and self.steps[self.i][0](k):
            self.steps[self.i][1](k)
            self.i += 1


def test_attract_ignores_quit_keys_and_obeys_chord(spy):
    k, log = kiosk(spy, operator_chord=["ctrl", "alt", "q"], idle_timeout_s=30)
    K = pygame
    seen = {}

    def post_quit_attempts(k):
        post_key("down", K.K_ESCAPE)  # starts a visitor session, nothing else
        post_key("up", K.K_ESCAPE)
        pygame.event.post(pygame.event.Event(pygame.QUIT))
        post_key("down", K.K_q)
        post_key("up", K.K_q)
        post_key("down", K.K_F4)  # Alt+F4 arrives as QUIT, above; the key alone does nothing either
        post_key("up", K.K_F4)
        seen["after_attempts"] = k.frames_presented

    def chord(k):
        seen["frames"] = k.frames_presented
        for key in (K.K_LCTRL, K.K_RALT, K.K_q):
            post_key("down", key)

    k.tick_hook = Steps([
        (lambda k: k.frames_presented > 20, lambda k: seen.update(attract_actions=set(spy.log["actions"]))),
        (lambda k: True, post_quit_attempts),
        # still presenting 30 frames after Esc, Q and window close (it would have left at once)
        (lambda k: k.frames_presented >= seen["after_attempts"] + 30, chord),
    ])
    pygame.event.clear()
    k.run()
    assert k.quit_reason == "operator chord" and k.exit_code == 0
    assert len(seen["attract_actions"]) > 1  # the attract policy drives the model by itself
    recs = lines(log)
    assert recs[0]["event"] == "kiosk_start" and recs[-1]["event"] == "kiosk_stop"
    sessions = [r for r in recs if r["event"] == "session"]
    assert len(sessions) == 1 and sessions[0]["end_reason"] == "shutdown"
    assert sessions[0]["frames"] >= 30 and sessions[0]["duration_s"] > 0


def test_visitor_session_fresh_context_idle_and_max_length(spy, tmp_path):
    recorder = Recorder(tmp_path / "rec", {"env_id": "worldsim/Tiny-v0", "action_meanings": spy.action_meanings,
                                           "source": "kiosk", "policy": "human"})
    k, log = kiosk(spy, recorder=recorder, idle_timeout_s=0.4, max_session_s=2.0)
    K = pygame
    seen = {}

    def start(k):
        seen["resets"] = spy.log["resets"]
        post_key("down", K.K_SPACE)
        post_key("up", K.K_SPACE)

    def keep_playing(k):
        # A key release every loop turn, read at the next one before the idle check: never idle however
        # long a turn takes on a busy machine, so the 2 s limit ends it (a release in attract starts
        # nothing, a press would start a new visitor). Presses until one has been measured to a frame (a
        # busy machine may still be generating the visitor's fresh context during the first ones).
        if k.visitor is not None and (k.visitor["inputs"] < 6 or not k.meter.records):
            post_key("down", K.K_LEFT)
        post_key("up", K.K_LEFT)
        return k.state == "attract"

    k.tick_hook = Steps([
        (lambda k: k.frames_presented > 5, start),
        (lambda k: k.state == "visitor" and spy.log["resets"] > seen["resets"], lambda k: seen.update(fresh=True)),
        (lambda k: k.state == "attract", start),  # idle 0.4 s: back to attract; start a second visitor
        (lambda k: k.state == "visitor", lambda k: None),
        (keep_playing, lambda k: k.request_quit("done")),
    ])
    pygame.event.clear()
    k.run()
    assert seen["fresh"]
    sessions = [r for r in lines(log) if r["event"] == "session"]
    assert [s["end_reason"] for s in sessions] == ["idle", "max_session"]
    # Each ends on its own limit, not sooner (the upper bounds only catch a limit that never fires).
    assert 0.4 <= sessions[0]["duration_s"] < 0.4 + 10 and 2.0 <= sessions[1]["duration_s"] < 2.0 + 10
    assert sessions[1]["inputs"] >= 4 and sessions[1]["latency_p50_ms"] > 0
    for key in ("start", "end", "frames", "latency_p95_ms"):
        assert key in sessions[0]
    # one episode per visitor (the attract loop's self-play is not recorded), valid data
    assert validate(tmp_path / "rec") == [] and len(list_episodes(tmp_path / "rec")) == 2
    first = read_episode(list_episodes(tmp_path / "rec")[0])
    assert abs(len(first) - 4 - sessions[0]["frames"]) <= 2 and spy.action_meanings.index("FIRE") in first.actions


def test_sigterm_exits_cleanly(spy):
    k, log = kiosk(spy)
    k.tick_hook = Steps([(lambda k: k.frames_presented > 5, lambda k: os.kill(os.getpid(), signal.SIGTERM))])
    before = signal.getsignal(signal.SIGTERM)
    pygame.event.clear()
    k.run()
    assert k.quit_reason == "SIGTERM" and k.exit_code == 0
    assert lines(log)[-1]["event"] == "kiosk_stop"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_hung_worker_replaced_while_booth_keeps_presenting(spy, manual_clock):
    # The watchdog runs on a manual clock: the generation stalls when the test moves the clock past the
    # limit, after the screen has been seen refreshing through the hang, never because the machine is slow.
    k, log = kiosk(spy, stall_timeout_s=2.0)
    k.session.clock = manual_clock
    release = threading.Event()
    state = {"fired": False}

    def hang_once(step):
        if step >= 10 and not state["fired"]:
            state["fired"] = True
            release.wait(30)

    k.session.fault_hook = hang_once
    seen = {}
    k.tick_hook = Steps([
        (lambda k: state["fired"], lambda k: seen.update(flips=k.screen.flips, frames_at_hang=k.frames_presented)),
        (lambda k: k.screen.flips >= seen["flips"] + 4, lambda k: manual_clock.advance(2.1)),
        (lambda k: k.session.restarts == 1, lambda k: seen.update(flips2=k.screen.flips, frames=k.frames_presented)),
        (lambda k: k.frames_presented > seen["frames"] + 10, lambda k: k.request_quit("done")),
    ], timeout=60)
    pygame.event.clear()
    try:
        k.run()
    finally:
        release.set()
    assert k.quit_reason == "done"
    faults = [r for r in lines(log) if r["event"] == "fault"]
    assert len(faults) == 1 and faults[0]["kind"] == "stalled" and "traceback" not in faults[0]
    assert seen["flips2"] - seen["flips"] >= 4  # the screen kept refreshing through the stall
    assert seen["frames"] - seen["frames_at_hang"] <= 2  # while no new frame came (at most those queued)


@pytest.mark.slow
def test_kiosk_memory_stays_flat(spy):
    """Visitors come and go for a while; Python allocations after warm-up do not grow."""
    import tracemalloc

    from worldsim.app.synthetic import InputInjector

    k, log = kiosk(spy, idle_timeout_s=0.5, max_session_s=2.0, attract_reset_s=1.0)
    k.cfg.max_seconds = 0  # the hook ends the run (a 120 s deadline fails it)
    k.meter.keep = 200  # small bounds so that a leak past them would show within seconds
    k.meter.reset()
    snaps = {}
    inj = {"x": None, "next": time.monotonic() + 0.5}
    t0 = time.monotonic()

    def hook(k, now):
        t = time.monotonic()
        if t >= inj["next"]:  # bursts of key presses, then silence: sessions start and time out
            if inj["x"] is None:
                inj["x"] = InputInjector([pygame.K_LEFT, pygame.K_RIGHT, pygame.K_SPACE], rate=20, seed=int(t * 1e3))
                inj["x"].start()
                inj["next"] = t + 1.0
            else:
                inj["x"].stop()
                inj["x"], inj["next"] = None, t + 0.8
        if "a" not in snaps and t - t0 > 4:
            snaps["a"] = tracemalloc.take_snapshot()
        if t - t0 > 14 and k.visitors >= 5:  # ten seconds after warm-up, and four visitor sessions ended
            snaps["b"] = tracemalloc.take_snapshot()
            k.request_quit("done")
        elif t - t0 > 120:
            k.request_quit("test timeout")

    tracemalloc.start()
    try:
        k.tick_hook = hook
        pygame.event.clear()
        k.run()
    finally:
        if inj["x"] is not None:
            inj["x"].stop()
        tracemalloc.stop()
    assert k.quit_reason == "done", f"{k.visitors} visitors in 120 s"
    growth = sum(s.size_diff for s in snaps["b"].compare_to(snaps["a"], "filename"))
    sessions = [r for r in lines(log) if r["event"] == "session"]
    assert len(sessions) >= 4
    assert growth < 512 * 1024, f"{growth / 1e6:.2f} MB more after 10 s"
