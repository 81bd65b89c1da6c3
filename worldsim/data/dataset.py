"""Clip datasets for training: random windows of L consecutive frames and their actions, at the
model's resolution, from many episodes, out of core.

Boundary: episodes on disk -> uint8 tensors. No normalisation to [-1, 1], no noise, no model.

Alignment (as in ``docs/episode-format.md``): in a clip, ``frames[t]`` is what was shown at step ``start + t`` and
``actions[t]`` is the action chosen after seeing it, which produced ``frames[t + 1]``. The model
wants the action that PRODUCED each frame, so its input is ``[NULL, a_0, ..., a_{L-2}]``
(``to_model_actions``), NULL being index ``num_actions``. ``actions[L-1]`` is unused by a model
that sees only this clip.

Resizing happens once per episode and resolution, into a cache of memory-mapped uint8 ``.npy``
files shaped ``(T, 3, H, W)`` (channels first, so a clip is one contiguous slice). The resize is
``worldsim.data.frames.resize_frames``, an exact area average (PIL ``BOX``): play and evaluation resize
their frames with the same function, so the model always sees frames made as these were.
A cache file's name carries a key of the episode's path, sizes, modification times, step count,
resolution and resize method, so a changed episode is re-resized, never served stale.
No clip crosses an episode boundary: clip starts run over ``0..T_e - L`` in each episode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from worldsim.data.episode import FRAMES, STEPS, iter_frame_chunks, list_episodes, read_episode, read_meta
from worldsim.data.frames import RESIZE_METHOD, resize_frames
from worldsim.errors import DataError

log = logging.getLogger("worldsim.data")


def default_cache_dir() -> Path:
    root = os.environ.get("WORLDSIM_CACHE_DIR") or Path.home() / ".cache" / "worldsim"
    return Path(root) / "clips"


def available_memory() -> int | None:
    """Bytes of memory available now (Linux), or None where the system does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def to_model_actions(actions: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Recorded actions (chosen after each frame) -> model actions (that produced each frame).

    (..., L) -> (..., L): ``[NULL, a_0, ..., a_{L-2}]`` with NULL = ``num_actions``.
    """
    null = torch.full_like(actions[..., :1], num_actions)  # (..., 1)
    return torch.cat([null, actions[..., :-1]], dim=-1)  # (..., L)


def _source_stamp(path: Path) -> list:
    files = [path] if path.is_file() else [path / STEPS, path / FRAMES]
    stamp = []
    for f in files:
        st = f.stat() if f.exists() else None
        stamp.append([f.name, st.st_size if st else 0, st.st_mtime_ns if st else 0])
    return stamp


def cache_path(cache_dir: Path, episode: Path, num_steps: int, size: tuple[int, int]) -> Path:
    key = json.dumps([str(episode.resolve()), _source_stamp(episode), num_steps, list(size), RESIZE_METHOD])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    stem = episode.name.removesuffix(".npz")
    return Path(cache_dir) / f"{stem}-{digest}-{size[0]}x{size[1]}.npy"


def build_cache(episode: Path, num_steps: int, size: tuple[int, int], dest: Path) -> Path:
    """Resize the first ``num_steps`` frames of ``episode`` into ``dest`` (atomic: temp + rename).

    A lock file makes concurrent builders (DDP ranks, DataLoader workers) wait for one another
    instead of resizing the same episode twice."""
    import fcntl

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():  # another process built it while we waited
            return dest
        return _build_cache_locked(episode, num_steps, size, dest)


def _build_cache_locked(episode: Path, num_steps: int, size: tuple[int, int], dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(num_steps, 3, *size))  # (T, 3, H, W)
    try:
        for start, frames in iter_frame_chunks(episode):
            if start >= num_steps:
                break
            frames = frames[:num_steps - start]
            out[start:start + len(frames)] = resize_frames(frames, size).transpose(0, 3, 1, 2)  # (n, 3, H, W)
        out.flush()
        del out
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


class ClipDataset(torch.utils.data.Dataset):
    """Clips of ``clip_len`` consecutive frames at ``resolution`` from the episodes under ``paths``.

    ``paths``: dataset directories, episode directories and/or ``.npz`` files (one or a list).
    ``split``: keep only 'train' or 'heldout' episodes (episodes without a split count as train).
    ``cache_dir``: where resized frames live (default ``$WORLDSIM_CACHE_DIR/clips`` or
    ``~/.cache/worldsim/clips``). Episodes not closed by their writer contribute their readable
    prefix (with a logged warning) unless ``include_incomplete=False``. ``preload``: read every
    episode's resized frames into memory at once (sequential reads) instead of memory-mapping them:
    a clip from a memory map that is not in the page cache is a random disk read (3-18 ms here and
    on a GPU machine, ~0.5-1 s for a batch of 64: the whole training step on a GPU).

    ``ds[i]`` -> ``{"frames": uint8 (L, 3, R, R), "actions": int64 (L,), "episode": int, "start": int}``
    (step alignment: ``actions[t]`` chosen after ``frames[t]``; see ``to_model_actions``).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], clip_len: int, resolution: int | Sequence[int],
                 split: str | None = None, cache_dir: str | Path | None = None, include_incomplete: bool = True,
                 progress: bool = False, preload: bool = False):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if clip_len < 1:
            raise DataError(f"clip_len must be >= 1 (got {clip_len})")
        if split not in (None, "train", "heldout"):
            raise DataError(f"split must be 'train', 'heldout' or None (got {split!r})")
        size = (int(resolution), int(resolution)) if np.isscalar(resolution) else tuple(int(r) for r in resolution)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"resolution must be an int or (height, width), got {resolution!r}")
        self.clip_len, self.size, self.split = int(clip_len), size, split
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        episodes: list[Path] = []
        for p in paths:
            episodes += list_episodes(p)
        if not episodes:
            raise DataError(f"no episodes under {', '.join(map(str, paths))}; collect some with "
                            f"'worldsim collect --env ALE/Boxing-v5 --out DIR'")
        self.episodes: list[Path] = []
        self.metas: list[dict[str, Any]] = []
        self._actions: list[np.ndarray] = []
        for ep in episodes:
            meta = read_meta(ep)
            if split is not None and meta.get("split", "train") != split:
                continue
            e = read_episode(ep, load_frames=False, warn=False)
            if not e.complete:
                if not include_incomplete:
                    log.warning("skipping incomplete episode %s: %s", ep, "; ".join(e.problems))
                    continue
                log.warning("using the %d readable steps of incomplete episode %s", len(e), ep)
            bad = np.nonzero((e.actions < 0) | (e.actions >= e.num_actions))[0]
            if len(bad):  # checked here, once: a bad index would fail a training step hours in
                t = int(bad[0])
                raise DataError(f"episode '{ep}': action {int(e.actions[t])} at step {t} is outside the action set "
                                f"0..{e.num_actions - 1} of {e.env_id} ({len(bad)} such steps); fix or drop the "
                                f"episode ('worldsim data validate' lists every problem)")
            self.episodes.append(ep)
            self.metas.append(e.meta)
            self._actions.append(e.actions)
        if not self.episodes:
            raise DataError(f"no {split or ''} episodes under {', '.join(map(str, paths))}; "
                            f"check the split (train/heldout) or collect with --heldout-episodes")
        self._check_one_game()
        self.lengths = np.array([len(a) for a in self._actions], np.int64)
        starts = np.maximum(self.lengths - self.clip_len + 1, 0)  # valid clip starts per episode
        self._offsets = np.concatenate([[0], np.cumsum(starts)])  # clip index -> episode by searchsorted
        if self._offsets[-1] == 0:
            raise DataError(f"no episode has {self.clip_len} frames (longest: {self.lengths.max()}); "
                            f"lower clip_len or collect longer episodes")
        self._progress = progress
        self._cache_files = self._ensure_cache()
        self._frames: list[np.ndarray | None] = [None] * len(self.episodes)
        self.preloaded = False
        if preload:
            self._preload()

    # -- properties the trainer and the checkpoint metadata need
    @property
    def env_id(self) -> str:
        return str(self.metas[0]["env_id"])

    @property
    def action_meanings(self) -> list[str]:
        return list(self.metas[0]["action_meanings"])

    @property
    def num_actions(self) -> int:
        return len(self.metas[0]["action_meanings"])

    @property
    def resolution(self) -> tuple[int, int]:
        return self.size

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def iter_frames(self, stride: int = 1):
        """Every ``stride``-th frame of each episode, channels last: (n, H, W, 3) uint8 an episode."""
        for e in range(len(self.episodes)):
            yield np.moveaxis(np.asarray(self._episode_frames(e)[::stride]), 1, -1)

    def _check_one_game(self) -> None:
        first = self.metas[0]
        for ep, meta in zip(self.episodes, self.metas):
            if list(meta["action_meanings"]) != list(first["action_meanings"]):
                raise DataError(f"episodes mix action sets: '{self.episodes[0]}' ({first['env_id']}, "
                                f"{len(first['action_meanings'])} actions) and '{ep}' ({meta['env_id']}, "
                                f"{len(meta['action_meanings'])} actions); train on one game's episodes")
            if meta["env_id"] != first["env_id"]:
                raise DataError(f"episodes mix games: '{self.episodes[0]}' is {first['env_id']} but '{ep}' is "
                                f"{meta['env_id']}; pass one game's episodes")

    def _ensure_cache(self) -> list[Path]:
        files, todo = [], []
        for i, ep in enumerate(self.episodes):
            cp = cache_path(self.cache_dir, ep, int(self.lengths[i]), self.size)
            files.append(cp)
            if not cp.exists():
                todo.append(i)
        if todo:
            from tqdm import tqdm

            t0 = time.perf_counter()
            for i in tqdm(todo, desc=f"resizing to {self.size[0]}x{self.size[1]}", unit="episode",
                          disable=not self._progress):
                build_cache(self.episodes[i], int(self.lengths[i]), self.size, files[i])
            log.info("resized %d episodes into %s in %.1fs", len(todo), self.cache_dir, time.perf_counter() - t0)
        return files

    def _preload(self) -> None:
        need = int(self.lengths.sum()) * 3 * self.size[0] * self.size[1]
        free = available_memory()
        if free is not None and need > 0.8 * free:  # larger than RAM: memory-mapped, slower but it runs
            log.warning("the resized clips take %.2f GB, more than 80%% of the %.2f GB of memory available: "
                        "reading them from the memory map instead (set data.preload=false to say so)",
                        need / 1e9, free / 1e9)
            return
        t0 = time.perf_counter()
        for e in range(len(self.episodes)):
            self._frames[e] = self._episode_frames(e, mmap=False)
        self.preloaded = True
        nbytes = sum(a.nbytes for a in self._frames)
        log.info("read %d frames (%.2f GB) into memory in %.1fs", self.num_frames, nbytes / 1e9,
                 time.perf_counter() - t0)

    def _episode_frames(self, e: int, mmap: bool = True) -> np.ndarray:
        arr = self._frames[e]
        if arr is None:
            try:
                arr = np.load(self._cache_files[e], mmap_mode="r" if mmap else None)  # (T, 3, H, W) uint8
            except (OSError, ValueError) as err:
                raise DataError(f"resize cache '{self._cache_files[e]}' is unreadable ({err}); delete it and "
                                f"it is rebuilt") from None
            if arr.shape != (self.lengths[e], 3, *self.size):
                raise DataError(f"resize cache '{self._cache_files[e]}' has shape {arr.shape}, expected "
                                f"{(int(self.lengths[e]), 3, *self.size)}; delete it and it is rebuilt")
            self._frames[e] = arr
        return arr

    def __getstate__(self):  # memmaps reopen in each DataLoader worker instead of being pickled
        state = self.__dict__.copy()
        state["_frames"] = [None] * len(self.episodes)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.preloaded:  # a worker reads its own copy rather than receiving gigabytes through a pipe
            self._preload()

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Episode ``e`` whole: frames uint8 (T, 3, R, R) (memory-mapped unless preloaded), actions (T,) int64."""
        return self._episode_frames(e), self._actions[e]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Clip index -> (episode index, start step)."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"clip index {i} out of range for {n} clips")
        e = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return e, int(i - self._offsets[e])

    def clip(self, episode: int, start: int) -> dict[str, Any]:
        L = self.clip_len
        if not 0 <= start <= self.lengths[episode] - L:
            raise IndexError(f"clip at step {start} of episode {episode} would cross its end "
                             f"({int(self.lengths[episode])} steps, clip_len {L})")
        frames = np.array(self._episode_frames(episode)[start:start + L])  # (L, 3, R, R) copy out of the memmap
        actions = self._actions[episode][start:start + L].copy()  # (L,)
        return {"frames": torch.from_numpy(frames), "actions": torch.from_numpy(actions),
                "episode": episode, "start": start}

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.clip(*self.locate(int(i)))

    def _randint(self, generator, k: int) -> np.ndarray:
        n = len(self)
        if isinstance(generator, torch.Generator):
            return torch.randint(n, (k,), generator=generator).numpy()
        if isinstance(generator, np.random.Generator):
            return generator.integers(n, size=k)
        if generator is None:
            return np.random.default_rng().integers(n, size=k)
        raise TypeError(f"generator must be a torch.Generator or numpy Generator, not {type(generator).__name__}")

    def sample(self, generator: torch.Generator | np.random.Generator | None = None) -> dict[str, Any]:
        """One uniformly random clip (uniform over clip starts, so long episodes weigh more)."""
        return self[int(self._randint(generator, 1)[0])]

    def sample_batch(self, batch_size: int, generator=None) -> dict[str, torch.Tensor]:
        """``batch_size`` random clips stacked: frames (B, L, 3, R, R) uint8, actions (B, L) int64,
        episode (B,), start (B,). Copies each clip once, straight from the cache into the batch
        (numpy, so no torch intra-op threads spin up on a busy CPU)."""
        L = self.clip_len
        where = [self.locate(int(i)) for i in self._randint(generator, batch_size)]
        frames = np.empty((batch_size, L, 3, *self.size), np.uint8)  # (B, L, 3, R, R)
        actions = np.empty((batch_size, L), np.int64)  # (B, L)
        for b, (e, s) in enumerate(where):
            frames[b] = self._episode_frames(e)[s:s + L]
            actions[b] = self._actions[e][s:s + L]
        return {"frames": torch.from_numpy(frames), "actions": torch.from_numpy(actions),
                "episode": torch.tensor([e for e, _ in where]), "start": torch.tensor([s for _, s in where])}

    def describe(self) -> dict[str, Any]:
        return {"episodes": len(self.episodes), "frames": self.num_frames, "clips": len(self),
                "clip_len": self.clip_len, "resolution": list(self.size), "env_id": self.env_id,
                "num_actions": self.num_actions, "split": self.split}


def bench_clips(ds: ClipDataset, seconds: float = 3.0, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Random-access throughput: single clips/s via ``ds[i]`` and clips/s via ``sample_batch``."""
    g = np.random.default_rng(seed)
    for e in range(len(ds.episodes)):  # open the memmaps first: steady state is what training sees
        ds._episode_frames(e)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        ds.sample(g)
        n += 1
    single = n / (time.perf_counter() - t0)
    nb, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        ds.sample_batch(batch_size, g)
        nb += 1
    batched = nb * batch_size / (time.perf_counter() - t0)
    mb = ds.clip_len * 3 * ds.size[0] * ds.size[1] / 1e6
    return {"clips_per_s": single, "batched_clips_per_s": batched, "batch_size": batch_size,
            "clip_len": ds.clip_len, "resolution": list(ds.size), "clip_mb": mb,
            "mb_per_s": single * mb}
