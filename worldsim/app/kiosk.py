"""Kiosk mode for demo booths: fullscreen, self-playing when idle, visitors cannot leave, self-healing.

Boundary: a ``Player`` whose keys and screens are those of an unattended booth; it adds no model
logic. States:

    attract  -- the model plays itself (a scripted policy reading the generated frames, sticky
                random for games without a script) under a pulsing "press any key" banner; the
                context is refreshed every ``attract_reset_s`` so self-play never drifts for hours
    pick     -- with more than one game shipped, a key press shows the games; arrows choose, any other
                key starts the chosen one (``idle_timeout_s`` without a choice: back to attract)
    visitor  -- a key press starts a session on a fresh context; it ends after ``idle_timeout_s``
                without input or ``max_session_s`` in all, and the booth returns to attract

With several games (``worldsim.app.arcade.Arcade``) the attract loop plays each for ``attract_game_s``
in turn, and a game whose model will not open, or whose worker fails ``game_faults`` times in a row,
is taken out of the rotation (one ``game_fault`` line) while the others play on.

Esc, window close (Alt+F4) and the usual quit keys do nothing; the operator leaves with the key
chord in ``configs/kiosk.yaml`` or SIGTERM/SIGINT, cleanly (open recording closed, log line written).
The player's watchdog restarts a worker that raised, died, stalled or did not start within
``play.start_timeout_s``, showing a calm "restarting" screen while it backs off. One JSON line per
visitor session, per fault and per recovery (the first frame after a fault, with the time the screen
went without one), and one at the first frame, go to the log (``log: ''`` = stdout); the last line
says how long the longest gap between frames was. State is bounded (deques, counters), so memory
stays flat.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from worldsim.app.player import NS, PlayConfig, Player


def _kiosk_play_defaults() -> PlayConfig:
    return PlayConfig(fullscreen=True, hud=False, start_screen=False)


@dataclass
class KioskConfig:
    play: PlayConfig = field(default_factory=_kiosk_play_defaults)  # model, settings, watchdog
    idle_timeout_s: float = 45.0  # a visitor idle this long hands the booth back to attract
    max_session_s: float = 300.0  # longest visitor session, so a queue keeps moving
    attract_policy: str = "scripted"  # scripted | sticky | random (scripted falls back to sticky)
    attract_reset_s: float = 120.0  # fresh context this often while attracting
    attract_game_s: float = 60.0  # with several games shipped, the attract loop plays each this long (0: stay)
    game_faults: int = 3  # a game whose worker fails this many times in a row leaves the rotation
    banner: str = "PRESS ANY KEY TO PLAY"
    # All keys held together quit. 'ctrl', 'alt', 'shift', 'meta' match either side; other names
    # are pygame key names ('q', 'f12', 'escape', ...).
    operator_chord: list[str] = field(default_factory=lambda: ["ctrl", "alt", "q"])
    log: str = ""  # JSON lines file ('' = stdout)
    hide_cursor: bool = True


def chord_keys(names: list[str]) -> list[set[int]]:
    """Each chord entry as the set of key codes that satisfy it."""
    import pygame

    sides = {"ctrl": (pygame.K_LCTRL, pygame.K_RCTRL), "alt": (pygame.K_LALT, pygame.K_RALT),
             "shift": (pygame.K_LSHIFT, pygame.K_RSHIFT), "meta": (pygame.K_LMETA, pygame.K_RMETA),
             "super": (pygame.K_LSUPER, pygame.K_RSUPER)}
    out = []
    for name in names:
        n = name.strip().lower()
        if n in sides:
            out.append(set(sides[n]))
            continue
        try:
            out.append({pygame.key.key_code(n)})
        except ValueError:
            from worldsim.errors import ConfigError

            raise ConfigError(f"kiosk operator_chord key '{name}' is not a pygame key name; "
                              f"use e.g. ['ctrl', 'alt', 'q']") from None
    if not out:
        from worldsim.errors import ConfigError

        raise ConfigError("kiosk operator_chord is empty; the operator needs a way out (e.g. ['ctrl', 'alt', 'q'])")
    return out


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Kiosk(Player):
    mode = "kiosk"

    def __init__(self, session, keymap, screen, kcfg: KioskConfig, *, env_id: str = "", model_label: str = "",
                 recorder=None, bindings=None, log_stream=None, pace=None, arcade=None, game: str = ""):
        self.kcfg = kcfg
        if kcfg.attract_game_s < 0 or kcfg.game_faults < 1:
            from worldsim.errors import ConfigError

            raise ConfigError(f"kiosk attract_game_s must be >= 0 (0: no rotation) and game_faults >= 1 "
                              f"(got {kcfg.attract_game_s:g} and {kcfg.game_faults})")
        super().__init__(session, keymap, screen, kcfg.play, recorder=recorder, model_label=model_label,
                         bindings=bindings, log=self._log_json, pace=pace, arcade=arcade, game=game)
        self.game_since_ns = 0
        self.pick_since_ns = 0
        self.log_stream = log_stream
        self.env_id = env_id
        self.chord = chord_keys(kcfg.operator_chord)
        self.keys_down: set[int] = set()
        self.state = "attract"
        self.policy = self._make_policy(kcfg.attract_policy)
        self.attract_since_ns = 0
        self.visitor: dict | None = None
        self.visitors = 0
        self.last_frame_ns = 0  # when the last generated frame was presented (0: none yet)
        self.longest_gap_s = 0.0  # the longest time between two presented frames
        self.faults_recovered = 0  # faults followed by a frame on screen (logged as 'recovered')

    def _make_policy(self, name: str):
        from worldsim.envs.policies import make_policy
        from worldsim.errors import WorldsimError

        env_like = SimpleNamespace(env_id=self.env_id, action_meanings=self.keymap.action_meanings)
        try:
            return make_policy(name, env_like, seed=0)
        except WorldsimError:
            if name == "scripted":  # no script for this game: sticky random still travels the screen
                return make_policy("sticky", env_like, seed=0)
            raise

    # -- logging ---------------------------------------------------------------------------------
    def _log_json(self, record: dict) -> None:
        record = {"time": iso_now(), "unix": round(time.time(), 3), **record}
        line = json.dumps(record, default=str)
        if self.log_stream is not None:
            self.log_stream.write(line + "\n")
            self.log_stream.flush()
        else:
            print(line, file=sys.stdout, flush=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        self.attract_since_ns = self.game_since_ns = time.perf_counter_ns()
        games = {"game": self.game, "games": self.arcade.playable} if self.arcade is not None else {}
        if self.arcade is not None and self.arcade.broken:
            games["broken"] = dict(self.arcade.broken)  # games whose model would not open, and why
        self.log({"event": "kiosk_start", **games, "model": self.model_label, "settings": self.session.settings,
                  "pace": self.pace.label(), "idle_timeout_s": self.kcfg.idle_timeout_s,
                  "max_session_s": self.kcfg.max_session_s})

    def on_stop(self) -> None:
        if self.visitor is not None:
            self.end_visitor("shutdown", time.perf_counter_ns())
        self.log({"event": "kiosk_stop", "reason": self.quit_reason, "uptime_s":
                  round((time.perf_counter_ns() - self.started_ns) / NS, 1), "visitors": self.visitors,
                  "faults": self.faults, "restarts": self.session.restarts,
                  "longest_gap_s": round(self.longest_gap_s, 2), "exit_code": self.exit_code})

    # -- input -----------------------------------------------------------------------------------
    def on_event(self, ev, now: int) -> None:
        pg = self.pg
        stamp = int(ev.dict.get("t_post_ns", now))
        if ev.type == pg.KEYDOWN:
            self.keys_down.add(ev.key)
            if all(alts & self.keys_down for alts in self.chord):
                self.request_quit("operator chord")
                return
            if self.state == "attract" and self.choosing():
                self.state, self.picked, self.pick_since_ns = "pick", self.game, now
                return
            if self.state == "pick":
                self.pick_since_ns = now
                if self.pick_key(ev.key):
                    return
                if self.picked != self.game:
                    self.switch_game(self.picked)
                self.start_visitor(now)
                return
            if self.state == "attract":
                self.start_visitor(now)
                self.game_key_down(ev.key, stamp)  # an arrow that starts the session also moves
                return
            self.visitor["last_input_ns"] = now
            self.visitor["inputs"] += 1
            self.game_key_down(ev.key, stamp)  # everything else (Esc, Q, R, ...) does nothing here
        elif ev.type == pg.KEYUP:
            self.keys_down.discard(ev.key)
            if self.visitor is not None:
                self.visitor["last_input_ns"] = now
                self.game_key_up(ev.key, stamp)
        elif ev.type == pg.WINDOWFOCUSLOST:
            self.keys_down.clear()
            self.release_all(stamp)
        # QUIT (window close, Alt+F4) and resize are ignored on purpose: visitors cannot leave.

    # -- visitor sessions ------------------------------------------------------------------------
    def start_visitor(self, now: int) -> None:
        self.state = "visitor"
        self.held.clear()
        self.session.slot.reset(self.keymap.noop)
        self.session.reset()  # a fresh context for every visitor
        self.meter.reset()
        self.visitors += 1
        self.visitor = {"start": iso_now(), "start_ns": now, "last_input_ns": now, "inputs": 1,
                        "frames_at_start": self.frames_presented, "faults_at_start": self.faults}

    def recording(self) -> bool:
        return self.state == "visitor"  # visitors' play is data; the attract policy's is not

    def end_visitor(self, reason: str, now: int) -> None:
        v, self.visitor = self.visitor, None
        if self.recorder is not None:
            self.recorder.close()
        s = self.meter.summary()
        self.log({"event": "session", **({"game": self.game} if self.game else {}), "start": v["start"], "end": iso_now(),
                  "duration_s": round((now - v["start_ns"]) / NS, 2),
                  "frames": self.frames_presented - v["frames_at_start"], "inputs": v["inputs"],
                  "latency_p50_ms": _round(s["latency_ms"]["p50"]), "latency_p95_ms": _round(s["latency_ms"]["p95"]),
                  "fps": _round(s["fps"]), "faults": self.faults - v["faults_at_start"], "end_reason": reason})
        self.state = "attract"
        self.held.clear()
        self.session.slot.reset(self.keymap.noop)
        if not self.quit_requested:
            self.session.reset()
            self.attract_since_ns = self.game_since_ns = now  # the visitor's game attracts a full turn
        self.policy.reset()

    def tick(self, now: int) -> None:
        k = self.kcfg
        if self.state == "pick" and now - self.pick_since_ns >= k.idle_timeout_s * NS:
            self.state = "attract"  # nobody chose: the self-play under the list goes on
        if (self.state == "attract" and k.attract_game_s > 0 and self.choosing()
                and now - self.game_since_ns >= k.attract_game_s * NS):
            nxt = self.arcade.next_after(self.game)
            self.game_since_ns = now
            if nxt is not None:
                self.switch_game(nxt)
            return
        if self.visitor is not None:
            if now - self.visitor["last_input_ns"] >= k.idle_timeout_s * NS:
                self.end_visitor("idle", now)
            elif now - self.visitor["start_ns"] >= k.max_session_s * NS:
                self.end_visitor("max_session", now)
        elif k.attract_reset_s > 0 and now - self.attract_since_ns >= k.attract_reset_s * NS:
            self.session.reset()
            self.attract_since_ns = now

    def on_presented(self, frame, chunk, index: int, t: int) -> None:
        if chunk.kind == "gen":
            self.frame_presented(t)
        if self.state not in ("attract", "pick"):
            return
        if chunk.kind == "context":
            self.policy.reset()
        self.session.slot.set(self.policy(frame))  # no stamp: nobody pressed anything

    def frame_presented(self, t: int) -> None:
        """Keep the longest gap between frames; the booth's first frame logs 'first_frame' (the start-up
        time), the first frame after faults logs 'recovered'."""
        if not self.last_frame_ns:
            self.log({"event": "first_frame", "after_s": round((t - self.started_ns) / NS, 2)})
        gap_s = (t - self.last_frame_ns) / NS if self.last_frame_ns else 0.0
        self.longest_gap_s = max(self.longest_gap_s, gap_s)
        self.last_frame_ns = t
        if self.faults > self.faults_recovered:
            self.log({"event": "recovered", "faults": self.faults - self.faults_recovered, "gap_s": round(gap_s, 2),
                      "restarts": self.session.restarts})
            self.faults_recovered = self.faults

    def overlay(self, now: int) -> dict:
        out = super().overlay(now)
        if self.state == "pick" and "panel" not in out:
            out["panel"] = ("worldsim", self.game_lines())
        if self.state == "attract" and "panel" not in out:
            out["banner"] = self.kcfg.banner
        return out

    # -- games -----------------------------------------------------------------------------------
    def on_game(self, entry) -> None:
        """A new game plays: its attract policy reads its frames and takes its actions; one log line."""
        now = time.perf_counter_ns()
        self.env_id = str(entry.meta.get("env_id", ""))
        self.policy = self._make_policy(self.kcfg.attract_policy)
        self.attract_since_ns = self.game_since_ns = now
        self.log({"event": "game", "game": entry.name, "model": entry.label, "mode": self.state})

    def supervise(self, now: int) -> None:
        """The player's watchdog; past ``game_faults`` faults in a row the game leaves the rotation (a
        visitor on it is ended) and the next game plays."""
        super().supervise(now)
        if self.arcade is None or self.consecutive_faults < self.kcfg.game_faults or self.quit_requested:
            return
        nxt = self.arcade.next_after(self.game)
        if nxt is None:
            return  # the last game standing keeps restarting
        why = f"{self.consecutive_faults} worker faults in a row"
        self.arcade.mark_broken(self.game, why)
        self.log({"event": "game_fault", "game": self.game, "error": why, "next": nxt})
        if self.visitor is not None:
            self.end_visitor("fault", now)
        self.state = "attract"
        self.switch_game(nxt)


def _round(x: float, n: int = 1):
    return None if x != x else round(float(x), n)
