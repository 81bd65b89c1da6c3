"""The real game's answer to a held key, from the very moment a context ends: ground truth for the action response.

Boundary: evaluation episodes + (episode, context start) pairs + actions in, the real game's frames
under those actions out, at the model's resolution. Nothing here touches a model.

Why: the action response compared the model's move under a held key with statistics of *other*
moments (each action's mean one-frame move, or the runs in the episodes where a key happened to be
held), and the two disagree by up to 2x (walls and the opponent stop the real player).
The collected episodes are reproducible instead: the emulator is deterministic
(``repeat_action_probability`` 0) and every episode records its env seed and settings, so replaying
its actions from ``reset`` reaches any frame exactly (checked against the recorded frame), and from
there the real game can be played on under any keys. The model, from the same context under the
same keys, should then draw the player where the game puts it, context by context.

One pass per episode: its contexts are visited in order, the emulator stepping on from the last
one; at each, the state is saved (``GameEnv.snapshot``), every action held from it, and restored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from worldsim.errors import WorldsimError


class NotReplayable(WorldsimError):
    """An episode that cannot be replayed to reproduce its frames (no seed, sticky actions, another game)."""


def replay_env(meta: dict, name: str):
    """A fresh game with the settings an episode was recorded under."""
    from worldsim.envs.base import EnvConfig
    from worldsim.envs.registry import make_env
    from worldsim.envs.tiny import TINY_ENV_ID, TinyConfig, TinyGame

    if "seed" not in meta:
        raise NotReplayable(f"episode '{name}' records no env seed (not from 'worldsim collect'); its game cannot be replayed")
    if float(meta.get("repeat_action_probability", 0.0)) != 0.0:
        raise NotReplayable(f"episode '{name}' was recorded with sticky actions "
                            f"(repeat_action_probability {meta['repeat_action_probability']}): a replay would not repeat it")
    cfg = EnvConfig(env_id=meta["env_id"], frameskip=int(meta.get("frameskip", 4)),
                    full_action_space=bool(meta.get("full_action_space", False)),
                    max_episode_steps=meta.get("max_episode_steps"))
    if cfg.env_id == TINY_ENV_ID:
        return TinyGame(tiny=TinyConfig(**meta.get("tiny", {})), cfg=cfg)
    return make_env(cfg)


def held_frames(episodes: Sequence, items: Sequence[tuple[int, int]], context: int, actions: dict[str, int],
                frames: int) -> dict[str, np.ndarray]:
    """For each (episode index, context start) of ``items``: the real game's next ``frames`` frames under
    each action of ``actions`` (name -> index) held from the context's last frame, (B, frames, R, R, 3)
    uint8 per name at the episodes' resolution, in ``items`` order. A game that ends while a key is held
    repeats its last frame.
    Raises ``NotReplayable`` when an episode cannot be replayed or its replay does not reproduce it."""
    from worldsim.data.episode import read_episode
    from worldsim.data.frames import resize_frames

    resolution = episodes[0].frames.shape[1]  # the model's: the evaluation episodes are resized to it
    out = {name: np.zeros((len(items), frames, resolution, resolution, 3), np.uint8) for name in actions}
    by_episode: dict[int, list[tuple[int, int]]] = {}
    for row, (e, start) in enumerate(items):
        by_episode.setdefault(e, []).append((start + context - 1, row))  # the context's last frame index
    for e, targets in by_episode.items():
        ep = episodes[e]
        meta = read_episode(ep.path, load_frames=False).meta
        env = replay_env(meta, ep.name)
        try:
            obs = env.reset(seed=int(meta["seed"]))
            t = 0
            for target, row in sorted(targets):
                while t < target:
                    obs, *_ = env.step(int(ep.actions[t]))
                    t += 1
                if not np.array_equal(resize_frames(obs[None], resolution)[0], ep.frames[t]):
                    raise NotReplayable(f"replaying episode '{ep.name}' does not reproduce its frame {t} (another "
                                        f"emulator version or settings?); its real counterfactuals are unavailable")
                saved = env.snapshot()
                for name, a in actions.items():
                    env.restore(saved)
                    last, over = obs, False
                    for f in range(frames):
                        if not over:
                            last, _, terminated, truncated = env.step(a)
                            over = terminated or truncated
                        out[name][row, f] = resize_frames(last[None], resolution)[0]
                env.restore(saved)
        finally:
            env.close()
    return out
