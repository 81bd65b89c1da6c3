"""Games to collect from: real Atari games (gymnasium + ale-py) and the built-in ``worldsim/Tiny-v0``.

Boundary: environments and the policies that play them. They hand out uint8 ``(H, W, 3)`` frames at
the game's native resolution and take integer actions; recording and resizing live in ``worldsim.data``.

    env = make_env("ALE/Boxing-v5")            # or make_env(EnvConfig(...), frameskip=2)
    policy = make_policy("sticky", env, seed=0)
    frame = env.reset(seed=0)
    frame, reward, terminated, truncated = env.step(policy(frame))
"""

from worldsim.envs.base import EnvConfig, GameEnv
from worldsim.envs.policies import Policy, make_policy
from worldsim.envs.registry import check_env_id, known_env_ids, make_env
from worldsim.envs.tiny import TINY_ENV_ID, TinyConfig, TinyGame

__all__ = ["EnvConfig", "GameEnv", "make_env", "make_policy", "Policy", "check_env_id", "known_env_ids",
           "TINY_ENV_ID", "TinyConfig", "TinyGame"]
