"""Replay a recording: the frames as they were shown, with the action that was pressed drawn on them.

Boundary: reads episodes through ``worldsim.data.episode`` (an episode directory, a dataset
directory of them, or a plain ``.npz``) and draws them; no model.

Pacing is game time. A play recording (``source`` play or play-real) replays at the pace it was
recorded: its timestamps, each interval clamped to half a second so a pause in the recording does
not freeze the replay. Any other episode (a collection) replays at its game's own speed, one step
per frame period (``worldsim.gametime``). ``speed`` scales either (2: twice as fast; 0: as fast as
the screen takes frames). Due times are read off a ``Pacer`` (an injectable clock), never counted
from sleeps. Keys: space pause, N next episode, Esc/Q quit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from worldsim.app.display import Screen
from worldsim.gametime import NS, Pacer, replay_offsets_ns

ARROWS = {"UP": "^", "DOWN": "v", "LEFT": "<", "RIGHT": ">", "FIRE": "*"}
RECORDED_SOURCES = ("play", "play-real")  # episodes whose timestamps are when each frame was shown
LATE_NS = NS // 4  # a replay this far behind its schedule (a slow screen) restarts the schedule: no burst


def action_label(name: str) -> str:
    from worldsim.app.keymap import parse_meaning

    parts = parse_meaning(name)
    glyph = "".join(ARROWS[p] for p in ("UP", "DOWN", "LEFT", "RIGHT", "FIRE") if parts and p in parts)
    return f"{name} {glyph}".strip()


def episode_schedule(ep, speed: float = 1.0) -> tuple[np.ndarray, str]:
    """(due offsets in ns from the first step, a line saying which pace): the recorded timestamps for a
    play recording, else one frame period a step."""
    n = len(ep)
    if ep.meta.get("source") in RECORDED_SOURCES:
        played = ep.meta.get("steps_per_s")
        how = f"the recorded pace ({played:g} steps/s when played)" if played else "the recorded pace"
        offsets = replay_offsets_ns(ep.timestamps_ns, speed)
    else:
        period = ep.frame_period
        how = f"the game's own speed, {period.describe()}"
        offsets = replay_offsets_ns(np.arange(n, dtype=np.int64) * int(round(period.seconds * NS)), speed)
    how += ", as fast as the screen goes (speed 0)" if speed == 0 else (f", speed {speed:g}x" if speed != 1 else "")
    return offsets, how


def replay(path: str | Path, screen: Screen, *, speed: float = 1.0, max_seconds: float = 0.0, on_frame=None,
           pacer: Pacer | None = None, announce: Callable[[str], None] | None = None) -> dict:
    """Show every episode under ``path``; returns {'episodes', 'frames', 'actions'} of what was shown."""
    import pygame

    from worldsim.data.episode import list_episodes, read_episode
    from worldsim.gametime import check_speed

    speed = check_speed(speed, "replay speed")
    pacer = pacer or Pacer()
    episodes = list_episodes(path)
    if screen.surface is None:
        first = read_episode(episodes[0], load_frames=True, warn=False) if episodes else None
        if first is not None and len(first):
            screen.set_frame_size(first.frames.shape[1:3])
        screen.open()
    start = pacer.now()
    shown, shown_actions, quit_ = 0, [], False
    said = None
    for ep_path in episodes:
        ep = read_episode(ep_path, warn=False)
        if announce is not None and not ep.complete:
            announce(f"note: {ep.problems[0]}; replaying its {len(ep)} readable steps ('worldsim data repair "
                     f"{ep_path}' closes it)")
        if len(ep) == 0:
            continue
        offsets, how = episode_schedule(ep, speed)
        if announce is not None and how != said:
            announce(f"replaying {Path(ep_path).name} at {how}")
            said = how
        meanings = ep.action_meanings
        t = 0
        paused_at: int | None = None
        ctx = int(ep.meta.get("context_frames", 0))
        base = pacer.now()  # when step 0 is due
        while t < len(ep) and not quit_:
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN and ev.key in (pygame.K_ESCAPE, pygame.K_q)):
                    quit_ = True
                elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_SPACE:
                    if paused_at is None:
                        paused_at = pacer.now()
                    else:  # the schedule resumes where it stopped
                        base += pacer.now() - paused_at
                        paused_at = None
                elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_n:
                    t = len(ep)
                elif ev.type == pygame.VIDEORESIZE:
                    screen.resized(ev.size)
            if quit_ or t >= len(ep):
                break
            now = pacer.now()
            if max_seconds and now - start >= max_seconds * NS:
                quit_ = True
                break
            if paused_at is not None:
                pacer.sleep(pacer.slice_s)
                continue
            due = base + int(offsets[t])
            if now < due:
                pacer.nap(due)
                continue
            if now - due > LATE_NS:  # behind (a slow screen): restart the schedule here
                base = now - int(offsets[t])
            a = int(ep.actions[t])
            hud = [f"replay {Path(ep_path).name}  step {t + 1}/{len(ep)}" + ("  (context)" if t < ctx else ""),
                   f"action {action_label(meanings[a]) if 0 <= a < len(meanings) else a}"]
            if ep.latency_ms is not None and ep.latency_ms[t] == ep.latency_ms[t]:
                hud.append(f"latency {ep.latency_ms[t]:.0f} ms")
            screen.draw(ep.frames[t], hud=hud, warn=["PAUSED"] if paused_at is not None else [])
            shown += 1
            shown_actions.append(a)
            if on_frame is not None:
                on_frame(t, ep)
            t += 1
        if quit_:
            break
    return {"episodes": len(episodes), "frames": shown, "actions": shown_actions}
