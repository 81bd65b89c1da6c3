"""Frame sources a Session drives: the world model (``ModelBackend``) or the real game (``EnvBackend``).

Boundary: a backend turns one action into the next frame(s), synchronously, on whatever thread
calls it; it knows nothing of threads, keys or displays. Both speak the same small interface:

    frames, actions = backend.reset(seed)   # context shown first: frames (K, H, W, 3) uint8 and
                                            # actions (K-1,) for frames 0..K-2 (actions[t] was chosen
                                            # after frames[t]); the last frame's action is the player's first
    frames, info = backend.step(action)     # (C, H, W, 3) uint8 produced by ``action``
    backend.configure(steps=2, chunk=1)     # live switch of the sampling settings
    twin = backend.fresh()                  # an independent copy for a restarted worker

The model backend keeps a short history of the frames it generated with the action that produced
each, so a settings switch rebuilds the engine and re-prefills from what the player was just
seeing: play continues instead of jumping back to the shipped context.

On the CPU it creates the compiled forwards of each cache layout it plays
(``worldsim.engine.aot.CompiledForwards``, per ``compiled=``) and hands them to every engine it makes;
finding, building, loading and switching to them is theirs. On CUDA the same place creates the CUDA
graphs of those forwards (``worldsim.engine.cuda_graphs.GraphForwards``; ``compiled="off"``: eager),
generation runs on a stream of its own (nothing else in the process queues behind it or before it), and
``prepare`` plays a short untimed session first, so that kernel compiles, library set-up, allocator
growth and graph captures all happen before the first frame.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from worldsim.data.frames import to_model, to_uint8
from worldsim.engine import Engine, EngineConfig, aot, cuda_graphs
from worldsim.engine.cpu_pack import pack_linears


@dataclass
class Context:
    """Frames the model starts from: ``actions[t]`` was chosen after ``frames[t]`` and produced ``frames[t + 1]``."""

    frames: np.ndarray  # (K, H, W, 3) uint8 at model resolution
    actions: np.ndarray  # (K,) int64


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
        # per (window, sink, chunk, batch): one package each, kept across settings switches
        self._compiled: dict[tuple[int, int, int, int], aot.CompiledForwards | cuda_graphs.GraphForwards] = {}
        self._stream = None  # CUDA: the generation stream (created by the worker that generates)

    def __getstate__(self):  # to a process worker: loaded graphs, threads and processes stay behind
        state = dict(self.__dict__)
        state["_compiled"] = {}
        state["engine"] = None
        state["_stream"] = None
        return state

    @property
    def compiled_forwards(self) -> "aot.CompiledForwards | cuda_graphs.GraphForwards | None":
        """The fast forwards of the current settings' cache layout and chunk size (None: off, or neither the
        CPU nor CUDA): compiled on the CPU (``worldsim.engine.aot.CompiledForwards``), CUDA graphs on a GPU
        (``worldsim.engine.cuda_graphs.GraphForwards``); created on first use, their life cycle their own."""
        kind = torch.device(self.device).type
        if self.compiled_mode == "off" or kind not in ("cpu", "cuda"):
            return None
        batch = self.cfg.streams  # classifier-free guidance: the player's stream and the one without keys
        layout = (self.cfg.window, self.cfg.sink, self.cfg.chunk, batch)
        fw = self._compiled.get(layout)
        if fw is None and kind == "cuda":  # captured in this worker, over its engines' caches
            fw = self._compiled[layout] = cuda_graphs.GraphForwards(self.model, *layout[:3], batch=batch)
        elif fw is None:
            build_from = None
            if self.compiled_mode == "auto" and self.source is not None:
                build_from = {**self.source, "guidance": self.cfg.guidance}
            fw = self._compiled[layout] = aot.CompiledForwards(self.model, *layout, build_from=build_from, log=_warn)
        return fw

    def _on_stream(self):
        """CUDA: run on the generation stream, a high-priority stream that does not synchronise with the
        default one (nothing else the process queues there waits on generation, or generation on it)."""
        if torch.device(self.device).type != "cuda":
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device, priority=-1)
        return torch.cuda.stream(self._stream)

    def _history_len(self, cfg: EngineConfig) -> int:
        return max(len(self.context.actions), cfg.sink + cfg.window)

    @property
    def num_actions(self) -> int:
        return self.no_action

    @property
    def settings(self) -> dict[str, Any]:
        compiled = self.engine is not None and self.engine.compiled is not None and self.engine.compiled.ready
        palette = getattr(self.model, "palette", None) if self.cfg.palette else None
        return {"chunk": self.cfg.chunk, "steps": len(self.cfg.sigmas()) - 1, "sampler": self.cfg.sampler,
                "compiled": compiled, "palette": len(palette) if palette is not None else 0}  # colours snapped to

    def describe(self) -> dict[str, Any]:
        fw = self.compiled_forwards
        return {"backend": "model", "model": self.name, "engine": dataclasses.asdict(self.cfg),
                "compiled": {"mode": self.compiled_mode, "state": fw.state if fw is not None else "off",
                             "package": str(fw.path) if fw is not None and fw.path is not None else None}}

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
        engine = Engine(self.model, self.cfg, device=self.device, dtype=self.dtype,
                        action_meanings=self.action_meanings)
        try:
            aot.attach(engine, self.compiled_forwards)  # used once built and loaded; eager until then
        except aot.AotError as e:  # the weights changed since the package was found: eager, never stale graphs
            _warn(f"compiled forwards: {e}; playing eagerly")
        return engine

    def prepare(self) -> None:
        """Load the compiled forwards if they are built (~10 ms, and ~10 ms to hash the weights for their key; a
        worker calls this as it starts, outside the stall clock); with ``compiled="auto"`` start building them
        in the background if not. On CUDA: warm up instead (``_warm_up``)."""
        if torch.device(self.device).type == "cuda":
            with self._on_stream():
                self._warm_up()
            return
        fw = self.compiled_forwards
        if fw is not None:
            fw.poll(wait=True)

    def _warm_up(self) -> None:
        """A short untimed session on the current settings before the first frame: the first launches compile
        the Triton kernels, cuBLAS and the caching allocator set up, the steady-state CUDA graphs are captured
        (the engine's next reset keeps the cache buffers they read). Nothing of it is shown or kept."""
        self.reset(self._seed)
        C = self.cfg.chunk
        for _ in range((self.cfg.sink + self.cfg.window) // C + 3):  # fills the cache from any context, then replays
            to_uint8(self.engine.step(torch.zeros((1, C), dtype=torch.long))[0])

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self._on_stream():  # the cache is allocated and written on the stream that reads it
            return self._reset(seed)

    def _reset(self, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
        self._seed = self.cfg.seed if seed is None else int(seed)
        if self.engine is None:
            self.engine = self._new_engine()
        self.engine.reset(1, seed=self._seed)
        frames = self.context.frames
        # prefill takes the action that PRODUCED each frame: [no action, a_0, ..., a_{K-2}]
        prev = np.concatenate([[self.no_action], self.context.actions[:-1]]).astype(np.int64)
        x = to_model(frames)  # (K, 3, H, W)
        self.engine.prefill(x[None], torch.from_numpy(prev)[None])
        self._history.clear()
        for f, a in zip(x, prev):
            self._history.append((f, int(a)))
        return frames, self.context.actions[:-1].copy()

    def step(self, action: int) -> tuple[np.ndarray, dict]:
        C = self.cfg.chunk
        with self._on_stream():
            x = self.engine.step(torch.full((1, C), int(action), dtype=torch.long))  # (1, C, 3, H, W)
            for f in x[0]:
                self._history.append((f, int(action)))
            frames = to_uint8(x[0])
        # The engine's own time for the chunk: the player's breakdown tells it from the transfer around it.
        return frames, {"model_ms": self.engine.last_step_ms}

    def configure(self, steps: int | None = None, chunk: int | None = None) -> None:
        """New sampling settings: a new engine on the same weights, re-prefilled with the recent frames."""
        with self._on_stream():
            self._configure(steps, chunk)

    def _configure(self, steps: int | None, chunk: int | None) -> None:
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
            x = torch.stack([f.to(self.device) for f, _ in history])[None]  # (1, n, 3, H, W): context frames are on the host
            a = torch.tensor([[a for _, a in history]], dtype=torch.long)  # (1, n)
            self.engine.prefill(x, a)
            if isinstance(self.engine.compiled, cuda_graphs.GraphForwards):  # captured now, not on the next frame
                self.engine.compiled.capture(self.engine.cache)


COMPILED_MODES = ("off", "cached", "auto")


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
