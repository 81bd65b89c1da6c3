"""Training data: which clips a stage reads, how a global batch is drawn, and the model's view of it.

Boundary: a clip source (``worldsim.data.dataset.ClipDataset`` on disk, or ``InMemoryClips`` for
tests) -> float frames in [-1, 1] and model-aligned actions. No noise, no model.

Batches are drawn by index from a ``torch.Generator`` that every rank seeds identically and that
the trainer checkpoints: each step draws the GLOBAL batch's indices and a rank keeps its own slice,
so 2 ranks x B/2 see exactly the clips 1 rank x B sees, and a resumed run draws the same clips as an
uninterrupted one.

Alignment (as in ``docs/episode-format.md``): a clip's ``actions[t]`` was chosen after ``frames[t]``; the model wants
the action that PRODUCED each frame, ``[NULL, a_0, ..., a_{L-2}]`` (``to_model_actions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from worldsim.data.dataset import to_model_actions
from worldsim.data.frames import scale_to_model
from worldsim.errors import ConfigError, DataError


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=lambda: ["data/tiny"])  # dataset dirs, episode dirs or .npz files
    clip_len: int = 8  # frames per training clip (the teacher's clip; the student's teacher-forcing length)
    resolution: int = 32  # frames are resized to resolution x resolution (must equal model.resolution)
    split: Optional[str] = "train"  # episodes trained on ('train', 'heldout' or null for all)
    heldout_split: str = "heldout"  # episodes for sample videos and evaluation (falls back to training data)
    cache_dir: Optional[str] = None  # resize cache (default $WORLDSIM_CACHE_DIR/clips)
    # Read the resized clips into memory at start (false: memory-map them; data larger than 80% of the
    # free memory is memory-mapped anyway, with a warning). Random reads from a cold memory map cost
    # 3-18 ms a clip: the whole training step on a GPU.
    preload: bool = True


def open_clips(cfg: DataConfig, split: Optional[str], clip_len: Optional[int] = None):
    """The ClipDataset of ``split`` (None: every episode) under ``cfg.paths``."""
    from worldsim.data.dataset import ClipDataset

    if not cfg.paths:
        raise ConfigError("data.paths is empty; pass data.paths=[DIR] (e.g. a 'worldsim collect' output)")
    ds = ClipDataset([str(p) for p in cfg.paths], clip_len or cfg.clip_len, cfg.resolution, split=split,
                     cache_dir=cfg.cache_dir, preload=cfg.preload)
    data_frame_period(ds)  # one frame period per training run: refuse a mix before any step is taken
    return ds


def data_frame_period(ds):
    """The one frame period (``worldsim.gametime.FramePeriod``) of a clip source's episodes; a mix of
    periods is refused with one line naming an episode of each (a model learns one step of game time).
    Old episodes that record no period count as the ALE v5 default; a source without episode metadata
    (``InMemoryClips``) gives its ``frame_period`` attribute (None: unknown)."""
    from worldsim.gametime import period_or_default

    metas = getattr(ds, "metas", None)
    if metas is None:
        return getattr(ds, "frame_period", None)
    first = period_or_default(metas[0])
    for ep, meta in zip(ds.episodes, metas):
        period = period_or_default(meta)
        if period != first:
            raise DataError(f"the training data mixes frame periods: '{ds.episodes[0]}' is {first.describe()} but "
                            f"'{ep}' is {period.describe()}; train on episodes collected at one env.frameskip")
    return first


def open_heldout(cfg: DataConfig, clip_len: int, fallback=None):
    """Held-out clips for samples/evaluation; the training clips when there are no held-out episodes."""
    try:
        return open_clips(cfg, cfg.heldout_split, clip_len)
    except DataError:
        if fallback is not None and getattr(fallback, "clip_len", clip_len) >= clip_len:
            return fallback
        return open_clips(cfg, cfg.split, clip_len)


def draw_indices(n: int, global_batch: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's slice of one global batch of uniform clip indices (every rank draws the same)."""
    if global_batch % world:
        raise ConfigError(f"optim.batch_size {global_batch} is not divisible by the {world} ranks")
    idx = torch.randint(n, (global_batch,), generator=generator)  # (B_global,)
    per = global_batch // world
    return [int(i) for i in idx[rank * per:(rank + 1) * per]]


def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"frames": torch.stack([it["frames"] for it in items]),  # (B, L, 3, R, R) uint8
            "actions": torch.stack([torch.as_tensor(it["actions"]) for it in items]),  # (B, L) recorded alignment: the action after each frame
            "episode": torch.tensor([int(it["episode"]) for it in items]),
            "start": torch.tensor([int(it["start"]) for it in items])}


def to_model_inputs(batch: dict[str, torch.Tensor], num_actions: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (B, L, 3, R, R) -> float in [-1, 1]; recorded actions (chosen after each frame) -> the actions that produced each frame."""
    x0 = scale_to_model(batch["frames"].to(device=device))  # (B, L, 3, R, R)
    acts = to_model_actions(batch["actions"].long(), num_actions).to(device)  # (B, L)
    return x0, acts


def check_dataset_fits(ds, model_cfg, where: str) -> None:
    """Refuse a dataset whose resolution or action set does not fit the model being trained."""
    if tuple(ds.resolution) != (model_cfg.resolution, model_cfg.resolution):
        raise ConfigError(f"{where}: data.resolution {tuple(ds.resolution)} != model.resolution "
                          f"{model_cfg.resolution}; set both to the same value")
    if ds.num_actions != model_cfg.num_actions:
        raise ConfigError(f"{where}: the data ({ds.env_id}) has {ds.num_actions} actions but model.num_actions is "
                          f"{model_cfg.num_actions}; set model.num_actions={ds.num_actions}")


class InMemoryClips:
    """A clip source over arrays in memory with the ``ClipDataset`` interface the trainers use.

    ``episodes``: list of (frames uint8 (T, 3, R, R), actions int64 (T,)) in recorded alignment (``actions[t]`` chosen after ``frames[t]``).
    """

    def __init__(self, episodes: Sequence[tuple[np.ndarray, np.ndarray]], clip_len: int,
                 action_meanings: Sequence[str], env_id: str = "synthetic", frame_period=None):
        self.clip_len = int(clip_len)
        self.frame_period = frame_period  # worldsim.gametime.FramePeriod of the episodes, or None (unknown)
        self.episodes = [(np.asarray(f, np.uint8), np.asarray(a, np.int64)) for f, a in episodes]
        self.env_id = env_id
        self.action_meanings = list(action_meanings)
        self.num_actions = len(self.action_meanings)
        for e, (_, a) in enumerate(self.episodes):
            bad = np.nonzero((a < 0) | (a >= self.num_actions))[0]
            if len(bad):
                raise DataError(f"in-memory episode {e}: action {int(a[bad[0]])} at step {int(bad[0])} is outside the "
                                f"action set 0..{self.num_actions - 1}; fix the actions")
        R = self.episodes[0][0].shape[-1]
        self.resolution = (R, R)
        starts = [max(len(a) - self.clip_len + 1, 0) for _, a in self.episodes]
        self._offsets = np.concatenate([[0], np.cumsum(starts)])
        if self._offsets[-1] == 0:
            raise DataError(f"no in-memory episode has {self.clip_len} frames")

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = int(np.searchsorted(self._offsets, i, side="right") - 1)
        s = int(i - self._offsets[e])
        f, a = self.episodes[e]
        return {"frames": torch.from_numpy(f[s:s + self.clip_len].copy()),
                "actions": torch.from_numpy(a[s:s + self.clip_len].copy()), "episode": e, "start": s}

    def sample(self, generator=None) -> dict[str, Any]:
        return self[int(torch.randint(len(self), (1,), generator=generator))]

    def iter_frames(self, stride: int = 1):
        """Every ``stride``-th frame of each episode, channels last: (n, H, W, 3) uint8 an episode."""
        for f, _ in self.episodes:
            yield np.moveaxis(f[::stride], 1, -1)

    def with_clip_len(self, clip_len: int) -> "InMemoryClips":
        return InMemoryClips(self.episodes, clip_len, self.action_meanings, self.env_id, self.frame_period)


def synthetic_episodes(n: int = 4, T: int = 48, resolution: int = 16, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A toy world for tests: a bright square on a dark striped floor, moved by 5 actions
    (NOOP, UP, RIGHT, LEFT, DOWN), deterministic dynamics; recorded alignment."""
    rng = np.random.default_rng(seed)
    R = resolution
    side, speed = max(2, R // 5), max(1, R // 16)
    yy, xx = np.mgrid[0:R, 0:R]
    floor = np.where(((xx // max(1, R // 4)) % 2) == 0, 30, 60).astype(np.uint8)
    moves = [(0, 0), (-1, 0), (0, 1), (0, -1), (1, 0)]
    out = []
    for _ in range(n):
        y, x = (int(v) for v in rng.integers(0, R - side, 2))
        frames = np.empty((T, 3, R, R), np.uint8)
        actions = np.empty(T, np.int64)
        a = 0
        for t in range(T):
            img = np.stack([floor, floor, floor])  # (3, R, R)
            img[0, y:y + side, x:x + side] = 230
            img[1, y:y + side, x:x + side] = 200
            frames[t] = img
            if rng.random() > 0.7:
                a = int(rng.integers(0, 5))
            actions[t] = a
            dy, dx = moves[a]
            y = int(np.clip(y + dy * speed, 0, R - side))
            x = int(np.clip(x + dx * speed, 0, R - side))
        out.append((frames, actions))
    return out


SYNTHETIC_ACTIONS = ["NOOP", "UP", "RIGHT", "LEFT", "DOWN"]


def resolve_paths(paths: Sequence[str], base: Path | None = None) -> list[str]:
    return [str((base / p) if base is not None and not Path(p).is_absolute() else p) for p in paths]
