"""Recording what was played, in the dataset's episode format (``worldsim.data.episode``).

Boundary: glue between presented frames and ``EpisodeWriter``; the writer owns the file format and
its crash safety (a killed player loses at most the last second).

Alignment (as in ``docs/episode-format.md``): ``frames[t]`` was shown, ``actions[t]`` was chosen after it and
produced ``frames[t+1]``. The player only learns ``actions[t]`` when the next frame arrives (the
chunk carries the action that produced it), so each frame waits one step before it is appended.
Every context (start, reset, restart, a real game's new episode) opens a new episode whose first
``context_frames`` steps are the frames the model was seeded with (meta says how many), so a
recording is a complete trajectory that training and ``worldsim eval`` can use as is.

Game time: the meta carries the model's (or the real game's) ``frame_period``, the ``speed`` played at
(also in ``sampling``) and ``steps_per_s``, the pace generation was held to; the timestamps are
when each frame was shown, which is what replay paces by.

Per step: ``latency_ms`` is the input-to-pixel latency of the oldest input first shown in that
frame (NaN where none), and the extras ``action_to_pixel_ms`` (action taken -> frame flipped),
``gen_ms``, ``steps`` and ``chunk`` (the sampling settings, which can change live).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

NAN = float("nan")


def next_episode_path(out_dir: Path) -> Path:
    """``out_dir/ep_NNNNNN`` after the highest existing index, so sessions append to a dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    used = [int(m.group(1)) for p in out_dir.iterdir() if (m := re.fullmatch(r"ep_(\d+)", p.name))]
    return out_dir / f"ep_{(max(used) + 1) if used else 0:06d}"


class Recorder:
    def __init__(self, out_dir: str | Path, meta: dict[str, Any], flush_every_s: float = 1.0):
        self.out_dir = Path(out_dir)
        self.meta = dict(meta)
        self.flush_every_s = flush_every_s
        self.writer = None
        self.pending: dict | None = None  # the last frame shown, waiting for the action chosen after it
        self.episodes: list[Path] = []
        self.steps = 0
        self._last_action = -1  # the action that produced the newest frame (-1: none yet)

    def _open(self, settings: dict, context_frames: int) -> None:
        from worldsim.data.episode import EpisodeWriter

        self.close()
        path = next_episode_path(self.out_dir)
        sampling = dict(settings)
        if "speed" in self.meta:  # the pace played at is a setting of the recording too
            sampling["speed"] = self.meta["speed"]
        meta = {**self.meta, "sampling": sampling, "context_frames": int(context_frames)}
        self.writer = EpisodeWriter(path, meta, flush_every_s=self.flush_every_s)
        self.episodes.append(path)

    def _append(self, action: int, reward: float = 0.0) -> None:
        p = self.pending
        if p is None or self.writer is None:
            return
        self.writer.append(p["frame"], int(action), reward=float(reward), terminated=p["terminated"],
                           timestamp_ns=p["t"], latency_ms=p["latency"],
                           action_to_pixel_ms=p["a2p"], gen_ms=p["gen"], steps=float(p["steps"]),
                           chunk=float(p["chunk"]))
        self.steps += 1
        self.pending = None

    def context(self, chunk, t_present_ns: int) -> None:
        """A new context was shown: a new episode, starting with the frames the model was seeded with."""
        frames, actions = chunk.frames, chunk.context_actions
        self._open(chunk.settings, len(frames))
        s = chunk.settings
        for f, a in zip(frames[:-1], actions):
            self.pending = self._entry(f, t_present_ns, NAN, NAN, NAN, s)
            self._append(int(a))
        self.pending = self._entry(frames[-1], t_present_ns, NAN, NAN, NAN, s)

    def frame(self, frame: np.ndarray, chunk, t_present_ns: int, latency_ms: float = NAN) -> None:
        """A generated frame was shown; it tells us the action chosen after the previous one."""
        if self.writer is None:
            return
        self._append(chunk.action, chunk.info.get("reward", 0.0))
        self.pending = self._entry(frame, t_present_ns, latency_ms, (t_present_ns - chunk.t_take_ns) / 1e6,
                                   chunk.gen_ms, chunk.settings)
        self.pending["terminated"] = bool(chunk.info.get("terminated", False))
        self._last_action = chunk.action

    @staticmethod
    def _entry(frame, t, latency, a2p, gen, settings) -> dict:
        return {"frame": np.asarray(frame, np.uint8), "t": int(t), "latency": None if math.isnan(latency) else latency,
                "a2p": a2p, "gen": gen, "steps": settings.get("steps", 0), "chunk": settings.get("chunk", 1),
                "terminated": False}

    def pending_action_fallback(self) -> int:
        """The action after an episode's last frame: nothing executed it; we keep the last one played."""
        return max(self._last_action, 0)

    def close(self) -> None:
        if self.writer is not None:
            self._append(self.pending_action_fallback())
            self.writer.close()
            self.writer = None
        self.pending = None
        self._last_action = -1
