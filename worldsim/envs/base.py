"""The game interface every data source speaks: ``reset(seed) -> frame``, ``step(action) -> (frame, reward,
terminated, truncated)``, plus the game's action meanings.

Boundary: an environment knows its game and nothing about recording, datasets or models. Frames are
uint8 ``(H, W, 3)`` at the game's native resolution; whoever needs another resolution resizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass
class EnvConfig:
    """Which game to play and how; YAML (``configs/collect*.yaml``) and ``make_env(**overrides)`` fill it."""

    # A gymnasium ALE id (``ALE/<Game>-v5``) or the built-in numpy game ``worldsim/Tiny-v0``.
    env_id: str = "ALE/Boxing-v5"
    # Emulator frames per step. 4 is the ALE v5 default: Atari animates at 60 Hz, 15 steps/s is
    # still smooth and every action has a visible effect. Ignored by the tiny game (one step = one move).
    frameskip: int = 4
    # ALE sticky actions: probability that the emulator repeats the previous action instead of the
    # one given. 0 = deterministic. v5 defaults to 0.25, but then 1 recorded action in 4 is a lie,
    # which is noise for an action-conditioned world model; exploration comes from the policy instead.
    repeat_action_probability: float = 0.0
    # Truncate an episode after this many steps (None: the game's own end; Boxing ends after ~1780).
    max_episode_steps: Optional[int] = None
    # All 18 Atari actions instead of the game's minimal set (the model's action count follows this).
    full_action_space: bool = False
    # ALE game mode / difficulty switch (None: the game's default).
    mode: Optional[int] = None
    difficulty: Optional[int] = None


class GameEnv:
    """Base class: a game that hands out uint8 RGB frames and takes integer actions.

    ``action_meanings[i]`` names action ``i`` in ALE's vocabulary (NOOP, FIRE, UP, RIGHT, LEFT, DOWN,
    UPRIGHT, ..., DOWNLEFTFIRE), so policies and keymaps can pick actions by name.
    """

    env_id: str
    action_meanings: list[str]
    config: EnvConfig
    # Frames per second of the game's own clock; one step spans ``frameskip`` of them (its frame period,
    # ``worldsim.gametime``). The Atari 2600 runs at 60 Hz.
    emulator_hz: float = 60.0

    @property
    def frame_period(self):
        """One step of game time (``worldsim.gametime.FramePeriod``): what a model trained on this env's frames plays at."""
        from worldsim.gametime import FramePeriod

        return FramePeriod.from_meta(self.describe()["frame_period"], self.env_id)

    @property
    def num_actions(self) -> int:
        return len(self.action_meanings)

    def action_index(self, name: str) -> int | None:
        """The index of the action called ``name`` or None when this game's action set lacks it."""
        try:
            return self.action_meanings.index(name)
        except ValueError:
            return None

    def reset(self, seed: int | None = None) -> np.ndarray:  # (H, W, 3) uint8
        raise NotImplementedError

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def snapshot(self) -> Any:
        """The game's whole state, for ``restore``: play on from a moment under other actions (the
        evaluation's real counterfactuals, ``worldsim.eval.counterfactual``)."""
        raise NotImplementedError(f"{self.env_id} cannot save its state")

    def restore(self, state: Any) -> None:
        raise NotImplementedError(f"{self.env_id} cannot restore a state")

    def describe(self) -> dict[str, Any]:
        """Metadata recorded with every episode of this env."""
        from worldsim.gametime import FramePeriod

        c = self.config
        return {"env_id": self.env_id, "action_meanings": list(self.action_meanings), "frameskip": c.frameskip,
                "emulator_hz": float(self.emulator_hz),
                "frame_period": FramePeriod(int(c.frameskip), float(self.emulator_hz)).to_meta(),
                "repeat_action_probability": c.repeat_action_probability,
                "max_episode_steps": c.max_episode_steps, "full_action_space": c.full_action_space}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_action(self, action) -> int:
        a = int(action)
        if not 0 <= a < self.num_actions:
            from worldsim.errors import WorldsimError

            raise WorldsimError(f"action {a} is outside {self.env_id}'s action set 0..{self.num_actions - 1} "
                                f"({', '.join(self.action_meanings)})")
        return a
