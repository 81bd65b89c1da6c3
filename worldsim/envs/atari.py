"""Real Atari games through gymnasium + ale-py (the ROMs ship in the ale-py wheel).

Boundary: turns a gymnasium ALE env into a ``GameEnv`` (uint8 RGB frames at the native 210x160,
integer actions in the game's own action set, its action meanings). Nothing here records or resizes.
"""

from __future__ import annotations

import functools

import numpy as np

from worldsim.envs.base import EnvConfig, GameEnv
from worldsim.errors import WorldsimError


@functools.lru_cache(maxsize=1)
def ale_env_ids() -> tuple[str, ...]:
    """Every game id that ale-py registers with gymnasium (``ALE/Boxing-v5``, ``BoxingNoFrameskip-v4``, ...)."""
    try:
        import ale_py
        import gymnasium
    except ImportError:  # the data tools still work on recorded episodes without the emulator
        return ()
    gymnasium.register_envs(ale_py)
    return tuple(sorted(k for k, spec in gymnasium.registry.items() if "ale_py" in str(spec.entry_point)))


class AtariEnv(GameEnv):
    """One ALE game. ``reset(seed)`` seeds the emulator (and its sticky-action RNG) so runs repeat exactly."""

    def __init__(self, cfg: EnvConfig):
        try:
            import ale_py
            import gymnasium
        except ImportError as e:
            raise WorldsimError(f"cannot play {cfg.env_id}: {e}; install with 'pip install gymnasium ale-py'") from None
        gymnasium.register_envs(ale_py)
        # Keep the emulator's start-up banner out of every worker's stderr; errors still print.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        kwargs = dict(frameskip=cfg.frameskip, repeat_action_probability=cfg.repeat_action_probability,
                      full_action_space=cfg.full_action_space)
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode
        if cfg.difficulty is not None:
            kwargs["difficulty"] = cfg.difficulty
        if cfg.frameskip < 1:
            raise WorldsimError(f"frameskip must be >= 1 (got {cfg.frameskip})")
        if not 0.0 <= cfg.repeat_action_probability <= 1.0:
            raise WorldsimError(f"repeat_action_probability must be in [0, 1] (got {cfg.repeat_action_probability})")
        try:
            # Our own step counter does truncation so every env truncates the same way.
            self._env = gymnasium.make(cfg.env_id, disable_env_checker=True, **kwargs)
        except Exception as e:  # bad mode/difficulty etc. come back as assorted ALE errors
            raise WorldsimError(f"cannot create {cfg.env_id} with {kwargs}: {str(e).splitlines()[0]}") from None
        self.config = cfg
        self.env_id = cfg.env_id
        self.action_meanings = list(self._env.unwrapped.get_action_meanings())
        self._t = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self._env.reset(seed=None if seed is None else int(seed))
        self._t = 0
        return np.asarray(obs, dtype=np.uint8)  # (210, 160, 3)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        obs, reward, terminated, truncated, _ = self._env.step(self._check_action(action))
        self._t += 1
        limit = self.config.max_episode_steps
        truncated = bool(truncated) or (limit is not None and self._t >= limit and not terminated)
        return np.asarray(obs, dtype=np.uint8), float(reward), bool(terminated), truncated

    def snapshot(self):
        return self._env.unwrapped.ale.cloneState(), self._t

    def restore(self, state) -> None:
        ale_state, self._t = state
        self._env.unwrapped.ale.restoreState(ale_state)

    def close(self) -> None:
        self._env.close()
