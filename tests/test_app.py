"""The player, headless, driven by real pygame key events (pygame.event.post) with a tiny random model:
the keymap, the actions that reach the engine (held keys, diagonals, sub-frame taps), latency
records, the play keys, and the watchdog replacing a worker that raised, died or hung while the
loop keeps presenting frames."""

import math
import os
import threading
import time

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.app.keymap import Keymap, parse_meaning  # noqa: E402
from worldsim.app.latency import LatencyMeter, format_summary  # noqa: E402
from worldsim.app.player import PlayConfig  # noqa: E402
from worldsim.app.synthetic import build_player, post_key, run_headless  # noqa: E402
from worldsim.runtime import load_playable  # noqa: E402
from worldsim.runtime.testing import ALE_ACTIONS, SpyBackend, tiny_model_config, write_random_checkpoint  # noqa: E402

A = {name: i for i, name in enumerate(ALE_ACTIONS)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as play.py on 2 cores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # 18 ALE actions (diagonals, fire combos) on a tiny network
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ale.safetensors",
                                   model_config=tiny_model_config(18))


@pytest.fixture
def spy(ckpt):
    return SpyBackend(load_playable(ckpt, dtype="fp32").backend)


class Script:
    """A tick hook running ``(condition(player), action(player))`` steps in order, then quitting."""

    def __init__(self, steps, timeout=20.0):
        self.steps, self.i, self.timeout = list(steps), 0, timeout
        self.t0 = time.monotonic()
        self.timed_out = False

    def __call__(self, player, now):
        if time.monotonic() - self.t0 > self.timeout:
            self.timed_out = True
            player.request_quit("script timeout")
        elif self.i >= len(self.steps):
            player.request_quit("script done")
        else:
            cond, act = self.steps[self.i]
            if cond(player):
                act(player)
                self.i += 1


def run(player, script):
    player.tick_hook = script
    pygame.event.clear()
    summary = player.run()
    assert not script.timed_out, f"script stuck at step {script.i}"
    return summary


def saw(spy, name, since=lambda: 0):
    return lambda p: A[name] in spy.log["actions"][since():]


def changes(actions):
    return [a for i, a in enumerate(actions) if i == 0 or a != actions[i - 1]]


# -- keymap ---------------------------------------------------------------------------------------
def test_keymap_from_action_meanings():
    assert parse_meaning("UPRIGHTFIRE") == {"UP", "RIGHT", "FIRE"} and parse_meaning("NOOP") == set()
    assert parse_meaning("RESET") is None
    km = Keymap(ALE_ACTIONS)
    assert km.action_for(["UP", "RIGHT"]) == A["UPRIGHT"]
    assert km.action_for(["DOWN", "LEFT", "FIRE"]) == A["DOWNLEFTFIRE"]
    assert km.action_for(["LEFT", "RIGHT"]) == A["RIGHT"]  # opposites: the one pressed last
    assert km.action_for([]) == A["NOOP"]
    breakout = Keymap(["NOOP", "FIRE", "RIGHT", "LEFT"])
    assert breakout.action_for(["UP", "RIGHT"]) == 2  # no UPRIGHT: keep what the game has
    assert breakout.action_for(["UP"]) == 0
    assert breakout.action_for(["RIGHT", "FIRE"]) == 1  # no RIGHTFIRE: the most recent press wins


# -- actions reach the engine ---------------------------------------------------------------------
def test_key_events_reach_engine_including_sub_frame_tap(spy):
    p = build_player(spy, PlayConfig(start_screen=False, speed=4))
    mark = {"i": 0}

    def since():
        return mark["i"]

    def do(*events):
        def act(player):
            mark["i"] = len(spy.log["actions"])
            for kind, key in events:
                post_key(kind, key)
        return act

    K = pygame
    script = Script([
        (lambda p: p.frames_presented >= 2, do(("down", K.K_RIGHT))),
        (saw(spy, "RIGHT", since), do(("down", K.K_UP))),
        (saw(spy, "UPRIGHT", since), do(("up", K.K_RIGHT))),
        (saw(spy, "UP", since), do(("down", K.K_a), ("down", K.K_s))),  # WASD; DOWN after UP wins
        (saw(spy, "DOWNLEFT", since), do(("up", K.K_UP), ("up", K.K_s), ("up", K.K_a))),
        (saw(spy, "NOOP", since), do(("down", K.K_SPACE), ("up", K.K_SPACE))),  # a tap within one loop turn
        (saw(spy, "FIRE", since), lambda p: None),
        (saw(spy, "NOOP", since), lambda p: None),
        # the engine has taken the last input; its record comes when its first frame is flipped (a loaded
        # machine can take a few frames): wait for it, or time out and fail if it never comes
        (lambda p: len(p.meter.records) >= 10, lambda p: None),
    ])
    summary = run(p, script)
    seq = changes(spy.log["actions"])
    want = [A[n] for n in ("RIGHT", "UPRIGHT", "UP", "DOWNLEFT", "NOOP", "FIRE", "NOOP")]
    it = iter(seq)
    assert all(w in it for w in want), (seq, want)  # in this order
    # Latency: every event posted produced a record once its first frame was flipped.
    recs = list(p.meter.records)
    assert summary["inputs"] == len(recs) == 10
    for total, wait, gen, present in recs:
        assert wait >= 0 and gen > 0 and present >= 0
        assert math.isclose(total, wait + gen + present, abs_tol=1e-6)
        assert total < 2000
    assert summary["latency_ms"]["p50"] > 0 and summary["fps"] > 0


def test_synthetic_input_latency_summary(spy):
    s = run_headless(spy, seconds=1.5, warmup_s=0.3, rate=20, seed=1)
    assert s["inputs"] > 0 and s["frames"] > 0  # how many fit in 1.5 s depends on the machine's load
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 2000
    b = s["breakdown_ms"]
    assert b["generation"]["p50"] > 0 and b["presentation"]["p50"] >= 0
    assert s["frame_time_ms"]["p50"] > 0 and s["jitter_ms"] >= 0
    # Per chunk: the engine's own time lies inside each chunk's generation window, so its p50 cannot exceed it.
    ch = s["chunk_ms"]
    assert 0 < ch["model"]["p50"] <= ch["generation"]["p50"] < 2000
    assert "the model" in format_summary(s)


def test_latency_meter_chunk_breakdown():
    m = LatencyMeter()
    for gen, model in ((10.0, 8.0), (12.0, 9.5), (30.0, 27.0)):
        m.chunk(0, int(gen * 1e6), model)
    s = m.summary()
    assert s["chunk_ms"]["generation"]["p50"] == 12.0 and s["chunk_ms"]["model"]["p50"] == 9.5
    assert "generation per chunk p50 12.0 ms (the model 9.5, transfer 2.5)" in format_summary(s)
    real = LatencyMeter()  # the real emulator reports no model time: the line leaves it out
    real.chunk(0, int(5e6))
    assert math.isnan(real.summary()["chunk_ms"]["model"]["p50"])
    assert "the model" not in format_summary(real.summary())
    assert "generation per chunk" not in format_summary(LatencyMeter().summary())


GRACE = 0.3


def test_play_keys(spy, tmp_path):
    p = build_player(spy, PlayConfig(start_screen=True, speed=4, screenshot_dir=str(tmp_path / "shots")))
    K = pygame
    state = {}

    def press(key):
        return lambda player: (post_key("down", key), post_key("up", key))

    def note_frames(player):
        state["frames"] = player.frames_presented
        state["t"] = time.monotonic()

    def idle(p):  # paused, and what was in flight has been shown: no generation, nothing queued or due
        return p.session.paused and p.session.health().busy_s == 0 and not p.session.wait(0) and not p.schedule

    # GRACE: how long the player is watched for frames it must NOT produce (behind the start screen,
    # while paused); a faulty one produces dozens in that time, a loaded machine can only hide a fault.
    script = Script([
        (lambda p: time.monotonic() - script.t0 > GRACE, lambda p: state.update(start_frames=p.frames_presented)),
        (lambda p: True, press(K.K_x)),  # any key leaves the start screen
        (lambda p: p.state == "play" and p.frames_presented > 3, press(K.K_4)),
        (lambda p: p.session.settings["steps"] == 4, press(K.K_c)),
        # wait for a chunk-wise frame before resetting: on a loaded machine the switch alone can come first
        (lambda p: p.session.settings["chunk"] == 3 and any(f.shape[0] == 3 for f in list(spy.log["frames"])),
         press(K.K_r)),
        (lambda p: spy.log["resets"] >= 2, press(K.K_h)),
        (lambda p: not p.hud_on, press(K.K_F12)),
        (lambda p: list((tmp_path / "shots").glob("*.png")), press(K.K_p)),
        (idle, note_frames),
        (lambda p: time.monotonic() - state["t"] > GRACE, lambda p: state.update(paused_frames=p.frames_presented)),
        (lambda p: True, press(K.K_ESCAPE)),
    ])
    p.tick_hook = script
    pygame.event.clear()
    p.run()
    assert not script.timed_out, f"script stuck at step {script.i}"
    assert state["start_frames"] == 0  # nothing generated behind the start screen
    assert p.quit_reason == "quit key"
    assert {"steps": 4} in spy.log["configures"] and {"chunk": 3} in spy.log["configures"]
    assert any(f.shape[0] == 3 for f in spy.log["frames"])  # chunk-wise frames were generated
    assert state["paused_frames"] - state["frames"] <= 3  # paused: at most one chunk that was just starting


def test_model_slower_than_display_is_said(spy):
    p = build_player(spy, PlayConfig(start_screen=False, speed=400))
    script = Script([(lambda p: p.session.steps > 15, lambda p: None)])
    run(p, script)
    msg = p.model_slow()
    assert msg and "slower" in msg
    assert p.frames_presented > 10  # and the loop kept presenting


# -- the watchdog -----------------------------------------------------------------------------------
class Faulty:
    def __init__(self, kind, at=5, times=1):
        self.kind, self.at, self.times = kind, at, times
        self.fired = 0
        self.release = threading.Event()

    def __call__(self, step):
        if self.fired >= self.times or step < self.at:
            return
        self.fired += 1
        if self.kind == "raise":
            raise RuntimeError("injected fault")
        if self.kind == "die":
            raise SystemExit
        self.release.wait(10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the 'die' case
@pytest.mark.parametrize("kind,state", [("raise", "raised"), ("die", "died"), ("hang", "stalled")])
def test_worker_fault_is_replaced_while_loop_keeps_presenting(spy, manual_clock, kind, state):
    # The watchdog runs on a manual clock: the hang counts as a stall when the test moves the clock past
    # the limit, after the display has been seen flipping through it; a slow context prefill never does.
    p = build_player(spy, PlayConfig(start_screen=False, speed=4, stall_timeout_s=2.0, refresh_hz=30))
    p.session.clock = manual_clock
    faulty = Faulty(kind)
    p.session.fault_hook = faulty
    logs = []
    p.log = logs.append
    seen = {}

    def mark(p):
        seen["flips"], seen["frames"] = p.screen.flips, p.frames_presented

    script = Script([
        (lambda p: faulty.fired, mark),
        # a hung worker: the display must go on flipping (else the script times out) before the stall
        (lambda p: kind != "hang" or p.screen.flips >= seen["flips"] + 5,
         lambda p: kind == "hang" and manual_clock.advance(2.1)),
        (lambda p: p.session.restarts >= 1, lambda p: seen.update(flips_at_restart=p.screen.flips,
                                                                   frames_at_restart=p.frames_presented)),
        (lambda p: p.frames_presented >= seen["frames_at_restart"] + 10, lambda p: None),
    ])
    try:
        run(p, script)
    finally:
        faulty.release.set()
    assert [r["kind"] for r in logs if r["event"] == "fault"] == [state]
    assert p.session.restarts == 1 and p.faults == 1
    if kind == "hang":  # those flips were the display's own refreshes: no new frame came while it hung
        assert seen["frames_at_restart"] - seen["frames"] <= 2
    assert p.frames_presented >= seen["frames_at_restart"] + 10  # play resumed on a fresh context


def test_repeated_faults_back_off_and_show_restarting(spy):
    p = build_player(spy, PlayConfig(start_screen=False, speed=4, backoff_initial_s=0.2, backoff_max_s=0.4))
    p.session.fault_hook = Faulty("raise", at=0, times=10**9)  # never recovers
    logs, panels = [], []
    p.log = logs.append
    seen = {}
    script = Script([(lambda p: (panels.append(p.overlay(time.perf_counter_ns()).get("panel")) or
                                 len([r for r in logs if r["event"] == "fault"]) >= 4),
                      lambda p: seen.update(flips=p.screen.flips)),
                     # the restarting screen keeps being presented (else the script times out)
                     (lambda p: p.screen.flips >= seen["flips"] + 10, lambda p: None)])
    run(p, script)
    backoffs = [r["backoff_s"] for r in logs if r["event"] == "fault"]
    assert backoffs[:4] == [0.0, 0.2, 0.4, 0.4]
    assert any(panel and "restarting" in " ".join(panel[1]) for panel in panels)


def test_play_window_and_sink_override_the_checkpoint(ckpt):
    """play.py window=/sink= reach the engine (0 / -1 keep the checkpoint's); a negative window is refused."""
    import dataclasses

    from worldsim.app.cli import build_model_session
    from worldsim.errors import WorldsimError

    base = PlayConfig(checkpoint=str(ckpt), dtype="fp32")
    cfg0 = load_playable(ckpt, dtype="fp32").backend.cfg
    backend = build_model_session(base)[0]
    assert (backend.cfg.window, backend.cfg.sink) == (cfg0.window, cfg0.sink)
    backend = build_model_session(dataclasses.replace(base, window=cfg0.window + 3, sink=0))[0]
    assert (backend.cfg.window, backend.cfg.sink) == (cfg0.window + 3, 0)
    with pytest.raises(WorldsimError, match="window"):
        build_model_session(dataclasses.replace(base, window=-2))


class ChunkFeed:
    """A stand-in session for ``Player.pull``: hands out the chunks put in ``queue``."""

    def __init__(self):
        self.queue = []

    def poll(self):
        return self.queue.pop(0) if self.queue else None


def test_chunk_schedule_never_falls_more_than_an_interval_behind(spy):
    """Chunk-wise frames are spread over the chunk period; jittery arrivals must not pile up a backlog."""
    import numpy as np

    from worldsim.app.player import NS
    from worldsim.runtime.session import Chunk

    player = build_player(spy, PlayConfig(start_screen=False, speed=4))
    feed = ChunkFeed()
    player.session = feed
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    now = 0
    rng = np.random.default_rng(0)
    for i in range(200):  # chunks of 3 every 50-90 ms, at random
        now += int(rng.uniform(0.05, 0.09) * NS)
        feed.queue.append(Chunk(frames, "gen", 0, [], now, now, i, 1, {}))
        while player.schedule and player.schedule[0][0] <= now:  # the display presents what is due
            player.schedule.popleft()
        player.pull(now)
        interval = max(NS / 60, player.arrival_ema_ns)
        lag = player.schedule[-1][0] - now  # when the newest frame will show, from now
        assert lag <= 3 * interval + 1, f"chunk {i}: the last frame is due {lag / 1e6:.0f} ms from now"


@pytest.mark.parametrize("window", [(640, 640), (800, 600)])
def test_screen_shows_the_frame_scaled_crisply(window):
    """The frame lands in the window pixel for pixel (nearest neighbour, whole-pixel scale, aspect
    kept), the letterbox bars are black, and a second frame fully replaces the first."""
    from worldsim.app.display import Screen, init_pygame

    init_pygame(headless=True)
    screen = Screen((64, 64), scale=10).open()
    screen.resized(window)
    rng = np.random.default_rng(0)
    for _ in range(2):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        screen.draw(frame)
        x, y, w, h = screen.frame_rect(64, 64)
        s = w // 64
        assert (w, h) == (64 * s, 64 * s)
        shown = pygame.surfarray.array3d(screen.surface).transpose(1, 0, 2)  # (H, W, 3)
        np.testing.assert_array_equal(shown[y:y + h, x:x + w], frame.repeat(s, 0).repeat(s, 1))
        assert not shown[:, :x].any() and not shown[:, x + w:].any()
        assert not shown[:y].any() and not shown[y + h:].any()
    screen.close()


def test_hud_figures_refresh_a_few_times_a_second(spy):
    """The HUD's FPS/latency line is recomputed at most HUD_STATS_HZ times a second, the action line live."""
    from worldsim.app.player import HUD_STATS_HZ, NS

    p = build_player(spy, PlayConfig(start_screen=False, speed=4))
    calls = []
    real = p.meter.recent_percentiles
    p.meter.recent_percentiles = lambda: (calls.append(1), real())[1]
    t0 = 10 * NS
    first = p.hud_stats_line(t0)
    p.hud_stats_line(t0 + int(0.5 * NS / HUD_STATS_HZ))
    assert len(calls) == 1
    p.meter.frame(t0)
    p.meter.frame(t0 + NS // 60)
    later = p.hud_stats_line(t0 + int(1.01 * NS / HUD_STATS_HZ))
    assert len(calls) == 2 and later != first
