"""Policies that play a game for data collection (and the kiosk's attract loop): ``policy(frame) -> action``.

- ``random``: uniform over the action set.
- ``sticky``: repeat the previous action with probability ``repeat_prob``, else draw a new one, so
  the player actually travels across the screen instead of jittering in place.
- ``scripted``: a per-game heuristic that reads the frame's pixels, for games where random play
  covers too little (Breakout never launches the ball, Boxing rarely lands a punch).

Scripted policies only look at the frame (colours and positions in relative coordinates), never at
emulator RAM, so the same policy also drives a world model's generated frames at any resolution.
Actions are chosen by name (``"UPRIGHTFIRE"``) and mapped through the game's ``action_meanings``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Sequence

import numpy as np

from worldsim.errors import WorldsimError


class Policy:
    """``__call__(frame) -> int`` picks the action to take after seeing ``frame``; ``reset(seed)`` starts an episode."""

    name = "policy"

    def __init__(self, action_meanings: Sequence[str], seed: int | None = 0):
        self.action_meanings = list(action_meanings)
        self.num_actions = len(self.action_meanings)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; with ``seed`` the policy's randomness restarts too (repeatable episodes)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def __call__(self, frame: np.ndarray) -> int:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}


class RandomPolicy(Policy):
    name = "random"

    def __call__(self, frame: np.ndarray) -> int:
        return int(self.rng.integers(self.num_actions))


class StickyPolicy(Policy):
    name = "sticky"

    def __init__(self, action_meanings, seed=0, repeat_prob: float = 0.8):
        super().__init__(action_meanings, seed)
        if not 0.0 <= repeat_prob < 1.0:
            raise WorldsimError(f"sticky policy: repeat_prob must be in [0, 1) (got {repeat_prob})")
        self.repeat_prob = float(repeat_prob)
        self.last: int | None = None

    def reset(self, seed=None):
        super().reset(seed)
        self.last = None

    def __call__(self, frame):
        if self.last is None or self.rng.random() >= self.repeat_prob:
            self.last = int(self.rng.integers(self.num_actions))
        return self.last

    def describe(self):
        return {"policy": self.name, "repeat_prob": self.repeat_prob}


# ---------------------------------------------------------------------------------------------
# Pixel helpers: masks of a colour inside a region given in fractions of the frame, so they work at
# the native 210x160 and on a 64x64 model frame alike (tolerance absorbs resize blending).


def color_mask(frame: np.ndarray, color, tol: int = 60, rows=(0.0, 1.0), cols=(0.0, 1.0)):
    """(mask, row0, col0): pixels within L1 distance ``tol`` of ``color`` inside the region."""
    h, w = frame.shape[:2]
    r0, r1 = int(rows[0] * h), max(int(rows[1] * h), int(rows[0] * h) + 1)
    c0, c1 = int(cols[0] * w), max(int(cols[1] * w), int(cols[0] * w) + 1)
    crop = frame[r0:r1, c0:c1].astype(np.int16)  # (h', w', 3)
    # per-channel sum instead of .sum(-1): a reduction over a length-3 axis is ~7x slower in numpy
    dist = np.abs(crop[..., 0] - color[0]) + np.abs(crop[..., 1] - color[1]) + np.abs(crop[..., 2] - color[2])
    return dist < tol, r0, c0


def centroid(frame, color, tol=60, rows=(0.0, 1.0), cols=(0.0, 1.0), min_pixels=1):
    """Centre (y, x) in fractions of the frame of the pixels of ``color`` in the region, or None."""
    m, r0, c0 = color_mask(frame, color, tol, rows, cols)
    ys, xs = np.nonzero(m)
    if len(ys) < min_pixels:
        return None
    h, w = frame.shape[:2]
    return (r0 + ys.mean() + 0.5) / h, (c0 + xs.mean() + 0.5) / w


class ScriptedPolicy(Policy):
    """Base of the per-game scripts: with probability ``epsilon`` a random action (held a few steps,
    so exploration travels), else ``act(frame)``."""

    name = "scripted"
    game = ""

    def __init__(self, action_meanings, seed=0, epsilon: float = 0.1):
        super().__init__(action_meanings, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise WorldsimError(f"scripted policy: epsilon must be in [0, 1] (got {epsilon})")
        self.epsilon = float(epsilon)
        self._explore_left = 0
        self._explore_action = 0

    def reset(self, seed=None):
        super().reset(seed)
        self._explore_left = 0

    def pick(self, *names: str) -> int:
        """The first of ``names`` this game has (e.g. "UPRIGHTFIRE", then "UPRIGHT"), else NOOP (0)."""
        for n in names:
            if n in self.action_meanings:
                return self.action_meanings.index(n)
        return 0

    def compose(self, vertical: str = "", horizontal: str = "", fire: bool = False) -> int:
        """An ALE action name from its parts: ("UP", "RIGHT", True) -> "UPRIGHTFIRE", with fallbacks."""
        move = vertical + horizontal
        if fire:
            return self.pick(move + "FIRE" if move else "FIRE", move or "FIRE", vertical or horizontal or "FIRE")
        return self.pick(move or "NOOP", vertical or horizontal or "NOOP")

    def __call__(self, frame):
        if self._explore_left > 0:
            self._explore_left -= 1
            return self._explore_action
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            self._explore_action = int(self.rng.integers(self.num_actions))
            self._explore_left = int(self.rng.integers(0, 4))
            return self._explore_action
        return int(self.act(np.asarray(frame)))

    def act(self, frame: np.ndarray) -> int:
        raise NotImplementedError

    def describe(self):
        return {"policy": self.name, "script": self.game, "epsilon": self.epsilon}


class BoxingScript(ScriptedPolicy):
    """Boxing: walk up to the opponent (black) until beside him at punching distance, then punch.

    The player is white; the boxers are seen from above with the head between the two arms, so a
    punch lands when our arm, not our head, is level with his head: the target spot is ``reach``
    beside him (fraction of the width) and ``yoff`` below him (fraction of the height). Tuned on
    the emulator: about +10 points per 800 steps with epsilon 0.1, where sticky random loses.
    """

    game = "boxing"
    RING_ROWS, RING_COLS = (0.18, 0.84), (0.19, 0.81)
    ME, OPP = (214, 214, 214), (0, 0, 0)

    def __init__(self, action_meanings, seed=0, epsilon=0.1, reach: float = 0.08, yoff: float = 0.08,
                 punch_prob: float = 0.7):
        super().__init__(action_meanings, seed, epsilon)
        self.reach, self.yoff, self.punch_prob = reach, yoff, punch_prob

    def act(self, frame):
        me = centroid(frame, self.ME, rows=self.RING_ROWS, cols=self.RING_COLS, min_pixels=3)
        opp = centroid(frame, self.OPP, rows=self.RING_ROWS, cols=self.RING_COLS, min_pixels=3)
        if me is None or opp is None:
            return int(self.rng.integers(self.num_actions))
        (my, mx), (oy, ox) = me, opp
        tx = ox - self.reach if mx <= ox else ox + self.reach  # stay on our side of him
        dy, dx = oy + self.yoff - my, tx - mx
        vertical = "DOWN" if dy > 0.02 else "UP" if dy < -0.02 else ""
        horizontal = "RIGHT" if dx > 0.03 else "LEFT" if dx < -0.03 else ""
        close = abs(dy) < 0.06 and abs(dx) < 0.08
        fire = close and self.rng.random() < self.punch_prob
        return self.compose(vertical, horizontal, fire)


class BreakoutScript(ScriptedPolicy):
    """Breakout: FIRE to launch when no ball is in play, else keep the paddle under the ball.

    The aim point is offset by a random amount per launch so the ball leaves at varied angles.
    """

    game = "breakout"
    COLOR = (200, 72, 72)  # paddle and ball share it
    PADDLE_ROWS, BALL_ROWS, COLS = (0.895, 0.93), (0.45, 0.89), (0.05, 0.95)

    # Little exploration by default: one missed ball costs a life, and a held random action often misses.
    def __init__(self, action_meanings, seed=0, epsilon=0.03, deadzone: float = 0.03):
        super().__init__(action_meanings, seed, epsilon)
        self.deadzone = deadzone

    def reset(self, seed=None):
        super().reset(seed)
        self.offset = 0.0

    def act(self, frame):
        paddle = centroid(frame, self.COLOR, rows=self.PADDLE_ROWS, cols=self.COLS)
        ball = centroid(frame, self.COLOR, rows=self.BALL_ROWS, cols=self.COLS)
        if ball is None or paddle is None:
            self.offset = float(self.rng.uniform(-0.04, 0.04))
            return self.pick("FIRE")
        dx = ball[1] + self.offset - paddle[1]
        return self.pick("RIGHT" if dx > self.deadzone else "LEFT" if dx < -self.deadzone else "NOOP")


class PongScript(ScriptedPolicy):
    """Pong: serve (FIRE) while no ball is in play, else move our (right, green) paddle toward the ball's
    height plus an aim offset drawn per point, so the ball leaves the paddle at varied angles. In Pong
    RIGHT moves the paddle up and LEFT down."""

    game = "pong"
    PADDLE, BALL = (92, 186, 92), (236, 236, 236)
    FIELD_ROWS, PADDLE_COLS = (0.17, 0.915), (0.85, 0.92)

    def reset(self, seed=None):
        super().reset(seed)
        self.offset = 0.0

    def act(self, frame):
        paddle = centroid(frame, self.PADDLE, rows=self.FIELD_ROWS, cols=self.PADDLE_COLS)
        ball = centroid(frame, self.BALL, tol=40, rows=self.FIELD_ROWS)
        if ball is None:
            self.offset = float(self.rng.uniform(-0.03, 0.03))  # where on the paddle the next ball lands
            return self.pick("FIRE")
        if paddle is None:
            return self.pick("NOOP")
        dy = ball[0] + self.offset - paddle[0]
        return self.pick("RIGHT" if dy < -0.02 else "LEFT" if dy > 0.02 else "NOOP")


class MsPacmanScript(ScriptedPolicy):
    """MsPacman: wander the maze: hold a direction, turn at random now and then or when a wall stops her
    (a direction held into a wall keeps her going the way she went until a corridor opens that way)."""

    game = "mspacman"
    PACMAN = (210, 164, 74)
    MAZE_ROWS = (0.0, 0.82)
    DIRS = ("UP", "RIGHT", "LEFT", "DOWN")

    def __init__(self, action_meanings, seed=0, epsilon=0.05, turn_prob: float = 0.05):
        super().__init__(action_meanings, seed, epsilon)
        self.turn_prob = turn_prob

    def reset(self, seed=None):
        super().reset(seed)
        self.direction = str(self.rng.choice(self.DIRS))
        self.prev = None
        self.stuck = 0

    def act(self, frame):
        pos = centroid(frame, self.PACMAN, tol=30, rows=self.MAZE_ROWS, min_pixels=3)
        # Her mouth opening and closing shifts the centroid by up to ~1 native pixel (0.005 of the frame)
        # in place; a step of travel is 2-3 pixels at frameskip 4.
        moved = pos is None or self.prev is None or abs(pos[0] - self.prev[0]) + abs(pos[1] - self.prev[1]) > 0.008
        self.stuck = 0 if moved else self.stuck + 1
        self.prev = pos
        if self.stuck >= 2 or self.rng.random() < self.turn_prob:
            self.direction = str(self.rng.choice([d for d in self.DIRS if d != self.direction]))
            self.stuck = 0
        return self.pick(self.direction)


class TinySweep(ScriptedPolicy):
    """worldsim/Tiny-v0: sweep the field row by row (boustrophedon), firing now and then to change colour."""

    game = "tiny"

    def __init__(self, action_meanings, seed=0, epsilon=0.05, fire_prob: float = 0.05, down_steps: int = 3):
        super().__init__(action_meanings, seed, epsilon)
        self.fire_prob, self.down_steps = fire_prob, down_steps

    def reset(self, seed=None):
        super().reset(seed)
        self.h = str(self.rng.choice(["RIGHT", "LEFT"]))
        self.v = str(self.rng.choice(["DOWN", "UP"]))
        self.v_left = 0
        self.prev = None
        self.last = "NOOP"

    @staticmethod
    def sprite(frame):
        m = frame.max(-1) >= 180  # sprite colours are bright; floor and wall are not
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            return None
        return ys.mean() / frame.shape[0], xs.mean() / frame.shape[1]

    def act(self, frame):
        pos = self.sprite(frame)
        blocked = (pos is not None and self.prev is not None and self.last not in ("NOOP", "FIRE")
                   and abs(pos[0] - self.prev[0]) + abs(pos[1] - self.prev[1]) < 1e-3)
        self.prev = pos
        if self.rng.random() < self.fire_prob:
            self.last = "FIRE"
            return self.pick("FIRE")
        if self.v_left > 0:
            if blocked and self.last == self.v:  # hit top/bottom: sweep back the other way
                self.v = "UP" if self.v == "DOWN" else "DOWN"
            self.v_left -= 1
            self.last = self.v
        else:
            if blocked and self.last == self.h:  # hit a side wall: step down a row, then turn
                self.h = "LEFT" if self.h == "RIGHT" else "RIGHT"
                self.v_left = self.down_steps - 1
                self.last = self.v
            else:
                self.last = self.h
        return self.pick(self.last)


POLICIES: dict[str, type[Policy]] = {"random": RandomPolicy, "sticky": StickyPolicy, "scripted": ScriptedPolicy}
SCRIPTS: dict[str, type[ScriptedPolicy]] = {
    "boxing": BoxingScript, "breakout": BreakoutScript, "pong": PongScript, "mspacman": MsPacmanScript,
    "tiny": TinySweep,
}


def game_name(env_id: str) -> str:
    """'ALE/Boxing-v5' -> 'boxing', 'BreakoutNoFrameskip-v4' -> 'breakout', 'worldsim/Tiny-v0' -> 'tiny'."""
    base = env_id.split("/")[-1]
    base = re.sub(r"-v\d+$", "", base)
    base = re.sub(r"(NoFrameskip|Deterministic)$", "", base)
    return base.lower()


def make_policy(name: str, env: Any, seed: int | None = 0, **kw: Any) -> Policy:
    """A policy for ``env`` (anything with ``env_id`` and ``action_meanings``): 'random', 'sticky', 'scripted'."""
    if name not in POLICIES:
        near = difflib.get_close_matches(name, list(POLICIES), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise WorldsimError(f"unknown policy '{name}'; {hint}policies: {', '.join(POLICIES)}")
    cls: Callable[..., Policy] = POLICIES[name]
    if name == "scripted":
        game = game_name(env.env_id)
        if game not in SCRIPTS:
            raise WorldsimError(f"no scripted policy for {env.env_id}; scripted games: {', '.join(SCRIPTS)}; "
                                f"use --policy sticky")
        cls = SCRIPTS[game]
    try:
        policy = cls(env.action_meanings, seed, **kw)
    except TypeError as e:
        raise WorldsimError(f"bad option for policy '{name}': {e}") from None
    policy.reset(seed)
    return policy
