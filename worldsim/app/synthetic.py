"""Synthetic players for headless runs: real pygame key events posted at random moments.

Boundary: drives a ``Player`` from outside, through the same SDL event queue a keyboard uses, so
benchmarks and tests measure the real path (event queue -> stamp -> slot -> worker -> flip).
Each posted event carries ``t_post_ns`` (``perf_counter_ns`` at posting), which the player uses
as the arrival stamp: the figure then includes the loop's own input-poll delay.

``InputInjector``: a thread posting key-down/up of the game keys with exponential gaps (mean
``1/rate``), a share of them sub-frame taps (down and up a few milliseconds apart).
``run_headless``: build a Player for a backend, run it for ``seconds`` with the injector, return
the latency/FPS summary (warm-up excluded).
"""

from __future__ import annotations

import random
import threading
import time


def post_key(kind: str, key: int) -> None:
    """Post a KEYDOWN/KEYUP for ``key`` stamped with the current perf_counter_ns."""
    import pygame

    etype = pygame.KEYDOWN if kind == "down" else pygame.KEYUP
    pygame.event.post(pygame.event.Event(etype, key=key, mod=0, unicode="", scancode=0,
                                         t_post_ns=time.perf_counter_ns()))


class InputInjector(threading.Thread):
    def __init__(self, keys: list[int], rate: float = 6.0, tap_share: float = 0.3, seed: int = 0):
        super().__init__(name="worldsim-synthetic-input", daemon=True)
        self.keys, self.rate, self.tap_share = list(keys), rate, tap_share
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.held: set[int] = set()
        self.posted = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.expovariate(self.rate)):
            key = self.rng.choice(self.keys)
            if key in self.held:
                post_key("up", key)
                self.held.discard(key)
                self.posted += 1
            elif self.rng.random() < self.tap_share:  # a tap shorter than a frame: must not be lost
                post_key("down", key)
                time.sleep(self.rng.uniform(0.0005, 0.008))
                post_key("up", key)
                self.posted += 2
            else:
                post_key("down", key)
                self.held.add(key)
                self.posted += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(1.0)
        for key in list(self.held):  # leave no key stuck down
            post_key("up", key)
        self.held.clear()


def build_player(backend, cfg=None, *, kiosk=None, recorder=None, log_stream=None, model_label: str = "test",
                 env_id: str = "", pace=None):
    """A headless Player (or Kiosk, given a KioskConfig) over ``backend``, ready to ``run()``. ``pace``
    (``worldsim.gametime.Pace``; default: the default frame period at ``cfg.speed``) sets the session's
    generation tick and the player's HUD alike."""
    from worldsim.app.display import Screen, init_pygame
    from worldsim.app.keymap import Keymap
    from worldsim.app.player import PlayConfig, Player
    from worldsim.gametime import Pace
    from worldsim.runtime import Session, SessionConfig

    init_pygame(headless=True)
    cfg = kiosk.play if kiosk is not None else (cfg or PlayConfig(start_screen=False))
    pace = pace or Pace(speed=cfg.speed)
    session = Session(backend, SessionConfig(seed=cfg.seed, fps=pace.rate, stall_timeout_s=cfg.stall_timeout_s,
                                             start_timeout_s=cfg.start_timeout_s))
    hw = (backend.model.cfg.resolution,) * 2 if getattr(backend, "kind", "") == "model" else (210, 160)
    screen = Screen(hw, scale=cfg.scale, fullscreen=cfg.fullscreen, title="worldsim headless")
    if kiosk is not None:
        from worldsim.app.kiosk import Kiosk

        return Kiosk(session, Keymap(backend.action_meanings), screen, kiosk, env_id=env_id, model_label=model_label,
                     recorder=recorder, log_stream=log_stream, pace=pace)
    return Player(session, Keymap(backend.action_meanings), screen, cfg, recorder=recorder, model_label=model_label,
                  pace=pace)


def run_headless(backend, *, seconds: float, warmup_s: float = 1.0, pace=None, rate: float = 6.0,
                 seed: int = 0, model_label: str = "", hud: bool = True, scale: int = 10) -> dict:
    """Play ``backend`` headless for ``warmup_s + seconds`` with synthetic input at ``pace``
    (``worldsim.gametime.Pace``; default: the game's own speed at the default frame period); the
    summary covers ``seconds``."""
    from worldsim.app.display import init_pygame
    from worldsim.app.keymap import default_bindings
    from worldsim.app.player import NS, PlayConfig

    pg = init_pygame(headless=True)
    # The clock starts at the first frame (a process worker takes seconds to start); a hard cap stays.
    cfg = PlayConfig(speed=pace.speed if pace is not None else 1.0, hud=hud, start_screen=False,
                     max_seconds=warmup_s + seconds + 120.0, scale=scale, seed=seed)
    player = build_player(backend, cfg, model_label=model_label, pace=pace)
    bindings = default_bindings()
    injector = InputInjector([k for k in bindings if k not in (pg.K_RETURN, pg.K_w, pg.K_a, pg.K_s, pg.K_d)],
                             rate=rate, seed=seed)
    state = {"warm": False, "first_ns": None, "warm_ns": None}

    def hook(p, now):
        if state["first_ns"] is None:
            if p.frames_presented:
                state["first_ns"] = now
            return
        if not state["warm"] and now - state["first_ns"] >= warmup_s * NS:
            state["warm"], state["warm_ns"] = True, now
            p.meter.reset()  # cold caches and the first context do not count
        elif state["warm"] and now - state["warm_ns"] >= seconds * NS:
            p.request_quit("synthetic run done")

    player.tick_hook = hook
    pg.event.clear()
    injector.start()
    try:
        summary = player.run()
    finally:
        injector.stop()
        pg.event.clear()
    summary["inputs_posted"] = injector.posted
    summary["seconds"] = seconds
    return summary
