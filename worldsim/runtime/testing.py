"""Random-weight playable checkpoints for tests and latency benchmarks (speed does not depend on weights).

``write_random_checkpoint(path, size='tiny')`` writes a file in the shipped-model convention
(``model.*`` weights, ``context.frames`` / ``context.actions``, meta ``engine``), so every code path
of the player runs before a trained model exists. The output layers are perturbed away from their
zero init, so generated frames actually change with the noise and the actions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

# ALE's full action set, in ALE's order (Boxing uses all 18).
ALE_ACTIONS = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
               "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
               "DOWNLEFTFIRE"]


def tiny_model_config(num_actions: int = 6):
    from worldsim.model import ModelConfig

    return ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=num_actions)


def _tiny_game_context(k: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` frames of the built-in game under a short scripted walk, resized to ``resolution``."""
    from worldsim.envs.tiny import TinyGame
    from worldsim.data.frames import resize_frames

    game = TinyGame()
    frames, actions = [game.reset(seed)], []
    rng = np.random.default_rng(seed)
    for _ in range(k - 1):
        a = int(rng.integers(game.num_actions))
        actions.append(a)
        frames.append(game.step(a)[0])
    actions.append(0)
    return resize_frames(np.stack(frames), resolution), np.asarray(actions, np.int64)


def write_random_checkpoint(path: str | Path, size: str = "tiny", *, context_frames: int = 4, seed: int = 0,
                            engine: dict | None = None, model_config=None) -> Path:
    """A playable random-weight checkpoint. ``size``: 'tiny' (16x16, 6 actions of worldsim/Tiny-v0) or
    'default' (``ModelConfig()`` with Boxing's 18 actions)."""
    from worldsim.checkpoint import save_checkpoint
    from worldsim.engine import EngineConfig
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
    from worldsim.model import ModelConfig, WorldDiT

    if model_config is not None:
        mc = model_config
    elif size == "tiny":
        mc = tiny_model_config(len(TINY_ACTIONS))
    elif size == "default":
        mc = ModelConfig(num_actions=len(ALE_ACTIONS))
    else:
        raise ValueError(f"size must be 'tiny' or 'default', got {size!r}")
    if mc.num_actions == len(TINY_ACTIONS):
        env_id, meanings = TINY_ENV_ID, list(TINY_ACTIONS)
    elif mc.num_actions == len(ALE_ACTIONS):
        env_id, meanings = "ALE/Boxing-v5", list(ALE_ACTIONS)
    else:
        env_id, meanings = "unknown", [str(i) for i in range(mc.num_actions)]
    torch.manual_seed(seed)
    model = WorldDiT(mc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("out.", "ada.")):
                p.add_(torch.randn_like(p) * 0.05)
    frames, actions = _tiny_game_context(context_frames, mc.resolution, seed)
    actions = np.minimum(actions, mc.num_actions - 1)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["context.frames"] = torch.from_numpy(frames)
    tensors["context.actions"] = torch.from_numpy(actions)
    meta = {"role": "student", "stage": "random", "step": 0, "model_config": dataclasses.asdict(mc),
            "env_id": env_id, "action_meanings": meanings, "resolution": mc.resolution,
            "engine": {**dataclasses.asdict(EngineConfig()), **(engine or {})}}
    return save_checkpoint(path, tensors, meta)


class SpyBackend:
    """Wraps a backend and logs what reaches it: every ``step`` action and its frames, resets,
    configures. ``fresh()`` (a restarted worker) shares the log, so a test sees the whole session."""

    def __init__(self, inner, log: dict | None = None):
        self.inner = inner
        self.log = log if log is not None else {"actions": [], "frames": [], "resets": 0, "configures": [],
                                                "events": []}

    def __getattr__(self, name):  # action_meanings, settings, model, kind, cfg, ...
        return getattr(self.inner, name)

    @property
    def settings(self):
        return self.inner.settings

    def fresh(self) -> "SpyBackend":
        return SpyBackend(self.inner.fresh(), self.log)

    def with_settings(self, **kw) -> "SpyBackend":
        return SpyBackend(self.inner.with_settings(**kw), self.log)

    def reset(self, seed=None):
        self.log["resets"] += 1
        self.log["events"].append(("reset", seed))
        return self.inner.reset(seed)

    def step(self, action):
        frames, info = self.inner.step(action)
        self.log["actions"].append(int(action))
        self.log["frames"].append(frames)
        self.log["events"].append(("step", int(action), frames))
        return frames, info

    def configure(self, **kw):
        self.log["configures"].append(dict(kw))
        return self.inner.configure(**kw)


class HangingBackend:
    """Wraps a backend; its ``hang_at``-th ``step`` (counted from 0) sleeps for ``seconds``. Picklable,
    so a ``ProcessBackend`` can run it in a child process: a hung generation that only a kill can end."""

    def __init__(self, inner, hang_at: int = 3, seconds: float = 60.0):
        self.inner, self.hang_at, self.seconds = inner, hang_at, seconds
        self.steps = 0

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def settings(self):
        return self.inner.settings

    def fresh(self) -> "HangingBackend":
        return HangingBackend(self.inner.fresh(), hang_at=10**9, seconds=self.seconds)  # a restart runs clean

    def reset(self, seed=None):
        return self.inner.reset(seed)

    def step(self, action):
        import time

        if self.steps == self.hang_at:
            time.sleep(self.seconds)
        self.steps += 1
        return self.inner.step(action)

    def configure(self, **kw):
        return self.inner.configure(**kw)


def wait_for(cond, timeout: float = 5.0, poll: float = 0.002) -> bool:
    """Poll ``cond()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


def generation_children(ppid: int) -> list[int]:
    """Live generation processes (``ProcessBackend`` children: multiprocessing's spawn entry point) of
    process ``ppid``, read from /proc (Linux); tests that kill or stop them at chosen moments use it."""
    import os

    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state, parent = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):  # gone meanwhile
            continue
        if int(parent) == ppid and state != "Z" and b"spawn_main" in cmdline:
            pids.append(int(name))
    return sorted(pids)
