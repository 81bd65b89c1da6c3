"""Frame sources a Session drives: the world model (``ModelBackend``) or the real game (``EnvBackend``).

Boundary: a backend turns one action into the next frame(s), synchronously, on whatever thread
calls it; it knows nothing of threads, keys or displays. Both speak the same small interface:

    frames, actions = backend.reset(seed)   # context shown first: frames (K, H, W, 3) uint8 and
                                            # actions (K-1,) for frames 0..K-2 (DESIGN alignment);
                                            # the last frame's action is the player's first
    frames, info = backend.step(action)     # (C, H, W, 3) uint8 produced by ``action``
    backend.configure(steps=2, chunk=1)     # live switch of the sampling settings
    twin = backend.fresh()                  # an independent copy for a restarted worker

The model backend keeps a short history of the frames it generated with the action that produced
each, so a settings switch rebuilds the engine and re-prefills from what the player was just
seeing: play continues instead of jumping back to the shipped context.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from worldsim.engine import Engine, EngineConfig
from worldsim.engine.cpu_pack import pack_linears


@dataclass
class Context:
    """Frames the model starts from, with DESIGN alignment: ``actions[t]`` was chosen after ``frames[t]``."""

    frames: np.ndarray  # (K, H, W, 3) uint8 at model resolution
    actions: np.ndarray  # (K,) int64


def frames_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, 3, H, W) float in [-1, 1] -> (C, H, W, 3) uint8."""
    return ((x.float().permute(0, 2, 3, 1) + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def frames_from_uint8(frames: np.ndarray) -> torch.Tensor:
    """(K, H, W, 3) uint8 -> (K, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class ModelBackend:
    """The world model through an ``Engine``: one ``step`` = one chunk of ``cfg.chunk`` frames."""

    kind = "model"

    def __init__(self, model, engine_cfg: EngineConfig, context: Context, *, device="cpu",
                 dtype=torch.float32, action_meanings: list[str] | None = None, name: str = "model",
                 compiled: str = "off", source: dict[str, str] | None = None):
        if compiled not in COMPILED_MODES:
            raise ValueError(f"compiled={compiled!r}: expected one of {', '.join(COMPILED_MODES)}")
        self.model = model
        self.cfg = engine_cfg
        self.context = context
        self.device, self.dtype = device, dtype
        self.no_action = model.cfg.num_actions
        self.action_meanings = list(action_meanings or [str(i) for i in range(self.no_action)])
        self.name = name
        self.engine: Engine | None = None
        self._seed = engine_cfg.seed
        # (frame (3, H, W) in [-1, 1], the action that produced it) for the last frames shown
        self._history: collections.deque = collections.deque(maxlen=self._history_len(engine_cfg))
        # Compiled forwards (worldsim.engine.aot): "off"; "cached" (use them if built); "auto" (use them if
        # built, else build them in a background process and switch to them when ready). ``source`` is
        # what a background build loads: {"checkpoint": path, "dtype": "bf16"}.
        self.compiled_mode, self.source = compiled, source
        self._aots: dict[tuple[int, int, int], _AotState] = {}  # per (window, sink, chunk): one package each

    def __getstate__(self):  # to a process worker: loaded graphs, threads and processes stay behind
        state = dict(self.__dict__)
        state["_aots"] = {}
        state["engine"] = None
        return state

    @property
    def _aot(self) -> "_AotState":
        """The compiled-forwards state of the current settings' cache layout and chunk size."""
        layout = (self.cfg.window, self.cfg.sink, self.cfg.chunk)
        st = self._aots.get(layout)
        if st is None:
            st = self._aots[layout] = _AotState(layout=layout)
        return st

    def _history_len(self, cfg: EngineConfig) -> int:
        return max(len(self.context.actions), cfg.sink + cfg.window)

    @property
    def num_actions(self) -> int:
        return self.no_action

    @property
    def settings(self) -> dict[str, Any]:
        return {"chunk": self.cfg.chunk, "steps": len(self.cfg.sigmas()) - 1, "sampler": self.cfg.sampler,
                "compiled": self.engine is not None and self.engine.compiled is not None}

    def describe(self) -> dict[str, Any]:
        return {"backend": "model", "model": self.name, "engine": dataclasses.asdict(self.cfg),
                "compiled": {"mode": self.compiled_mode, "state": self._aot.state,
                             "package": str(self._aot.forwards.path) if self._aot.forwards is not None else None}}

    def _copy(self, cfg: EngineConfig) -> "ModelBackend":
        return ModelBackend(self.model, cfg, self.context, device=self.device, dtype=self.dtype,
                            action_meanings=self.action_meanings, name=self.name, compiled=self.compiled_mode,
                            source=self.source)

    def fresh(self) -> "ModelBackend":
        return self._copy(self.cfg)

    def with_settings(self, steps: int | None = None, chunk: int | None = None) -> "ModelBackend":
        """A fresh copy that samples with other settings (before a session starts)."""
        cfg = self.cfg
        if steps is not None:
            cfg = dataclasses.replace(cfg, steps=int(steps), timesteps=[])
        if chunk is not None:
            cfg = dataclasses.replace(cfg, chunk=int(chunk), window=max(cfg.window, int(chunk)))
        cfg.validate()
        return self._copy(cfg)

    def _new_engine(self) -> Engine:
        if torch.device(self.device).type == "cpu":  # packed linears, GELU fused (worldsim.engine.cpu_pack): ~9% a frame
            pack_linears(self.model)
        engine = Engine(self.model, self.cfg, device=self.device, dtype=self.dtype)
        self._attach(engine)
        return engine

    # -- compiled forwards (worldsim.engine.aot) -----------------------------------------------
    def prepare(self) -> None:
        """Load the compiled forwards if they are built (~10 ms, and ~10 ms to hash the weights for their key; a
        worker calls this as it starts, outside the stall clock); with ``compiled="auto"`` start building them
        in the background if not."""
        self._poll_compiled(load_now=True)

    def _aot_usable(self) -> bool:
        return self.compiled_mode != "off" and torch.device(self.device).type == "cpu"

    def _poll_compiled(self, load_now: bool = False) -> None:
        st = self._aot
        if not self._aot_usable() or st.state in ("ready", "unavailable", "loading"):
            return
        now = time.monotonic()
        if not load_now and now < st.next_poll:
            return
        st.next_poll = now + COMPILED_POLL_S
        from worldsim.engine import aot

        window, sink, chunk = st.layout
        if not st.key:  # the key hashes the weights: once per layout
            st.key = aot.package_key(self.model, window, sink, chunk)
        path = aot.cache_root() / st.key
        if (path / "meta.json").is_file():
            if load_now:
                self._load_compiled(st, path)
            else:  # mid-session: load beside generation, switch when loaded
                st.state = "loading"
                threading.Thread(target=self._load_compiled, args=(st, path, True), daemon=True,
                                 name="worldsim-aot-load").start()
            return
        if self.compiled_mode != "auto" or self.source is None:
            return
        if st.build is None and aot.build_running(st.key):  # another worker's build (a restarted worker's predecessor)
            st.state = "building"
            return
        missing = aot.compiler_missing() if st.build is None else None
        if missing:
            st.state = "unavailable"
            _warn(f"compiled forwards: {missing}")
            return
        if st.build is None:
            st.build = aot.build_in_background(self.source["checkpoint"], self.source.get("dtype", "auto"), window, sink,
                                               chunk)
            st.state = "building" if st.build is not None else "unavailable"
            if st.build is None:
                _warn("compiled forwards: could not start the background build; playing eagerly")
            else:
                what = "frame-wise" if chunk == 1 else f"chunk-wise (C={chunk})"
                _warn(f"compiling the model's {what} forwards for this CPU in the background (1-3 minutes; playing "
                      f"meanwhile, faster once done; log: {aot.cache_root() / 'build.log'})")
        elif st.build.poll() is not None:  # the build ended without a package: a lock held elsewhere, or a failure
            st.build = None
            st.failures += 1
            if st.failures >= 3:
                st.state = "unavailable"
                _warn(f"compiled forwards: the background build failed ({aot.cache_root() / 'build.log'}); "
                      f"playing eagerly (worldsim compile shows why)")

    def _load_compiled(self, st: "_AotState", path, announce: bool = False) -> None:
        from worldsim.engine import aot

        try:
            forwards = aot.CompiledForwards.load(path)
        except aot.AotError as e:
            st.failures += 1
            if self.compiled_mode == "auto" and self.source is not None and st.failures < 3:
                # a damaged package in our own cache (a disk fault, a copy cut short): set it aside and
                # build it again, as an unattended booth must
                aot.discard(path)
                st.state, st.next_poll = "idle", 0.0
                _warn(f"compiled forwards: {e}; set aside, building them again (playing eagerly meanwhile)")
                return
            st.state = "unavailable"
            _warn(f"compiled forwards: {e}; playing eagerly")
            return
        st.forwards, st.state = forwards, "ready"
        if announce:  # the switch mid-session (the step after this attaches them)
            what = "frame-wise" if st.layout[2] == 1 else f"chunk-wise (C={st.layout[2]})"
            _warn(f"compiled forwards loaded ({path}): {what} steps run them from now on")

    def _attach(self, engine: Engine) -> None:
        from worldsim.engine import aot

        st = self._aots.get((engine.cfg.window, engine.cfg.sink, engine.cfg.chunk))
        if st is None or st.forwards is None or engine.compiled is st.forwards:
            return
        try:  # the key of this layout is known: no second hash of the weights
            aot.attach(engine, st.forwards, key=st.key)
        except aot.AotError as e:  # not this model's (weights changed since): eager for this layout
            st.forwards, st.state = None, "unavailable"
            _warn(f"compiled forwards: {e}; playing eagerly")

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        self._seed = self.cfg.seed if seed is None else int(seed)
        if self.engine is None:
            self.engine = self._new_engine()
        self.engine.reset(1, seed=self._seed)
        frames = self.context.frames
        # prefill takes the action that PRODUCED each frame: [no action, a_0, ..., a_{K-2}]
        prev = np.concatenate([[self.no_action], self.context.actions[:-1]]).astype(np.int64)
        x = frames_from_uint8(frames)  # (K, 3, H, W)
        self.engine.prefill(x[None], torch.from_numpy(prev)[None])
        self._history.clear()
        for f, a in zip(x, prev):
            self._history.append((f, int(a)))
        return frames, self.context.actions[:-1].copy()

    def step(self, action: int) -> tuple[np.ndarray, dict]:
        self._poll_compiled()
        if self.engine.compiled is None and self.engine.compiled_error is None and self._aot.forwards is not None:
            self._attach(self.engine)  # loaded mid-session (an engine that dropped them does not take them back)
        C = self.cfg.chunk
        x = self.engine.step(torch.full((1, C), int(action), dtype=torch.long))  # (1, C, 3, H, W)
        for f in x[0]:
            self._history.append((f, int(action)))
        # The engine's own time for the chunk: the player's breakdown tells it from the transfer around it.
        return frames_to_uint8(x[0]), {"model_ms": self.engine.last_step_ms}

    def configure(self, steps: int | None = None, chunk: int | None = None) -> None:
        """New sampling settings: a new engine on the same weights, re-prefilled with the recent frames."""
        cfg = self.with_settings(steps, chunk).cfg  # explicit sigmas are dropped: they would override steps
        if cfg == self.cfg and self.engine is not None:
            return
        history = list(self._history)
        self.cfg = cfg
        self._history = collections.deque(history, maxlen=self._history_len(cfg))
        self.engine = self._new_engine()
        self._seed += 1  # a new noise stream; the same one would repeat the last frames' noise
        self.engine.reset(1, seed=self._seed)
        if history:
            x = torch.stack([f for f, _ in history])[None]  # (1, n, 3, H, W)
            a = torch.tensor([[a for _, a in history]], dtype=torch.long)  # (1, n)
            self.engine.prefill(x, a)


COMPILED_MODES = ("off", "cached", "auto")
COMPILED_POLL_S = 2.0  # how often a session without compiled forwards looks for a finished build


@dataclass
class _AotState:
    """A backend's compiled forwards: never pickled (a process worker loads its own)."""

    layout: tuple  # (window, sink, chunk): what its package is built for
    state: str = "idle"  # idle | building | loading | ready | unavailable
    forwards: Any = None  # worldsim.engine.aot.CompiledForwards once loaded
    build: Any = None  # the background build's Popen
    key: str = ""  # the package key (hashes the weights: computed once)
    next_poll: float = 0.0
    failures: int = 0


def _warn(msg: str) -> None:
    print(f"play.py: {msg}", file=sys.stderr, flush=True)


class EnvBackend:
    """The real game (a ``worldsim.envs.GameEnv``): one ``step`` = one frame; episodes end by the game."""

    kind = "env"

    def __init__(self, env_factory: Callable[[], Any]):
        self.env_factory = env_factory
        self.env = env_factory()
        self.action_meanings = list(self.env.action_meanings)
        self.name = getattr(self.env, "env_id", "env")

    @property
    def num_actions(self) -> int:
        return len(self.action_meanings)

    @property
    def settings(self) -> dict[str, Any]:
        return {"chunk": 1, "steps": 0, "sampler": "emulator"}

    def describe(self) -> dict[str, Any]:
        d = self.env.describe() if hasattr(self.env, "describe") else {}
        return {"backend": "env", "model": self.name, **d}

    def fresh(self) -> "EnvBackend":
        self.close()
        return EnvBackend(self.env_factory)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        frame = self.env.reset(seed)
        return np.asarray(frame, dtype=np.uint8)[None], np.zeros((0,), np.int64)

    def step(self, action: int) -> tuple[np.ndarray, dict]:
        frame, reward, terminated, truncated = self.env.step(int(action))
        info = {"reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated)}
        return np.asarray(frame, dtype=np.uint8)[None], info

    def configure(self, steps: int | None = None, chunk: int | None = None) -> None:
        pass  # the emulator has no sampling settings

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # a crashed emulator may fail to close; the replacement does not care
                pass
