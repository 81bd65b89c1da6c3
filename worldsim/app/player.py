"""The real-time player: key events -> the session's action slot; finished chunks -> the screen.

Boundary: the app layer (pygame lives here and in ``play.py`` only). The player takes the layers
below in its constructor: a ``Session`` (worker thread + action slot), a ``Keymap``, a ``Screen``.

One loop on the main thread, never waiting on the model:

    read key events (stamped with perf_counter_ns on arrival) -> ActionSlot.press/set
    supervise the worker (raised / died / stalled -> restart, with back-off)
    take finished chunks from the session; schedule their frames (a chunk of C frames is spread
        over the chunk period so motion stays even)
    present the frame that is due: draw + flip; record latency for the inputs it first shows
    otherwise redraw at ``refresh_hz`` (HUD, banners, the restarting screen) so the window stays alive
    wait for the next chunk for at most ``poll_ms`` (the input poll period)

Pacing is game time: the session starts one generation per tick, the model's frame period divided
by ``speed`` (``worldsim.gametime.Pace``, which the builder gives both the session and the player),
so the shipped Boxing, trained at frameskip 2, plays at its own 30 steps/s; the HUD says so ("Boxing,
30 steps/s, speed 1.00x").

Keys while playing: arrows/WASD + space play; R reset to a fresh context; P pause; 1/2/4 sampling
steps; C frame-wise <-> chunk-wise; H HUD; F12 (or F2) screenshot; Esc/Q quit. The kiosk
(``worldsim.app.kiosk``) subclasses this loop and changes what keys may do.
"""

from __future__ import annotations

import collections
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from worldsim.app.display import Screen
from worldsim.app.keymap import HeldKeys, Keymap, default_bindings
from worldsim.app.latency import LatencyMeter
from worldsim.gametime import Pace

NS = 1_000_000_000
HUD_STATS_HZ = 4.0  # the FPS/latency line of the HUD is recomputed this often (Player.hud_stats_line)


@dataclass
class PlayConfig:
    checkpoint: str = "assets/default.safetensors"  # the model to play
    # A game by short name (boxing, pong, breakout, mspacman: worldsim.envs.games) plays its shipped model
    # instead of ``checkpoint``; '' = the checkpoint's game. With several shipped, the start screen offers them all.
    game: str = ""
    context: str = ""  # optional plain .npz episode to start from instead of the checkpoint's context
    device: str = "auto"  # auto | cpu | cuda (worldsim.device policy)
    dtype: str = "auto"  # auto | fp32 | bf16 (auto: bf16 where the CPU has native bf16)
    # Where the model generates: 'process' (a child process; CPU only, where it is 1.4x faster and a hung
    # generation can be killed) or 'thread' (a worker thread of this process; always used on CUDA and
    # for --play-real). See worldsim/runtime/process_backend.py.
    worker: str = "process"
    threads: int = 0  # torch threads for generation (0: every core in a process worker; all but one in a thread)
    # Compiled forwards for this CPU (worldsim.engine.aot; frame-wise play ~1.5x faster): 'auto' uses them
    # if built and else builds them in the background (low priority) and switches when ready; 'cached'
    # uses them only if built ('worldsim compile'); 'off' never. On CUDA: 'auto' and 'cached' replay the
    # steady-state forwards as CUDA graphs (worldsim.engine.cuda_graphs), 'off' launches them eagerly.
    compile: str = "auto"
    steps: int = 0  # sampling steps per chunk (0: the checkpoint's recommendation); 1, 2 or 4
    chunk: int = 0  # frames per chunk (0: the checkpoint's; 1: frame-wise)
    window: int = 0  # KV cache window in frames (0: the checkpoint's); keep it near the training clips' length
    sink: int = -1  # sink frames kept at the start of the cache (-1: the checkpoint's)
    guidance: float = -1.0  # action guidance (-1: the checkpoint's; 1: off; above 1 scales what the fire button does)
    palette: bool = True  # snap drawn frames to the game's colours where the checkpoint carries them
    chunk_size: int = 3  # frames per chunk when C switches to chunk-wise during play
    # Pace of play relative to the game's own speed: the model's frame period (the game time one frame
    # spans, worldsim.gametime) / speed is the tick between generation starts. 1 = the game's own speed
    # (the shipped Boxing at frameskip 2: 30 steps/s), 0.5 slow motion, 2 fast-forward, 0 = as fast as the model runs.
    speed: float = 1.0
    seed: int = 0  # noise seed of the first context (each reset takes the next)
    scale: int = 10  # window = frame size x scale (clamped to the screen), resizable
    fullscreen: bool = False
    hud: bool = True  # show FPS / latency / settings / model at start (H toggles)
    start_screen: bool = True  # controls screen before play; any key starts
    screenshot_dir: str = "screenshots"
    record: str = ""  # directory to record episodes into ('' = off)
    stall_timeout_s: float = 2.0  # a generation longer than this is a hung worker
    start_timeout_s: float = 60.0  # a worker not started by then (a slow torch import fits) is a hung one too
    backoff_initial_s: float = 1.0  # wait before the 2nd restart in a row; doubles each time
    backoff_max_s: float = 30.0
    healthy_after_s: float = 30.0  # a worker up this long resets the back-off
    max_abandoned_workers: int = 3  # hung workers left behind before the process gives up (exit 3)
    poll_ms: float = 1.0  # input poll period while waiting for a frame (bounds the stamp error)
    refresh_hz: float = 30.0  # redraw rate when no new frame comes (HUD, banners, restarting screen)
    max_seconds: float = 0.0  # stop after this long (0: until quit); for headless runs


def settings_label(settings: dict) -> str:
    if settings.get("sampler") == "emulator":
        return "real emulator"
    c, s = settings.get("chunk", 1), settings.get("steps", 0)
    label = f"frame-wise {s}-step" if c == 1 else f"chunk-wise C={c} {s}-step"
    return label + (", compiled" if settings.get("compiled") else "")


class Player:
    mode = "play"

    def __init__(self, session, keymap: Keymap, screen: Screen, cfg: PlayConfig | None = None, *,
                 meter: LatencyMeter | None = None, recorder=None, model_label: str = "",
                 bindings: dict[int, str] | None = None, log: Callable[[dict], None] | None = None,
                 pace: Pace | None = None, arcade=None, game: str = ""):
        import pygame

        self.pg = pygame
        self.session, self.keymap, self.screen = session, keymap, screen
        self.cfg = cfg or PlayConfig()
        # The game time of a frame and the speed: the session's generation tick (built from the same
        # Pace), the HUD's pace line, the spread of a chunk's frames.
        self.pace = pace or Pace(speed=self.cfg.speed)
        self.meter = meter or LatencyMeter()
        self.recorder = recorder
        self.model_label = model_label
        self.held = HeldKeys(bindings if bindings is not None else default_bindings())
        # The games the start screen offers (worldsim.app.arcade.Arcade; None: this model only) and the
        # one playing; ``picked`` is the one the arrows point at on the start screen.
        self.arcade, self.game = arcade, game
        self.picked = game
        self.loading = ""  # the game being loaded after a switch (its title), for the "One moment" screen
        self.log = log or self._log_stderr
        self.tick_hook: Callable[["Player", int], None] | None = None  # tests/benchmarks: runs every loop turn
        self.hud_on = self.cfg.hud
        self._hud_stats: tuple[int, str] | None = None  # (when, the FPS/latency line): see hud_stats_line
        self.state = "play"
        self.quit_requested = False
        self.quit_reason = ""
        self.exit_code = 0
        self.schedule: collections.deque = collections.deque()  # (due_ns, frame, chunk, index)
        self.current = None  # (frame, chunk) on screen
        self.messages: collections.deque = collections.deque(maxlen=4)  # (text, until_ns)
        self.frames_presented = 0
        self.last_flip_ns = 0
        self.last_arrival_ns: int | None = None
        self.arrival_ema_ns = 0.0  # per-frame arrival interval
        self.restart_at_ns: int | None = None
        self.restarting = False
        self.worker_started_ns = 0
        self.consecutive_faults = 0
        self.faults = 0
        self.started_ns = 0
        self._signals: dict[int, Any] = {}

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        pg = self.pg
        if self.screen.surface is None:
            self.screen.open()
        if self.cfg.start_screen and self.mode == "play":
            self.state = "start"
            self.session.pause(True)
        self._install_signals()
        self.started_ns = self.worker_started_ns = time.perf_counter_ns()
        self.session.start()
        self.on_start()
        poll_s = self.cfg.poll_ms / 1e3
        try:
            while not self.quit_requested:
                events = pg.event.get()
                now = time.perf_counter_ns()
                for ev in events:
                    self.on_event(ev, now)
                if self.tick_hook is not None:
                    self.tick_hook(self, now)
                self.supervise(now)
                self.tick(now)
                self.pull(now)
                if not self.present_due(time.perf_counter_ns()):
                    self.refresh_if_due(time.perf_counter_ns())
                if self.cfg.max_seconds and now - self.started_ns >= self.cfg.max_seconds * NS:
                    break
                timeout = poll_s
                if self.schedule:
                    timeout = min(timeout, max(0.0, (self.schedule[0][0] - time.perf_counter_ns()) / NS))
                if timeout > 0:
                    self.session.wait(timeout)
        finally:
            self.on_stop()
            self.session.stop()
            if self.recorder is not None:
                self.recorder.close()
            self._restore_signals()
        return self.summary()

    def summary(self) -> dict:
        s = self.meter.summary()
        s.update(settings=self.session.settings, model=self.model_label, faults=self.faults, pace=self.pace.to_meta(),
                 tick_ms=self.pace.tick_ms,
                 restarts=self.session.restarts, presented=self.frames_presented, flips=self.screen.flips)
        return s

    # -- hooks for subclasses --------------------------------------------------------------------
    def on_start(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def tick(self, now: int) -> None:
        pass

    def on_presented(self, frame: np.ndarray, chunk, index: int, t: int) -> None:
        pass

    def recording(self) -> bool:
        """Whether presented frames go to the recorder now."""
        return True

    # -- input -----------------------------------------------------------------------------------
    def on_event(self, ev, now: int) -> None:
        pg = self.pg
        # Synthetic events (benchmarks, tests) carry the moment they were posted: the honest arrival time.
        stamp = int(ev.dict.get("t_post_ns", now)) if hasattr(ev, "dict") else now
        if ev.type == pg.QUIT:
            self.request_quit("window closed")
        elif ev.type == pg.VIDEORESIZE:
            self.screen.resized(ev.size)
        elif ev.type in (pg.WINDOWFOCUSLOST,):
            self.release_all(stamp)  # key-ups are not delivered to an unfocused window
        elif ev.type == pg.KEYDOWN:
            self.key_down(ev.key, stamp)
        elif ev.type == pg.KEYUP:
            self.key_up(ev.key, stamp)

    def game_key_down(self, key: int, stamp: int) -> bool:
        if not self.held.press(key):
            return False
        self.session.slot.press(self.keymap.action_for(self.held.parts()), stamp)
        return True

    def game_key_up(self, key: int, stamp: int) -> bool:
        if not self.held.release(key):
            return False
        self.session.slot.set(self.keymap.action_for(self.held.parts()), stamp)
        return True

    def release_all(self, stamp: int | None = None) -> None:
        if self.held.down:
            self.held.clear()
            self.session.slot.set(self.keymap.noop, stamp)

    def key_down(self, key: int, stamp: int) -> None:
        pg = self.pg
        if self.state == "start":
            if self.pick_key(key):
                return
            if self.picked and self.picked != self.game:
                self.switch_game(self.picked)
            self.state = "play"
            self.session.pause(False)
            self.meter.gap()
            return
        if self.game_key_down(key, stamp):
            return
        if key in (pg.K_ESCAPE, pg.K_q):
            self.request_quit("quit key")
        elif key == pg.K_r:
            self.session.reset()
            self.note("fresh context")
        elif key == pg.K_p:
            paused = not self.session.paused
            self.session.pause(paused)
            self.meter.gap()
            self.note("paused" if paused else "resumed")
        elif key in (pg.K_1, pg.K_2, pg.K_4, pg.K_KP1, pg.K_KP2, pg.K_KP4):
            steps = {pg.K_1: 1, pg.K_2: 2, pg.K_4: 4, pg.K_KP1: 1, pg.K_KP2: 2, pg.K_KP4: 4}[key]
            self.switch(steps=steps)
        elif key == pg.K_c:
            chunk = 1 if self.session.settings.get("chunk", 1) > 1 else max(2, self.cfg.chunk_size)
            self.switch(chunk=chunk)
        elif key == pg.K_h:
            self.hud_on = not self.hud_on
        elif key in (pg.K_F12, pg.K_F2):
            path = self.screen.screenshot(self.cfg.screenshot_dir)
            self.note(f"screenshot {path}")

    def key_up(self, key: int, stamp: int) -> None:
        self.game_key_up(key, stamp)

    def switch(self, **settings) -> None:
        self.session.configure(**settings)
        want = {**self.session.settings, **settings}
        self.note(f"switching to {settings_label(want)}")
        self.meter.gap()

    # -- games ---------------------------------------------------------------------------------------
    def choosing(self) -> bool:
        """Whether the start screen offers a choice of games (more than one plays)."""
        return self.arcade is not None and len(self.arcade.playable) > 1

    def pick_key(self, key: int) -> bool:
        """On the start screen: an arrow (or WASD) moves the choice of game; True if it did."""
        pg = self.pg
        if not self.choosing():
            return False
        step = {pg.K_UP: -1, pg.K_w: -1, pg.K_LEFT: -1, pg.K_a: -1,
                pg.K_DOWN: 1, pg.K_s: 1, pg.K_RIGHT: 1, pg.K_d: 1}.get(key)
        if step is None:
            return False
        names = self.arcade.playable
        i = names.index(self.picked) if self.picked in names else 0
        self.picked = names[(i + step) % len(names)]
        return True

    def game_lines(self) -> list[str]:
        """The start screen's list of games, the chosen one marked."""
        return ["choose a game: arrows, then any other key"] + [
            f"{'>' if n == self.picked else ' '}\t{self.arcade.title(n)}" for n in self.arcade.playable] + [""]

    def switch_game(self, name: str) -> bool:
        """Stop this game's session and start ``name``'s (its model, keys, pace, title). A game whose model
        will not open is logged, taken out of the arcade, and this one plays on; returns whether it switched."""
        from worldsim.errors import WorldsimError

        try:
            entry = self.arcade.open(name)
        except WorldsimError as e:
            self.arcade.mark_broken(name, str(e))
            self.log({"event": "game_fault", "game": name, "error": str(e), "playing": self.game})
            self.picked = self.game
            self.note(f"{self.arcade.title(name)} is unavailable")
            return False
        paused = self.session.paused
        self.session.stop()
        self.session, self.keymap, self.pace = entry.session, entry.keymap, entry.pace
        self.held = HeldKeys(entry.bindings)
        self.model_label, self.game, self.picked = entry.label, name, name
        self.schedule.clear()
        self.current = None
        self.meter.gap()
        self.consecutive_faults = 0
        self.restart_at_ns = None
        self.restarting = True  # "One moment" until the new game's first context is on screen
        self.loading = entry.title
        self.session.pause(paused)
        self.worker_started_ns = time.perf_counter_ns()
        self.session.start()
        self.pg.display.set_caption(f"worldsim - {entry.title}")
        self.on_game(entry)
        return True

    def on_game(self, entry) -> None:
        """After ``switch_game`` (subclasses: the kiosk's log and policy)."""

    def note(self, text: str, seconds: float = 2.0) -> None:
        self.messages.append((text, time.perf_counter_ns() + int(seconds * NS)))

    def request_quit(self, why: str = "", code: int = 0) -> None:
        if not self.quit_requested:  # the first reason is the one that counts
            self.quit_reason = why
        self.quit_requested = True
        self.exit_code = self.exit_code or code

    # -- signals ---------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._signals[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, old in self._signals.items():
            signal.signal(sig, old)
        self._signals.clear()

    def _on_signal(self, signum, frame) -> None:
        self.request_quit(signal.Signals(signum).name)

    # -- the worker's health -----------------------------------------------------------------------
    def supervise(self, now: int) -> None:
        cfg = self.cfg
        if self.restart_at_ns is not None:
            if now >= self.restart_at_ns:
                self.restart_at_ns = None
                self._restart(now)
            return
        h = self.session.health()
        if not h.faulted:
            return
        self.faults += 1
        healthy = now - self.worker_started_ns >= cfg.healthy_after_s * NS
        self.consecutive_faults = 1 if healthy else self.consecutive_faults + 1
        n = self.consecutive_faults
        backoff = 0.0 if n == 1 else min(cfg.backoff_initial_s * 2 ** (n - 2), cfg.backoff_max_s)
        self.restarting = True
        self.schedule.clear()
        self.meter.gap()
        self.log({"event": "fault", "kind": h.state, "error": h.error, "mode": self.state,
                  "phase": h.phase, "consecutive": n, "backoff_s": backoff, "restarts": self.session.restarts,
                  "abandoned_workers": self.session.abandoned + (h.state == "stalled"
                                                                 and not self.session.kills_hung_workers),
                  **({"traceback": h.detail} if h.detail and self.mode == "play" else {})})
        if (h.state == "stalled" and not self.session.kills_hung_workers
                and self.session.abandoned + 1 > cfg.max_abandoned_workers):
            # Hung threads cannot be killed (a generation process can, and is); past the limit the
            # process exits and its supervisor (systemd Restart=always) starts a clean one.
            self.request_quit("too many hung workers", code=3)
            return
        if backoff == 0:
            self._restart(now)
        else:
            self.restart_at_ns = now + int(backoff * NS)

    def _restart(self, now: int) -> None:
        self.session.restart()
        self.worker_started_ns = now
        self.schedule.clear()

    # -- frames ----------------------------------------------------------------------------------
    def pull(self, now: int) -> None:
        while (chunk := self.session.poll()) is not None:
            if chunk.kind == "context":
                self.schedule.clear()
                self.meter.gap()
                self.last_arrival_ns = None
                self.schedule.append((now, chunk.frames[-1], chunk, -1))
                continue
            C = len(chunk.frames)
            if self.last_arrival_ns is not None:
                per_frame = (now - self.last_arrival_ns) / C
                self.arrival_ema_ns = per_frame if not self.arrival_ema_ns else 0.8 * self.arrival_ema_ns + 0.2 * per_frame
            self.last_arrival_ns = now
            if C == 1:
                interval = 0
            else:  # spread the chunk over its period: the tick, or how fast chunks really come
                interval = max(self.pace.tick_ns, self.arrival_ema_ns)
            base = now if not self.schedule else max(now, self.schedule[-1][0] + int(interval))
            # Never more than one interval behind: with jittery arrivals the spread would otherwise pile
            # up into a growing backlog of frames already made (seen: 164 ms of presentation delay).
            base = min(base, now + int(interval))
            for i in range(C):
                self.schedule.append((base + int(i * interval), chunk.frames[i], chunk, i))

    def present_due(self, now: int) -> bool:
        """Present the next scheduled frame if its time has come (one per loop turn: never skip one)."""
        if not self.schedule or self.schedule[0][0] > now:
            return False
        _, frame, chunk, i = self.schedule.popleft()
        self.current = (frame, chunk)
        if chunk.kind == "context":
            self.restarting = False
            self.loading = ""
        t = self.draw(frame)
        latency = float("nan")
        if chunk.kind == "gen":
            if i == 0 and chunk.stamps:  # the inputs this generation was the first to see
                latency = max(self.meter.add(s, chunk.t_take_ns, chunk.t_done_ns, t) for s in chunk.stamps)
            if i == 0:
                self.meter.chunk(chunk.t_take_ns, chunk.t_done_ns, chunk.info.get("model_ms"))
            self.meter.frame(t)
            self.frames_presented += 1
        if self.recorder is not None and self.recording():
            if chunk.kind == "context":
                self.recorder.context(chunk, t)
            else:
                self.recorder.frame(frame, chunk, t, latency)
        self.on_presented(frame, chunk, i, t)
        return True

    def refresh_if_due(self, now: int) -> None:
        if now - self.last_flip_ns >= NS / max(self.cfg.refresh_hz, 1e-3):
            self.draw(None)

    # -- drawing ---------------------------------------------------------------------------------
    def overlay(self, now: int) -> dict:
        """What goes over the frame: HUD lines, warnings, banner, panel."""
        out: dict = {}
        if self.restarting:
            out["panel"] = ("One moment", [f"loading {self.loading}" if self.loading else "the world is restarting"])
            return out
        if self.state == "start":
            from worldsim.app.keymap import controls_text

            games = self.game_lines() if self.choosing() else []
            pg, bound = self.pg, self.held.bindings
            arrows = {name: bound.get(key, name) for name, key in (("UP", pg.K_UP), ("DOWN", pg.K_DOWN),
                                                                   ("LEFT", pg.K_LEFT), ("RIGHT", pg.K_RIGHT))}
            arrows = {k: v for k, v in arrows.items() if k != v}
            out["panel"] = ("worldsim", games + [self.model_label, ""] + controls_text(self.keymap, arrows) + [
                "R\tfresh context", "P\tpause", "1 / 2 / 4\tsampling steps", "C\tframe-wise / chunk-wise",
                "H\tHUD", "F12\tscreenshot", "Esc / Q\tquit", "", "press any key to start"])
            return out
        warn = []
        if self.hud_on:
            out["hud"] = [self.hud_stats_line(now), self.pace.label(),
                          f"{settings_label(self.session.settings)}   {self.model_label}",
                          f"action {self.keymap.name(self.session.slot.peek())}"]
            slow = self.model_slow()
            if slow:
                warn.append(slow)
        if self.session.paused:
            warn.append("PAUSED (P to resume)")
        warn += [text for text, until in self.messages if until > now]
        out["warn"] = warn
        return out

    def hud_stats_line(self, now: int) -> str:
        """The HUD's FPS and latency line, recomputed at most ``HUD_STATS_HZ`` times a second. Why: the
        percentiles and a freshly rendered text line every frame were about half of the display loop's
        CPU time, taken from the model's two cores (py-spy of play.py); a figure that changes 4 times a
        second is also one a person can read."""
        if self._hud_stats is None or now - self._hud_stats[0] >= NS / HUD_STATS_HZ:
            fps = self.meter.recent_fps(now)
            p50, p95 = self.meter.recent_percentiles()
            lat = "latency --" if p50 != p50 else f"latency p50 {p50:.0f} ms  p95 {p95:.0f} ms"
            self._hud_stats = (now, f"{fps:5.1f} FPS   {lat}")
        return self._hud_stats[1]

    def model_slow(self) -> str | None:
        """A line saying so when the model cannot keep up with the game's pace (its tick)."""
        rate = self.pace.rate
        if rate <= 0 or self.session.steps < 10 or not self.session.gen_ms_ema:
            return None
        per_frame_ms = self.session.gen_ms_ema / max(1, self.session.settings.get("chunk", 1))
        model_rate = 1000.0 / per_frame_ms
        if model_rate < 0.9 * rate:
            return f"model slower than the game: {model_rate:.0f} steps/s < {rate:g}"
        return None

    def draw(self, frame) -> int:
        now = time.perf_counter_ns()
        t = self.screen.draw(frame, **self.overlay(now))
        self.last_flip_ns = t
        return t

    # -- logging ---------------------------------------------------------------------------------
    def _log_stderr(self, record: dict) -> None:
        if record.get("event") == "fault":
            print(f"worldsim play: generation worker {record['kind']}: {record['error']}; restarting"
                  f"{' in %.0f s' % record['backoff_s'] if record['backoff_s'] else ''}", file=sys.stderr)
        else:
            print(json.dumps(record), file=sys.stderr)
