"""Load a playable model: weights, recommended engine settings and the context frames it starts from.

Boundary: files in, a ready ``ModelBackend`` out. Device and dtype come from ``worldsim.device``.
Where bf16 is the compute dtype (CUDA, and CPUs with fast bf16) the weights themselves are cast to
bf16 and the engine runs without autocast: autocast re-casts every weight on every forward, which
on the CPU costs more than the matmuls of a small model and on a GPU adds a launch per weight
(play.py on an H100 generated a 2-step frame in 20 ms with autocast against 10-16 ms for bf16
weights in `bench engine`). ``bench engine`` and the GPU tests time and check this same form.

A checkpoint without ``context.*`` tensors (e.g. straight from training) still plays: it starts
from a plain grey frame, or from an episode given as a plain ``.npz`` (``context_path``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.data.frames import resize_frames
from worldsim.engine import EngineConfig
from worldsim.errors import CheckpointError, DataError
from worldsim.paths import repo_file
from worldsim.runtime.backend import Context, ModelBackend

DEFAULT_CHECKPOINT = "assets/default.safetensors"


@dataclass
class Playable:
    backend: ModelBackend
    meta: dict[str, Any]
    path: str
    file_hash: str
    device: torch.device
    weights_dtype: torch.dtype
    note: str = ""  # anything the player should know (e.g. no shipped context)

    @property
    def action_meanings(self) -> list[str]:
        return self.backend.action_meanings

    @property
    def env_id(self) -> str:
        return str(self.meta.get("env_id", "unknown"))


def set_generation_threads(requested: int = 0) -> int:
    """Torch intra-op threads for generation; 0 = auto: every core but one, which stays free for the
    display loop. Why: the model's ops are small, and an OpenMP team that spans every core stalls
    at each op's barrier whenever one of its threads is descheduled (by our own display thread or
    anything else on the machine): measured on the 2-core target under load, 2 threads gave 3-10x
    slower and far jumpier steps than 1."""
    import os

    n = requested if requested > 0 else max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(n)
    return n


def load_context_npz(path: str | Path, resolution: int, k: int = 8, env_id: str | None = None,
                     action_meanings: list[str] | None = None) -> Context:
    """The last ``k`` frames and actions of a plain ``.npz`` episode, resized to the model as its training
    frames were (``worldsim.data.frames``). Checked once, here: the file (``read_episode``: header
    against file size, dtypes, lengths), the game (``env_id`` and ``action_meanings`` of the model, when
    given) and every action, with the step named."""
    from worldsim.data.episode import read_episode

    p = Path(path)
    if not p.is_file() or p.suffix != ".npz":
        raise DataError(f"context episode '{p}' not found or not a .npz; pass a plain .npz episode ('worldsim data "
                        f"export EPISODE OUT.npz' makes one)")
    ep = read_episode(p, mmap=False)
    if len(ep) < 1:
        raise DataError(f"context episode '{p}' has no frames; pass an episode with at least one frame")
    if env_id is not None and action_meanings is not None and (
            ep.env_id != env_id or list(ep.action_meanings) != list(action_meanings)):
        raise DataError(f"context episode '{p}' is {ep.env_id} ({ep.num_actions} actions) but the model plays "
                        f"{env_id} ({len(action_meanings)} actions); pass an episode of {env_id}")
    n = len(action_meanings) if action_meanings is not None else ep.num_actions
    bad = np.nonzero((ep.actions < 0) | (ep.actions >= n))[0]
    if len(bad):
        t = int(bad[0])
        raise DataError(f"context episode '{p}': action {int(ep.actions[t])} at step {t} is outside the action set "
                        f"0..{n - 1}; fix the episode's actions")
    return Context(resize_frames(np.asarray(ep.frames[-k:]), resolution), ep.actions[-k:].copy())


def _context_from(tensors: dict[str, torch.Tensor], model_cfg, meta) -> tuple[Context, str]:
    f, a = tensors.get("context.frames"), tensors.get("context.actions")
    R = model_cfg.resolution
    if f is None or a is None:
        grey = np.full((1, R, R, 3), 127, np.uint8)
        return Context(grey, np.zeros((1,), np.int64)), "no context frames in the checkpoint: starting from grey"
    if f.dtype != torch.uint8 or a.is_floating_point() or a.is_complex():
        raise CheckpointError(f"checkpoint context.frames / context.actions are {f.dtype} / {a.dtype}, not uint8 "
                              f"frames and integer actions; re-export the model")
    frames = f.numpy()
    actions = a.numpy().astype(np.int64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(actions) != len(frames):
        raise CheckpointError(f"checkpoint context.frames {tuple(frames.shape)} / context.actions {tuple(actions.shape)} "
                              f"do not form [K,H,W,3] + [K]; re-export the model")
    if bool(((actions < 0) | (actions >= model_cfg.num_actions)).any()):
        raise CheckpointError(f"checkpoint context.actions hold indices outside 0..{model_cfg.num_actions - 1}; re-export the model")
    return Context(resize_frames(frames, R), actions), ""


def load_playable(path: str | Path = DEFAULT_CHECKPOINT, *, device: str | None = None, dtype: str | None = None,
                  prefix: str = "model.", engine_overrides: dict[str, Any] | None = None,
                  context_path: str | Path | None = None, context_frames: int = 8) -> Playable:
    from worldsim.checkpoint import file_hash, load_checkpoint, load_weights
    from worldsim.config import from_dict
    from worldsim.device import pick_device, pick_dtype

    path = repo_file(path)
    if not path.is_file():
        hint = " (the default model ships in assets/; until it does, pass --checkpoint PATH)" \
            if str(path) == DEFAULT_CHECKPOINT else ""
        raise CheckpointError(f"checkpoint '{path}' not found{hint}")
    all_tensors, meta = load_checkpoint(path)
    weights = {k[len(prefix):]: v for k, v in all_tensors.items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"checkpoint '{path}' holds no '{prefix}*' tensors; pass a student or exported model")
    model = load_weights(weights, meta, path)
    dev = pick_device(device)
    want = pick_dtype(dev, dtype)
    model = model.to(dev).eval()
    engine_dtype = torch.float32
    weights_dtype = torch.float32
    if want != torch.float32:
        if dev.type in ("cpu", "cuda"):
            model = model.to(want)
            weights_dtype = want
        else:  # other backends (MPS): autocast over fp32 weights, the conservative form
            engine_dtype = want
    eng = from_dict(EngineConfig, dict(meta.get("engine") or {}), f"{path} engine settings")
    if engine_overrides:
        eng = dataclasses.replace(eng, **engine_overrides)
        if eng.window < eng.chunk:
            eng = dataclasses.replace(eng, window=eng.chunk)
    eng.validate()
    if eng.sampler == "renoise" and not eng.timesteps and eng.steps not in (1, 2, 4):
        who = (f"steps={eng.steps}" if engine_overrides and "steps" in engine_overrides
               else f"checkpoint '{path}' recommends {eng.steps} sampling steps")
        raise CheckpointError(f"{who}: a few-step student samples with 1, 2 or 4 steps; pass --steps 1, 2 or 4")
    if context_path is not None:
        meanings = meta.get("action_meanings")
        ctx = load_context_npz(context_path, model.cfg.resolution, context_frames,
                               env_id=meta.get("env_id") if meanings else None, action_meanings=meanings)
        note = ""
    else:
        ctx, note = _context_from(all_tensors, model.cfg, meta)
    meanings = meta.get("action_meanings") or [str(i) for i in range(model.cfg.num_actions)]
    if len(meanings) != model.cfg.num_actions:
        raise CheckpointError(f"checkpoint '{path}' names {len(meanings)} actions but the model has "
                              f"{model.cfg.num_actions}; re-export it with the game's action meanings")
    backend = ModelBackend(model, eng, ctx, device=dev, dtype=engine_dtype, action_meanings=list(meanings),
                           name=path.name)
    return Playable(backend, meta, str(path), file_hash(path), dev, weights_dtype, note)
