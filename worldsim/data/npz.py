"""The plain ``.npz`` episode form (``docs/episode-format.md``): export any episode to it, import it back.

Keys: ``frames`` uint8 (T, H, W, 3), ``actions`` int64 (T,), ``env_id`` (str), ``action_meanings``
(str array); and, when the source has them, ``rewards``, ``terminated``, ``timestamps_ns``,
``latency_ms``, extra per-step scalars (named in the metadata's ``extra_fields``) and ``meta_json``
(the full episode metadata as JSON, so an import restores it). Strings are numpy unicode arrays:
no pickle is ever needed to read one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from worldsim.data.episode import WRITER_KEYS, Episode, EpisodeWriter, read_episode
from worldsim.errors import DataError


def _as_episode(episode: Episode | str | Path) -> Episode:
    return episode if isinstance(episode, Episode) else read_episode(episode)


def export_npz(episode: Episode | str | Path, out_path: str | Path, compress: bool = True) -> Path:
    """Write ``episode`` (an Episode or a path) as a plain ``.npz``, atomically (temp file + rename)."""
    ep = _as_episode(episode)
    if ep.frames is None:
        raise DataError("export_npz needs the frames; read the episode with load_frames=True")
    out = Path(out_path)
    if out.suffix != ".npz":
        raise DataError(f"export target '{out}' must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in ep.meta.items() if k not in WRITER_KEYS}
    meta["extra_fields"] = sorted(ep.extras)
    arrays = {
        "frames": np.ascontiguousarray(ep.frames, np.uint8),  # (T, H, W, 3)
        "actions": ep.actions.astype(np.int64),
        "rewards": ep.rewards.astype(np.float32),
        "terminated": ep.terminated.astype(bool),
        "timestamps_ns": ep.timestamps_ns.astype(np.int64),
        "env_id": np.array(ep.env_id),
        "action_meanings": np.array(ep.action_meanings, dtype=str),
        "meta_json": np.array(json.dumps(meta)),
    }
    if ep.latency_ms is not None:
        arrays["latency_ms"] = ep.latency_ms.astype(np.float32)
    for k, v in ep.extras.items():
        if k in arrays:
            raise DataError(f"extra field '{k}' clashes with a key of the .npz form; rename it before exporting")
        arrays[k] = v.astype(np.float64)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending another '.npz'
        (np.savez_compressed if compress else np.savez)(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def import_npz(npz_path: str | Path, out_dir: str | Path, name: str | None = None, codec: str = "zlib") -> Path:
    """Turn a plain ``.npz`` into an episode directory ``out_dir/<name or npz stem>``; returns its path."""
    src = Path(npz_path)
    ep = read_episode(src)
    if len(ep) == 0:
        raise DataError(f"'{src}' has no frames; there is nothing to import (export a non-empty episode)")
    dest = Path(out_dir) / (name or src.stem)
    if dest.exists():
        raise DataError(f"'{dest}' already exists; import into another --out directory or delete it")
    meta = dict(ep.meta)
    meta.setdefault("imported_from", str(src))
    from worldsim.envs import check_env_id  # refuse episodes of games we do not know

    check_env_id(ep.env_id)
    n_act = ep.num_actions
    bad = (ep.actions < 0) | (ep.actions >= n_act)
    if bad.any():
        t = int(np.argmax(bad))
        raise DataError(f"'{src}': action {int(ep.actions[t])} at step {t} is outside the action set "
                        f"0..{n_act - 1}; fix the actions or the action_meanings")
    with EpisodeWriter(dest, meta, codec=codec) as w:
        lat = ep.latency_ms
        for t in range(len(ep)):
            w.append(ep.frames[t], int(ep.actions[t]), reward=float(ep.rewards[t]),
                     terminated=bool(ep.terminated[t]), timestamp_ns=int(ep.timestamps_ns[t]),
                     latency_ms=None if lat is None else float(lat[t]),
                     **{k: float(v[t]) for k, v in ep.extras.items()})
    return dest
