"""``worldsim/Tiny-v0``: a built-in game in pure numpy, a test fixture and a smoke-training target.

A square sprite moves on a bounded 64x64 field with a fixed checkerboard floor and a wall. Dynamics
are deterministic and every action is visible, so a small world model learns them in minutes:

- UP / DOWN / LEFT / RIGHT move the sprite ``speed`` pixels, clamped at the wall;
- FIRE cycles the sprite's colour through ``PALETTE``; NOOP does nothing.

Actions are numbered and named like ALE's minimal sets (NOOP, FIRE, UP, RIGHT, LEFT, DOWN), so the
same keymaps and policies work. ``true_state`` exposes the sprite's position and colour for tests.
It is never the default game: real data comes from ``worldsim.envs.atari``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldsim.envs.base import EnvConfig, GameEnv

TINY_ENV_ID = "worldsim/Tiny-v0"
TINY_ACTIONS = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]
# (dy, dx) per action; FIRE changes colour instead of moving.
_MOVES = {"NOOP": (0, 0), "FIRE": (0, 0), "UP": (-1, 0), "RIGHT": (0, 1), "LEFT": (0, -1), "DOWN": (1, 0)}
# Bright, saturated sprite colours: far from the dark floor so a resized frame still shows them.
PALETTE = np.array([[232, 72, 56], [72, 208, 88], [80, 136, 248]], dtype=np.uint8)
FLOOR = np.array([[28, 30, 40], [44, 48, 64]], dtype=np.uint8)
WALL = np.array([150, 150, 160], dtype=np.uint8)


@dataclass
class TinyConfig:
    """Geometry of the tiny game; the defaults are what ``make_env('worldsim/Tiny-v0')`` plays."""

    size: int = 64  # field is size x size pixels (native resolution)
    sprite: int = 12  # sprite side in pixels: big, so a 32x32 or 64x64 model sees it clearly
    speed: int = 4  # pixels per move; positions stay on a 4-pixel lattice, a small discrete state space
    border: int = 2  # wall thickness
    tile: int = 16  # checkerboard tile, a static reference so motion is unambiguous
    max_episode_steps: int = 256  # truncation when EnvConfig.max_episode_steps is None


class TinyGame(GameEnv):
    """The sprite game. ``reset(seed)`` draws the start position (on the lattice) and colour."""

    emulator_hz = 15.0  # one move per step at 15 steps/s: the pace of an ALE game at its default frameskip 4

    def __init__(self, tiny: TinyConfig | None = None, cfg: EnvConfig | None = None):
        self.tiny = tiny or TinyConfig()
        self.config = cfg or EnvConfig(env_id=TINY_ENV_ID)
        self.env_id = TINY_ENV_ID
        self.action_meanings = list(TINY_ACTIONS)
        t = self.tiny
        if t.size < t.sprite + 2 * t.border + t.speed:
            raise ValueError(f"tiny game: size {t.size} too small for sprite {t.sprite} + border {t.border}")
        self._floor = self._draw_floor()  # (S, S, 3), drawn once: the floor never changes
        self.lo = t.border
        self.hi = t.size - t.border - t.sprite  # largest top-left coordinate
        self.x = self.y = self.lo
        self.color = 0
        self.t = 0

    @property
    def max_steps(self) -> int:
        m = self.config.max_episode_steps
        return self.tiny.max_episode_steps if m is None else m

    @property
    def true_state(self) -> dict[str, int]:
        """Sprite top-left (x, y) in pixels, colour index, and steps since reset."""
        return {"x": self.x, "y": self.y, "color": self.color, "t": self.t}

    def describe(self) -> dict:
        from dataclasses import asdict

        from worldsim.gametime import FramePeriod

        # One step is one move: there are no emulator frames to skip, whatever EnvConfig says.
        return {**super().describe(), "frameskip": 1, "frame_period": FramePeriod(1, self.emulator_hz).to_meta(),
                "max_episode_steps": self.max_steps, "tiny": asdict(self.tiny)}

    def _draw_floor(self) -> np.ndarray:
        t = self.tiny
        ij = np.arange(t.size) // t.tile
        checker = (ij[:, None] + ij[None, :]) % 2  # (S, S) in {0, 1}
        img = FLOOR[checker]  # (S, S, 3)
        b = t.border
        img[:b], img[-b:], img[:, :b], img[:, -b:] = WALL, WALL, WALL, WALL
        return img

    def render(self) -> np.ndarray:
        img = self._floor.copy()  # (S, S, 3)
        s = self.tiny.sprite
        img[self.y:self.y + s, self.x:self.x + s] = PALETTE[self.color]
        return img

    def reset(self, seed: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = (self.hi - self.lo) // self.tiny.speed + 1  # lattice positions per axis
        self.x = self.lo + int(rng.integers(n)) * self.tiny.speed
        self.y = self.lo + int(rng.integers(n)) * self.tiny.speed
        self.color = int(rng.integers(len(PALETTE)))
        self.t = 0
        return self.render()

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.color, self.t

    def restore(self, state) -> None:
        self.x, self.y, self.color, self.t = state

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        name = self.action_meanings[self._check_action(action)]
        if name == "FIRE":
            self.color = (self.color + 1) % len(PALETTE)
        dy, dx = _MOVES[name]
        self.x = int(np.clip(self.x + dx * self.tiny.speed, self.lo, self.hi))
        self.y = int(np.clip(self.y + dy * self.tiny.speed, self.lo, self.hi))
        self.t += 1
        return self.render(), 0.0, False, self.t >= self.max_steps
