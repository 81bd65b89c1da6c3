"""Game time: how much of the game one step spans, and the pace play runs at.

Boundary: arithmetic and metadata only (no torch, no pygame, no clocks of its own): episodes,
checkpoints, the player, replay and the latency benchmark all ask this module what one step means.

One step of an Atari game is ``frameskip`` emulator frames at the console's 60 Hz, so its frame
period is ``frameskip / 60`` s: 66.7 ms (15 steps/s) at frameskip 4, the ALE v5 default. A world
model trained on such steps draws one step per frame, so it plays at the game's own speed when it
generates ``60 / frameskip`` frames a second. ``speed`` scales that (0.5 slow motion, 2
fast-forward, 0 as fast as the model runs); the tick between generation starts is
``period / speed``.

Where the period comes from: a checkpoint's ``frame_period`` (written by training, from its data);
else the episodes it was trained on (its ``train_config.data.paths``, where they are on this
machine); else the game's, where its id fixes it (the built-in tiny game); else ``DEFAULT_PERIOD``,
with one printed line saying so. An episode's comes from its
``frame_period``, else its ``frameskip`` (every collected episode records one), else the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from worldsim.errors import ConfigError

ALE_HZ = 60.0  # the Atari 2600's frame rate (NTSC), the rate ALE steps its emulator at
NS = 1_000_000_000


@dataclass(frozen=True)
class FramePeriod:
    """One step of game time: ``frameskip`` emulator frames at ``emulator_hz``."""

    frameskip: int = 4  # emulator frames per step (ALE v5 default 4)
    emulator_hz: float = ALE_HZ  # emulator frames per second

    def __post_init__(self):
        if int(self.frameskip) != self.frameskip or self.frameskip < 1:
            raise ConfigError(f"frame period: frameskip must be a whole number >= 1 (got {self.frameskip!r})")
        if not (math.isfinite(self.emulator_hz) and self.emulator_hz > 0):
            raise ConfigError(f"frame period: emulator_hz must be > 0 (got {self.emulator_hz!r})")

    @property
    def seconds(self) -> float:
        return self.frameskip / self.emulator_hz

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.emulator_hz / self.frameskip

    def to_meta(self) -> dict[str, Any]:
        return {"frameskip": int(self.frameskip), "emulator_hz": float(self.emulator_hz),
                "period_ms": round(self.ms, 3)}

    @classmethod
    def from_meta(cls, d: Any, where: str = "metadata") -> "FramePeriod":
        if not isinstance(d, dict) or "frameskip" not in d:
            raise ConfigError(f"{where}: frame_period {d!r} is not {{'frameskip': N, 'emulator_hz': HZ}}")
        try:
            return cls(int(d["frameskip"]), float(d.get("emulator_hz", ALE_HZ)))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: frame_period {d!r} holds a non-number") from None

    def describe(self) -> str:
        """'15 steps/s (frameskip 4 at 60 Hz, 66.7 ms a step)'."""
        return (f"{self.steps_per_s:g} steps/s (frameskip {self.frameskip} at {self.emulator_hz:g} Hz, "
                f"{self.ms:.1f} ms a step)")


DEFAULT_PERIOD = FramePeriod(4, ALE_HZ)


def episode_period(meta: dict[str, Any]) -> FramePeriod | None:
    """An episode's (or a data set's) frame period from its metadata, or None when it records none."""
    if meta.get("frame_period") is not None:
        return FramePeriod.from_meta(meta["frame_period"], "episode metadata")
    if meta.get("frameskip") is not None:
        return FramePeriod(int(meta["frameskip"]), float(meta.get("emulator_hz", ALE_HZ)))
    return None


def period_or_default(meta: dict[str, Any]) -> FramePeriod:
    """An episode's frame period; an old episode that records none gets ``DEFAULT_PERIOD``."""
    return episode_period(meta) or DEFAULT_PERIOD


@dataclass(frozen=True)
class ResolvedPeriod:
    period: FramePeriod
    source: str  # 'checkpoint', 'training data <path>', 'game <env id>' or 'default'
    note: str = ""  # the line to print once when the default was taken

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def _data_paths(meta: dict[str, Any]) -> list[str]:
    data = (meta.get("train_config") or {}).get("data") if isinstance(meta.get("train_config"), dict) else None
    paths = data.get("paths") if isinstance(data, dict) else None
    return [str(p) for p in paths] if isinstance(paths, list) else []


def checkpoint_period(meta: dict[str, Any], name: str = "model") -> ResolvedPeriod:
    """The frame period a checkpoint was trained at: recorded, else its training data's, else the default."""
    if meta.get("frame_period") is not None:
        return ResolvedPeriod(FramePeriod.from_meta(meta["frame_period"], f"checkpoint {name}"), "checkpoint")
    from worldsim.data.episode import list_episodes, read_meta
    from worldsim.errors import DataError

    for p in _data_paths(meta):
        if not Path(p).exists():
            continue
        try:
            episodes = list_episodes(p)
            period = episode_period(read_meta(episodes[0])) if episodes else None
        except DataError:
            continue
        if period is not None:
            return ResolvedPeriod(period, f"training data {p}")
    if meta.get("env_id") == "worldsim/Tiny-v0":  # the built-in game has one period whatever frameskip says
        from worldsim.envs.tiny import TinyGame

        return ResolvedPeriod(FramePeriod(1, TinyGame.emulator_hz), "game worldsim/Tiny-v0")
    d = DEFAULT_PERIOD
    note = (f"model {name} records no frame period; playing at frameskip {d.frameskip} ({d.steps_per_s:g} steps/s), "
            f"the ALE v5 default; set speed= to play it faster or slower")
    return ResolvedPeriod(d, "default", note)


def check_speed(speed: float, what: str = "speed") -> float:
    s = float(speed)
    if not math.isfinite(s) or s < 0:
        raise ConfigError(f"{what} must be >= 0: 1 = the game's own speed, 0.5 slow motion, 2 fast-forward, "
                          f"0 = as fast as the model runs (got {speed!r})")
    return s


def game_name(env_id: str) -> str:
    """'ALE/Boxing-v5' -> 'Boxing'; 'worldsim/Tiny-v0' -> 'Tiny'."""
    base = str(env_id).rsplit("/", 1)[-1]
    return base.split("-")[0].removesuffix("NoFrameskip").removesuffix("Deterministic") or str(env_id)


@dataclass(frozen=True)
class Pace:
    """The pace of play: the game's frame period times ``speed`` gives the tick between generation starts."""

    period: FramePeriod = DEFAULT_PERIOD
    speed: float = 1.0  # 1 = the game's own speed; 0 = uncapped
    game: str = ""  # for the HUD ('Boxing')

    def __post_init__(self):
        check_speed(self.speed)

    @property
    def rate(self) -> float:
        """Frames generated per second (0: uncapped): what ``SessionConfig.fps`` caps generation at."""
        return self.period.steps_per_s * self.speed

    @property
    def tick_ns(self) -> int:
        """Time between generation starts (0: uncapped)."""
        return 0 if self.speed == 0 else int(round(self.period.seconds * NS / self.speed))

    @property
    def tick_ms(self) -> float:
        return self.tick_ns / 1e6

    def spare_ms(self, generation_ms: float, chunk: int = 1) -> float | None:
        """The time a generation leaves to spare: ``chunk`` ticks minus ``generation_ms`` (None: uncapped)."""
        return None if self.tick_ns == 0 else chunk * self.tick_ms - generation_ms

    def label(self) -> str:
        """The HUD's line: 'Boxing, 15 steps/s, speed 1.00x'."""
        head = f"{self.game}, " if self.game else ""
        if self.speed == 0:
            return f"{head}uncapped (speed 0; the game's own speed is {self.period.steps_per_s:g} steps/s)"
        return f"{head}{self.rate:g} steps/s, speed {self.speed:.2f}x"

    def announce(self) -> str:
        """The line printed at the start of play (stderr): 'pace: Boxing at its own speed, 15 steps/s (...)'."""
        game = self.game or "the game"
        step = (f"a step is {self.period.frameskip} emulator frame{'s' if self.period.frameskip > 1 else ''} "
                f"at {self.period.emulator_hz:g} Hz, {self.period.ms:.1f} ms")
        if self.speed == 0:
            return (f"pace: as fast as the model runs (speed=0); {game}'s own speed is "
                    f"{self.period.steps_per_s:g} steps/s ({step})")
        at = "at its own speed" if self.speed == 1 else f"at {self.speed:g}x its own speed"
        return (f"pace: {game} {at}, {self.rate:g} steps/s ({step}); speed= changes it (0.5 slow motion, "
                f"2 fast-forward, 0 uncapped)")

    def to_meta(self) -> dict[str, Any]:
        return {"frame_period": self.period.to_meta(), "speed": float(self.speed), "steps_per_s": self.rate}


def replay_offsets_ns(timestamps_ns: Sequence[int], speed: float = 1.0, max_gap_ns: int = NS // 2) -> np.ndarray:
    """When each recorded step is due in a replay, from the first one: the recorded intervals (each
    clamped to ``[0, max_gap_ns]``, so a pause in the recording does not freeze the replay) divided
    by ``speed``. Speed 0 shows every step at once (as fast as the screen takes them)."""
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    if len(ts) == 0:
        return np.zeros(0, np.int64)
    gaps = np.clip(np.diff(ts), 0, max_gap_ns).astype(np.float64)  # (T-1,)
    if speed == 0:
        gaps[:] = 0
    else:
        gaps /= speed
    return np.concatenate([[0], np.cumsum(gaps)]).round().astype(np.int64)


class Pacer:
    """Waits for due times on an injectable clock: ``wait_until(t)`` sleeps in short slices (so the
    caller's own loop stays responsive) and returns the clock's reading once ``t`` has come. Tests
    pass a fake ``clock`` and a ``sleep`` that advances it."""

    def __init__(self, clock: Callable[[], int] | None = None, sleep: Callable[[float], None] | None = None,
                 slice_s: float = 0.005):
        import time

        self.clock = clock or time.perf_counter_ns
        self.sleep = sleep or time.sleep
        self.slice_s = slice_s

    def now(self) -> int:
        return int(self.clock())

    def left_s(self, due_ns: int) -> float:
        return max(0.0, (due_ns - self.now()) / NS)

    def nap(self, due_ns: int) -> bool:
        """Sleep one slice toward ``due_ns``; True once it has come."""
        left = self.left_s(due_ns)
        if left <= 0:
            return True
        self.sleep(min(self.slice_s, left))
        return self.now() >= due_ns
