"""Replay a recording: the frames as they were shown, with the action that was pressed drawn on them.

Boundary: reads episodes through ``worldsim.data.episode`` (an episode directory, a dataset
directory of them, or a plain ``.npz``) and draws them; no model. Pacing follows the recorded
timestamps (clamped, so a pause in the recording does not freeze the replay), or ``fps`` if given.
Keys: space pause, N next episode, Esc/Q quit.
"""

from __future__ import annotations

import time
from pathlib import Path

from worldsim.app.display import Screen

NS = 1_000_000_000

ARROWS = {"UP": "^", "DOWN": "v", "LEFT": "<", "RIGHT": ">", "FIRE": "*"}


def action_label(name: str) -> str:
    from worldsim.app.keymap import parse_meaning

    parts = parse_meaning(name)
    glyph = "".join(ARROWS[p] for p in ("UP", "DOWN", "LEFT", "RIGHT", "FIRE") if parts and p in parts)
    return f"{name} {glyph}".strip()


def replay(path: str | Path, screen: Screen, *, fps: float = 0.0, speed: float = 1.0, max_seconds: float = 0.0,
           on_frame=None) -> dict:
    """Show every episode under ``path``; returns {'episodes', 'frames', 'actions'} of what was shown."""
    import pygame

    from worldsim.data.episode import list_episodes, read_episode

    episodes = list_episodes(path)
    if screen.surface is None:
        first = read_episode(episodes[0], load_frames=True, warn=False) if episodes else None
        if first is not None and len(first):
            screen.set_frame_size(first.frames.shape[1:3])
        screen.open()
    start = time.perf_counter_ns()
    shown, shown_actions, quit_ = 0, [], False
    for ep_path in episodes:
        ep = read_episode(ep_path, warn=False)
        if len(ep) == 0:
            continue
        meanings = ep.action_meanings
        ts = ep.timestamps_ns
        t = 0
        paused = False
        ctx = int(ep.meta.get("context_frames", 0))
        next_due = time.perf_counter_ns()
        while t < len(ep) and not quit_:
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN and ev.key in (pygame.K_ESCAPE, pygame.K_q)):
                    quit_ = True
                elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_SPACE:
                    paused = not paused
                elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_n:
                    t = len(ep)
                elif ev.type == pygame.VIDEORESIZE:
                    screen.resized(ev.size)
            if quit_ or t >= len(ep):
                break
            if max_seconds and time.perf_counter_ns() - start >= max_seconds * NS:
                quit_ = True
                break
            now = time.perf_counter_ns()
            if paused or now < next_due:
                time.sleep(min(0.005, max(0.0, (next_due - now) / NS)))
                continue
            a = int(ep.actions[t])
            hud = [f"replay {Path(ep_path).name}  step {t + 1}/{len(ep)}" + ("  (context)" if t < ctx else ""),
                   f"action {action_label(meanings[a]) if 0 <= a < len(meanings) else a}"]
            if ep.latency_ms is not None and ep.latency_ms[t] == ep.latency_ms[t]:
                hud.append(f"latency {ep.latency_ms[t]:.0f} ms")
            screen.draw(ep.frames[t], hud=hud, warn=["PAUSED"] if paused else [])
            shown += 1
            shown_actions.append(a)
            if on_frame is not None:
                on_frame(t, ep)
            if fps > 0:
                step_ns = NS / fps
            elif t + 1 < len(ep):
                step_ns = min(max(int(ts[t + 1] - ts[t]), 0), NS // 2)  # a long gap plays as half a second
            else:
                step_ns = 0
            next_due = max(next_due + int(step_ns / max(speed, 1e-6)), now)
            t += 1
        if quit_:
            break
    return {"episodes": len(episodes), "frames": shown, "actions": shown_actions}
