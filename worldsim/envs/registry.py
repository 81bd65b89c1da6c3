"""``make_env``: one door to every game, by id. Unknown ids fail with the closest known names."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from worldsim.envs.atari import AtariEnv, ale_env_ids
from worldsim.envs.base import EnvConfig, GameEnv
from worldsim.envs.tiny import TINY_ENV_ID, TinyGame
from worldsim.errors import ConfigError, WorldsimError

BUILTIN_ENV_IDS = (TINY_ENV_ID,)


def known_env_ids() -> list[str]:
    return list(BUILTIN_ENV_IDS) + list(ale_env_ids())


def check_env_id(env_id: str) -> str:
    """Return ``env_id`` if some game answers to it, else raise WorldsimError naming the closest ids."""
    known = known_env_ids()
    if env_id in known:
        return env_id
    # Compare case-insensitively and also by the bare game name, so "boxing" finds "ALE/Boxing-v5".
    v5 = [k for k in known if k.startswith("ALE/") or k in BUILTIN_ENV_IDS]
    by_lower = {k.lower(): k for k in v5}
    probe = str(env_id).lower()
    close = difflib.get_close_matches(probe, list(by_lower), n=3, cutoff=0.6)
    if not close:
        bare = {k.lower().removeprefix("ale/").split("-")[0]: k.lower() for k in v5}
        core = probe.removeprefix("ale/").split("-")[0]
        close = [bare[m] for m in difflib.get_close_matches(core, list(bare), n=3, cutoff=0.6)]
    names = [by_lower[c] for c in close]
    hint = f"did you mean {', '.join(repr(n) for n in names)}?" if names else \
        f"use an ALE id such as 'ALE/Boxing-v5' or the built-in '{TINY_ENV_ID}'"
    if not ale_env_ids():
        hint += " (ale-py is not installed, so no Atari game is available)"
    raise WorldsimError(f"unknown game id '{env_id}'; {hint}")


def make_env(cfg_or_env_id: EnvConfig | str | dict | None = None, **overrides: Any) -> GameEnv:
    """A ready game. ``make_env('ALE/Pong-v5', frameskip=2)`` or ``make_env(EnvConfig(...))``."""
    if cfg_or_env_id is None:
        cfg = EnvConfig()
    elif isinstance(cfg_or_env_id, EnvConfig):
        cfg = cfg_or_env_id
    elif isinstance(cfg_or_env_id, str):
        cfg = EnvConfig(env_id=cfg_or_env_id)
    elif isinstance(cfg_or_env_id, dict):
        overrides = {**cfg_or_env_id, **overrides}
        cfg = EnvConfig()
    else:
        raise ConfigError(f"make_env takes an EnvConfig, a game id or a dict, not {type(cfg_or_env_id).__name__}")
    fields = [f.name for f in dataclasses.fields(EnvConfig)]
    for k in overrides:
        if k not in fields:
            near = difflib.get_close_matches(k, fields, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown env setting '{k}'{hint}")
    cfg = dataclasses.replace(cfg, **overrides)
    check_env_id(cfg.env_id)
    if cfg.env_id == TINY_ENV_ID:
        return TinyGame(cfg=cfg)
    return AtariEnv(cfg)
