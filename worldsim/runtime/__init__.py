"""The runtime between the engine and the app: a Session runs generation on a worker thread.

Boundary: no pygame, no keys, no windows. The app writes actions into the Session's latest-wins
slot and reads finished chunks of frames with their timing; the Session decides when to generate,
applies resets and live settings switches between chunks, and reports faults so a supervisor can
restart the worker. Backends (``ModelBackend``: the world model; ``EnvBackend``: the real game)
make the frames; ``ProcessBackend`` runs one in a child process (how play.py runs the model).
"""

from worldsim.runtime.backend import Context, EnvBackend, ModelBackend
from worldsim.runtime.loading import DEFAULT_CHECKPOINT, Playable, load_playable
from worldsim.runtime.process_backend import ProcessBackend
from worldsim.runtime.session import Chunk, Health, Session, SessionConfig
from worldsim.runtime.slot import ActionSlot

__all__ = ["ActionSlot", "Chunk", "Context", "DEFAULT_CHECKPOINT", "EnvBackend", "Health", "ModelBackend",
           "Playable", "ProcessBackend", "Session", "SessionConfig", "load_playable"]
