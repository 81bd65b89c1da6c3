"""Autoregressive generation with a KV cache (rolling window + sinks) and a few-step sampler.

The engine knows nothing of pygame, games or files: frames and actions in, frames out.
"""

from worldsim.engine.engine import Engine, EngineConfig
from worldsim.engine.kv_cache import KVCache

__all__ = ["Engine", "EngineConfig", "KVCache"]
