"""worldsim: a real-time world-model game runtime.

Layers, each given the one below in its constructor:
network (worldsim.model) -> denoiser/schedule (worldsim.engine.schedule) -> engine (worldsim.engine)
-> session (worldsim.runtime) -> app (worldsim.app, pygame only there) -> play.py.
"""

__version__ = "0.1.0"
