"""The one on-disk episode format: collection, play recordings, training and evaluation all use it.

Boundary: bytes on disk <-> ``Episode`` arrays. No resizing (``worldsim.data.dataset`` does that), no
games (``worldsim.envs``), no torch.

Step alignment: ``frames[t]`` is what was shown at step t; ``actions[t]`` is the
action chosen after seeing ``frames[t]``; it produced ``frames[t+1]``. Alongside, per step:

- ``rewards[t]``: what the game paid for ``actions[t]`` (on the way to ``frames[t+1]``), 0 where unknown;
- ``terminated[t]``: ``frames[t]`` is a game-over frame (only ever the last frame of an episode);
- ``timestamps_ns[t]``: ``time.perf_counter_ns()`` when ``frames[t]`` was obtained (or shown);
- ``latency_ms[t]``: play recordings only, the input-to-pixel latency of ``frames[t]`` (else None);
- any extra float scalars a writer passes (``extras``).

The last frame of an episode has an action too (the one chosen after it); nothing executed it.

Layout of an episode directory::

    ep_000012/
      meta.json    written atomically (temp file + fsync + rename): at open, at the first flush
                   (frame shape, codec, step fields), and at close (complete=true, num_steps)
      frames.bin   append-only frame payloads, one blob per chunk (zlib-compressed or raw)
      steps.bin    append-only chunk index = the commit log: one record per chunk
                   [header | per-step records | crc32], written after that chunk's frames

A writer buffers frames and commits a chunk at least every ``flush_every_s`` (a background thread
flushes even while the caller is idle), so a recorder killed with SIGKILL at any moment loses at most
that last second. The reader trusts a chunk only when its index record is whole, its CRC matches and
``frames.bin`` holds its frames (CRC-checked when decoded); a torn tail is reported in
``Episode.problems`` and ``complete`` is False unless ``close()`` ran, never read as complete.

A plain ``.npz`` (the interchange form: ``frames``, ``actions``, ``env_id``, ``action_meanings``;
optional ``rewards``, ``terminated``, ``timestamps_ns``, ``latency_ms``, ``meta_json``) is read by the
same ``read_episode`` and accepted everywhere an episode path is.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from worldsim import __version__
from worldsim.errors import DataError, check_readable

log = logging.getLogger("worldsim.data")

FORMAT = "worldsim-episode-1"
META, FRAMES, STEPS = "meta.json", "frames.bin", "steps.bin"
CODECS = {"raw": 0, "zlib": 1}
ZLIB_LEVEL = 3  # measured on Boxing: ~57x smaller at ~650 MB/s; level 1 is both larger and not faster
SPLITS = ("train", "heldout")
# Meta keys the writer owns (callers' values are replaced).
WRITER_KEYS = ("format", "complete", "num_steps", "frame_shape", "codec", "step_fields", "aborted", "closed_unix")

# Per-step record columns every episode has; extras are appended as float64 columns.
CORE_FIELDS = [("action", "<i8"), ("reward", "<f4"), ("terminated", "|b1"), ("timestamp_ns", "<i8"),
               ("latency_ms", "<f4")]
CORE_NAMES = [n for n, _ in CORE_FIELDS]

# Chunk index record: magic, n steps, first step, codec, frames offset, frames length, frames crc32,
# steps payload length; then the payload; then crc32 over header + payload.
_HEADER = struct.Struct("<4sIQIQQII")
_MAGIC = b"WSC1"
_CRC = struct.Struct("<I")


@dataclass
class Episode:
    """One episode in memory (step alignment: ``actions[t]`` chosen after ``frames[t]``)."""

    frames: np.ndarray | None  # (T, H, W, 3) uint8; None when read with load_frames=False
    actions: np.ndarray  # (T,) int64
    rewards: np.ndarray  # (T,) float32
    terminated: np.ndarray  # (T,) bool
    timestamps_ns: np.ndarray  # (T,) int64
    latency_ms: np.ndarray | None  # (T,) float32, play recordings only
    meta: dict[str, Any]
    complete: bool  # closed by its writer and every committed step readable
    path: Path | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T,) float64
    problems: list[str] = field(default_factory=list)  # one line each: torn tail, unclosed, ...

    def __len__(self) -> int:
        return int(len(self.actions))

    @property
    def num_steps(self) -> int:
        return len(self)

    @property
    def env_id(self) -> str:
        return str(self.meta["env_id"])

    @property
    def action_meanings(self) -> list[str]:
        return list(self.meta["action_meanings"])

    @property
    def num_actions(self) -> int:
        return len(self.meta["action_meanings"])

    @property
    def split(self) -> str:
        return str(self.meta.get("split", "train"))

    @property
    def frame_period(self):
        """One step of game time (``worldsim.gametime.FramePeriod``): recorded, else from ``frameskip``,
        else the ALE v5 default (frameskip 4 at 60 Hz) for an old episode that records neither."""
        from worldsim.gametime import period_or_default

        return period_or_default(self.meta)

    @property
    def frame_shape(self) -> tuple[int, int, int] | None:
        if self.frames is not None and self.frames.ndim == 4 and len(self.frames):
            return tuple(self.frames.shape[1:])
        fs = self.meta.get("frame_shape")
        return tuple(fs) if fs else None


# ---------------------------------------------------------------------------------------------
# small file helpers


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(d: Path) -> None:
    """Make renames in ``d`` durable (power loss); harmless where directories cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def is_episode_dir(path: Path) -> bool:
    return path.is_dir() and ((path / META).exists() or (path / STEPS).exists())


def step_dtype(step_fields: list) -> np.dtype:
    return np.dtype([(str(n), str(t)) for n, t in step_fields])


# ---------------------------------------------------------------------------------------------
# writer


class EpisodeWriter:
    """Append frames and actions to an episode directory, crash-safely.

        with EpisodeWriter("data/rec/ep_000000", {"env_id": env.env_id,
                                                   "action_meanings": env.action_meanings}) as w:
            w.append(frame, action, reward=r)

    ``meta`` needs ``env_id`` and ``action_meanings``; ``split`` defaults to 'train'; everything else
    (policy, seed, frameskip, checkpoint hash, sampling settings...) is kept as given.
    ``close()`` marks the episode complete. Leaving the ``with`` block by an exception flushes what
    was appended but leaves it incomplete (``aborted`` names the exception).

    ``append`` only copies the frame into a buffer: a background thread compresses and writes
    sealed chunks (zlib releases the GIL), so a player's display loop never waits on the disk. A
    chunk is sealed when it holds ``max_chunk_frames`` or its oldest frame is ``flush_every_s`` old;
    if the disk falls behind by more than a few chunks, ``append`` waits (bounded memory).
    """

    MAX_PENDING = 4  # sealed chunks waiting for the disk before append applies back-pressure

    def __init__(self, path: str | Path, meta: dict[str, Any], flush_every_s: float = 1.0, codec: str = "zlib",
                 max_chunk_frames: int = 256, fsync: bool = True, overwrite: bool = False):
        self.path = Path(path)
        if codec not in CODECS:
            raise DataError(f"unknown episode codec '{codec}'; use one of {', '.join(CODECS)}")
        meta = dict(meta)
        for key in ("env_id", "action_meanings"):
            if key not in meta:
                raise DataError(f"episode meta for '{self.path}' lacks '{key}'; pass env.describe() or "
                                f"{{'env_id': ..., 'action_meanings': [...]}}")
        meta["action_meanings"] = [str(m) for m in meta["action_meanings"]]
        if not meta["action_meanings"]:
            raise DataError(f"episode meta for '{self.path}' has an empty action_meanings list")
        split = meta.setdefault("split", "train")
        if split not in SPLITS:
            raise DataError(f"episode split '{split}' for '{self.path}' must be one of {', '.join(SPLITS)}")
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise DataError(f"episode '{self.path}' already exists; pass a new path or delete it first")
            for name in (META, FRAMES, STEPS):
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        for k in WRITER_KEYS:
            meta.pop(k, None)
        meta.setdefault("software_version", __version__)
        meta.setdefault("created_unix", time.time())
        meta.update(format=FORMAT, complete=False, num_steps=0)
        self.meta = meta
        self.codec = codec
        self.flush_every_s = float(flush_every_s)
        self.max_chunk_frames = int(max_chunk_frames)
        self.fsync = fsync
        self.num_actions = len(meta["action_meanings"])
        write_json_atomic(self.path / META, self.meta)
        self._frames_fd = os.open(self.path / FRAMES, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._steps_fd = os.open(self.path / STEPS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._frames_offset = 0
        self._lock = threading.Lock()  # buffer and pending-chunk state
        self._cond = threading.Condition(self._lock)  # signalled when a chunk reaches the disk
        self._io_lock = threading.Lock()  # one writer at a time, chunks in order
        self._pending: deque[tuple[int, np.ndarray, np.ndarray]] = deque()  # (start, frames, steps) sealed
        self._n_flushed = 0  # steps committed to disk
        self._n_sealed = 0  # steps sealed into chunks (committed or pending)
        self._n_buf = 0  # steps in the open buffer
        self._buf_frames: np.ndarray | None = None  # (max_chunk_frames, H, W, 3) uint8
        self._buf_steps: np.ndarray | None = None  # (max_chunk_frames,) structured
        self._step_dtype: np.dtype | None = None
        self._oldest_ns = 0
        self._extra_names: list[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._error: BaseException | None = None
        self.closed = False

    def __len__(self) -> int:
        return self._n_sealed + self._n_buf

    @property
    def num_committed(self) -> int:
        """Steps already on disk (what a crash now would leave readable)."""
        return self._n_flushed

    def append(self, frame: np.ndarray, action: int, reward: float = 0.0, terminated: bool = False,
               timestamp_ns: int | None = None, latency_ms: float | None = None, **extra_scalars: float) -> None:
        """Record one step: the frame shown and the action chosen after it (step alignment)."""
        if self.closed:
            raise DataError(f"episode '{self.path}' is closed; open a new EpisodeWriter to record more")
        self._raise_background_error()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise DataError(f"episode '{self.path}': frame must be uint8 (H, W, 3), got {frame.dtype} "
                            f"{tuple(frame.shape)}; convert with np.asarray(frame, np.uint8)")
        a = int(action)
        if not 0 <= a < self.num_actions:
            raise DataError(f"episode '{self.path}': action {a} outside the action set 0..{self.num_actions - 1}")
        ts = time.perf_counter_ns() if timestamp_ns is None else int(timestamp_ns)
        with self._cond:
            if self._buf_frames is None:
                self._start(frame.shape, sorted(extra_scalars))
            if frame.shape != self._buf_frames.shape[1:]:
                raise DataError(f"episode '{self.path}': frame shape {tuple(frame.shape)} differs from the "
                                f"episode's {tuple(self._buf_frames.shape[1:])}; start a new episode")
            if sorted(extra_scalars) != self._extra_names:
                raise DataError(f"episode '{self.path}': extra fields {sorted(extra_scalars)} differ from the "
                                f"first step's {self._extra_names}; pass the same fields every step")
            i = self._n_buf
            self._buf_frames[i] = frame
            rec = self._buf_steps[i]
            rec["action"], rec["reward"], rec["terminated"], rec["timestamp_ns"] = a, reward, bool(terminated), ts
            rec["latency_ms"] = np.nan if latency_ms is None else latency_ms
            for k, v in extra_scalars.items():
                rec[k] = v
            if i == 0:
                self._oldest_ns = time.monotonic_ns()
            self._n_buf += 1
            if self._n_buf >= self.max_chunk_frames or self._age_s() >= self.flush_every_s:
                self._seal_locked()
            while len(self._pending) > self.MAX_PENDING and self._error is None:
                self._cond.wait(timeout=0.1)  # the disk is behind: wait rather than buffer without bound

    def _raise_background_error(self) -> None:
        if self._error is not None:
            raise DataError(f"episode '{self.path}': writing to disk failed ({self._error}); check free disk "
                            f"space and permissions") from self._error

    def _age_s(self) -> float:
        return (time.monotonic_ns() - self._oldest_ns) / 1e9 if self._n_buf else 0.0

    def _start(self, shape: tuple[int, ...], extra_names: list[str]) -> None:
        """First append: fix the frame shape and record layout, publish them in meta.json."""
        for n in extra_names:
            if n in CORE_NAMES:
                raise DataError(f"episode '{self.path}': extra field '{n}' clashes with a built-in field")
        self._extra_names = extra_names
        fields = CORE_FIELDS + [(n, "<f8") for n in extra_names]
        h, w, _ = shape
        # Cap the chunk's raw size near 64 MB so huge frames do not buffer gigabytes.
        self.max_chunk_frames = max(1, min(self.max_chunk_frames, (64 << 20) // (h * w * 3)))
        self._step_dtype = step_dtype(fields)
        self._new_buffer((h, w, 3))
        self.meta.update(frame_shape=[h, w, 3], codec=self.codec, step_fields=[[n, t] for n, t in fields])
        write_json_atomic(self.path / META, self.meta)
        self._thread = threading.Thread(target=self._flusher, name=f"flush:{self.path.name}", daemon=True)
        self._thread.start()

    def _new_buffer(self, shape) -> None:
        self._buf_frames = np.empty((self.max_chunk_frames, *shape), np.uint8)  # (N, H, W, 3)
        self._buf_steps = np.zeros(self.max_chunk_frames, self._step_dtype)  # (N,)

    def _seal_locked(self) -> None:
        """Hand the open buffer to the flusher as a chunk and start a fresh one (caller holds _lock)."""
        n = self._n_buf
        if n == 0:
            return
        self._pending.append((self._n_sealed, self._buf_frames[:n], self._buf_steps[:n]))
        self._n_sealed += n
        self._n_buf = 0
        self._new_buffer(self._buf_frames.shape[1:])
        self._wake.set()

    def _flusher(self) -> None:
        """Background thread: seal a buffer that has waited ``flush_every_s`` (even while the caller is
        idle) and write sealed chunks."""
        period = max(0.005, self.flush_every_s / 4)
        while True:
            self._wake.wait(period)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                with self._lock:
                    if self._n_buf and self._age_s() >= self.flush_every_s:
                        self._seal_locked()
                self._drain()
            except BaseException as e:  # surfaced by the next append / close
                self._error = e
                with self._cond:
                    self._cond.notify_all()
                return
            if stopping:
                return

    def _drain(self) -> None:
        """Write every sealed chunk, in order: frames first, then the index record that commits them."""
        with self._io_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    start, frames, steps = self._pending[0]
                n = len(steps)
                raw = memoryview(np.ascontiguousarray(frames)).cast("B")
                blob = zlib.compress(raw, ZLIB_LEVEL) if self.codec == "zlib" else bytes(raw)
                payload = steps.tobytes()
                header = _HEADER.pack(_MAGIC, n, start, CODECS[self.codec], self._frames_offset, len(blob),
                                      zlib.crc32(blob), len(payload))
                record = header + payload
                record += _CRC.pack(zlib.crc32(record))
                _write_all(self._frames_fd, blob)
                if self.fsync:
                    os.fsync(self._frames_fd)
                _write_all(self._steps_fd, record)
                if self.fsync:
                    os.fsync(self._steps_fd)
                self._frames_offset += len(blob)
                with self._cond:
                    self._pending.popleft()
                    self._n_flushed += n
                    self._cond.notify_all()

    def flush(self) -> None:
        """Commit everything appended so far, now (blocks until it is on disk)."""
        self._raise_background_error()
        with self._lock:
            self._seal_locked()
        self._drain()

    def update_meta(self, **fields: Any) -> None:
        """Add or change metadata (written now, atomically, and again at close)."""
        bad = [k for k in fields if k in WRITER_KEYS]
        if bad:
            raise DataError(f"episode meta keys {bad} are managed by the writer")
        with self._lock:
            self.meta.update(fields)
            write_json_atomic(self.path / META, self.meta)

    def _finish(self, complete: bool, aborted: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self._error is None:
                with self._lock:
                    self._seal_locked()
                self._drain()
        except BaseException as e:
            self._error = e
        finally:
            os.close(self._frames_fd)
            os.close(self._steps_fd)
        with self._lock:
            self.meta.update(num_steps=self._n_flushed, complete=complete and self._error is None,
                             closed_unix=time.time())
            if aborted:
                self.meta["aborted"] = aborted
            write_json_atomic(self.path / META, self.meta)
        self._raise_background_error()

    def close(self, **meta_updates: Any) -> Path:
        """Flush, mark the episode complete, return its path. ``meta_updates`` are merged first."""
        if meta_updates and not self.closed:
            self.meta.update({k: v for k, v in meta_updates.items() if k not in WRITER_KEYS})
        self._finish(complete=True)
        return self.path

    def abort(self, reason: str = "aborted") -> Path:
        """Flush what was appended but leave the episode marked incomplete."""
        self._finish(complete=False, aborted=reason)
        return self.path

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type.__name__)


# ---------------------------------------------------------------------------------------------
# reader


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of an episode directory or ``.npz`` without reading its frames."""
    p = _existing(path)
    if p.suffix == ".npz" and p.is_file():
        return _npz_meta(_open_npz(p), p)
    mp = p / META
    if not mp.exists():
        raise DataError(f"'{p}' has no {META}: not an episode directory (or its creation was cut short); "
                        f"delete it or pass an episode directory or .npz")
    try:
        meta = json.loads(read_bytes(mp, "episode metadata"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"'{mp}' is not valid JSON ({e}); restore it from a backup or delete the episode") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"'{mp}' is not a worldsim episode (format={fmt!r}); pass a directory written by "
                        f"EpisodeWriter or a .npz")
    for key in ("env_id", "action_meanings"):
        if key not in meta:
            raise DataError(f"'{mp}' lacks '{key}'; add it by hand (the game id / its action names)")
    am = meta["action_meanings"]
    if not isinstance(am, list) or not am or not all(isinstance(m, str) for m in am):
        raise DataError(f"'{mp}': action_meanings must be a non-empty list of action names, got {am!r:.60}; "
                        f"restore it (e.g. from the game: worldsim.envs.make_env(env_id).action_meanings)")
    if not isinstance(meta["env_id"], str):
        raise DataError(f"'{mp}': env_id must be a game id string, got {meta['env_id']!r:.60}; restore it")
    fs = meta.get("frame_shape")
    if fs is not None and not (isinstance(fs, list) and len(fs) == 3 and fs[2] == 3
                               and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in fs)):
        raise DataError(f"'{mp}': frame_shape must be [height, width, 3], got {fs!r:.60}; restore meta.json from a "
                        f"backup or re-record the episode")
    return meta


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"episode '{p}' not found; pass an episode directory, a .npz or a dataset directory")
    return p


@dataclass
class _Chunk:
    n: int
    start: int
    codec: int
    offset: int
    length: int
    crc: int
    steps: bytes
    pos: int = 0  # where its index record starts in steps.bin
    size: int = 0  # the index record's length in bytes


@dataclass
class _Bad:
    """A byte range of ``steps.bin`` or ``frames.bin`` that fails its checks."""

    file: str  # STEPS or FRAMES
    start: int
    end: int
    why: str
    steps: str = ""  # the steps it held, where the index still says so ("steps 8..15")


@dataclass
class Scan:
    """What an episode directory's two files hold: the chunks that pass every check, grouped in
    runs of consecutive steps, and the byte ranges that do not. The readable episode is the run that
    starts at step 0 (``prefix``); a run after a damaged chunk is intact too and only needs
    ``worldsim data repair`` to become an episode of its own."""

    runs: list[list[_Chunk]]
    bad: list[_Bad]
    steps_size: int
    frames_size: int
    frames_checked: bool

    @property
    def prefix(self) -> list[_Chunk]:
        r = self.runs[0] if self.runs else []
        return r if r and r[0].pos == 0 and r[0].start == 0 and r[0].offset == 0 else []

    @property
    def intact_steps(self) -> int:
        return sum(c.n for r in self.runs for c in r)

    def frames_tail(self) -> int:
        """Bytes of frames.bin past the last chunk the index knows (a crash between the two writes)."""
        ends = [c.offset + c.length for r in self.runs for c in r]
        ends += [b.end for b in self.bad if b.file == FRAMES]
        return max(0, self.frames_size - max(ends, default=0))


def read_bytes(path: Path, what: str = "file") -> bytes:
    """A file's bytes, or a DataError that says why it cannot be read (permission, I/O)."""
    try:
        return Path(path).read_bytes()
    except PermissionError:
        raise DataError(f"cannot read {what} '{path}': permission denied; make it readable (chmod a+r) or run as "
                        f"its owner") from None
    except IsADirectoryError:
        raise DataError(f"{what} '{path}' is a directory; pass the file") from None
    except OSError as e:
        raise DataError(f"cannot read {what} '{path}' ({e.strerror or e}); check the disk and the path") from None


def _record_at(data: bytes, pos: int, rec_size: int | None) -> tuple[_Chunk | None, str]:
    """The index record at ``pos`` if it is whole and its checksum matches, else (None, why not)."""
    if len(data) - pos < _HEADER.size:
        return None, f"half-written chunk header ({len(data) - pos} bytes)"
    magic, n, start, codec, off, length, crc, slen = _HEADER.unpack_from(data, pos)
    if magic != _MAGIC:
        return None, f"bad chunk marker {magic!r}"
    end = pos + _HEADER.size + slen + _CRC.size
    if end > len(data):
        return None, f"half-written chunk ({len(data) - pos} of {end - pos} bytes)"
    (rec_crc,) = _CRC.unpack_from(data, end - _CRC.size)
    if zlib.crc32(data[pos:end - _CRC.size]) != rec_crc:
        return None, "chunk checksum mismatch (corrupt)"
    if rec_size is None or n < 1 or slen != n * rec_size or codec not in CODECS.values():
        return None, f"chunk header inconsistent with {META}"
    body = pos + _HEADER.size
    return _Chunk(n, start, codec, off, length, crc, data[body:body + slen], pos, end - pos), ""


def _next_record(data: bytes, pos: int, rec_size: int | None) -> int | None:
    """The first position at or after ``pos`` where a whole, checksummed index record starts."""
    while True:
        pos = data.find(_MAGIC, pos)
        if pos < 0:
            return None
        if _record_at(data, pos, rec_size)[0] is not None:
            return pos
        pos += 1


def _frames_problem(fh, c: _Chunk, shape: tuple[int, ...]) -> str:
    """'' if the chunk's frame payload passes its checksum and decodes to its frames, else why not."""
    fh.seek(c.offset)
    blob = fh.read(c.length)
    if len(blob) != c.length or zlib.crc32(blob) != c.crc:
        return "corrupt (checksum mismatch)"
    try:
        raw_len = len(zlib.decompress(blob)) if c.codec == CODECS["zlib"] else len(blob)
    except zlib.error:
        return "corrupt (does not decompress)"
    if raw_len != c.n * int(np.prod(shape)):
        return f"of the wrong size ({raw_len} bytes for {c.n} frames of {tuple(shape)})"
    return ""


def scan_episode(p: Path, meta: dict, check_frames: bool = False) -> Scan:
    """Every chunk of the episode directory ``p``: which pass their checks, which do not.

    A damaged index record does not hide the records after it: the scan resynchronises on the next
    record whose marker and checksum are whole. ``check_frames`` also reads every frame payload and
    checks its checksum and size (what ``validate`` and ``repair`` do; a plain read checks them when
    it decodes them)."""
    sp, fp = p / STEPS, p / FRAMES
    data = read_bytes(sp, "episode index") if sp.exists() else b""
    frames_size = fp.stat().st_size if fp.exists() else 0
    try:
        rec_size = step_dtype(meta["step_fields"]).itemsize if "step_fields" in meta else None
    except (TypeError, ValueError) as e:
        raise DataError(f"'{p / META}': step_fields {meta.get('step_fields')!r} is not a list of [name, dtype] "
                        f"pairs ({e}); restore meta.json from a backup or re-record the episode") from None
    good: list[_Chunk] = []
    bad: list[_Bad] = []
    pos = 0
    while pos < len(data):
        c, why = _record_at(data, pos, rec_size)
        if c is not None:
            good.append(c)
            pos += c.size
            continue
        nxt = _next_record(data, pos + 1, rec_size)
        end = len(data) if nxt is None else nxt
        bad.append(_Bad(STEPS, pos, end, why))
        pos = end
    shape = tuple(meta.get("frame_shape") or ())
    if good and len(shape) != 3:
        raise DataError(f"'{p / META}' lacks a valid frame_shape (got {meta.get('frame_shape')!r}); restore "
                        f"meta.json from a backup or re-record the episode")
    fh = open(fp, "rb") if check_frames and good and fp.exists() else None
    kept: list[_Chunk] = []
    step_end = off_end = 0
    try:
        for c in good:
            held = f"steps {c.start}..{c.start + c.n - 1}"
            if c.start < step_end or c.offset < off_end:  # overlaps an earlier chunk: a stray record
                bad.append(_Bad(STEPS, c.pos, c.pos + c.size, "chunk out of order (overlaps an earlier one)", held))
                continue
            if c.offset + c.length > frames_size:
                bad.append(_Bad(FRAMES, c.offset, min(c.offset + c.length, frames_size),
                                f"frames missing (file is {frames_size} bytes, needs {c.offset + c.length})", held))
                bad.append(_Bad(STEPS, c.pos, c.pos + c.size, "its frames are missing", held))
                continue
            why = _frames_problem(fh, c, shape) if fh is not None else ""
            if why:
                bad.append(_Bad(FRAMES, c.offset, c.offset + c.length, f"frames {why}", held))
                bad.append(_Bad(STEPS, c.pos, c.pos + c.size, "its frames are corrupt", held))
                continue
            kept.append(c)
            step_end, off_end = c.start + c.n, c.offset + c.length
    finally:
        if fh is not None:
            fh.close()
    runs: list[list[_Chunk]] = []
    for c in kept:
        last = runs[-1][-1] if runs else None
        if last is not None and (c.start, c.offset, c.pos) == (last.start + last.n, last.offset + last.length,
                                                              last.pos + last.size):
            runs[-1].append(c)
        else:
            runs.append([c])
    bad.sort(key=lambda b: (b.file != STEPS, b.start))
    return Scan(runs, bad, len(data), frames_size, check_frames)


def scan_problems(p: Path, meta: dict, scan: Scan) -> list[str]:
    """One line per problem of a scanned episode directory: what is damaged, and what is still intact."""
    sp, fp = p / STEPS, p / FRAMES
    prefix = scan.prefix
    n = sum(c.n for c in prefix)
    later = scan.intact_steps - n
    problems: list[str] = []
    if not meta.get("complete"):
        why = f"aborted by {meta['aborted']}" if meta.get("aborted") else "its recorder stopped before close()"
        problems.append(f"'{p}': episode not closed ({why}); {n} steps readable")
    elif n != meta.get("num_steps"):
        problems.append(f"'{p}': {META} says {meta.get('num_steps')} steps but only {n} are readable")
    steps_bad = [b for b in scan.bad if b.file == STEPS and not b.steps]
    for b in steps_bad:
        if b.end == scan.steps_size and b.why.startswith("half-written") and not later:
            problems.append(f"'{sp}' at byte {b.start} (after step {n}): {b.why}, a torn tail; it is dropped")
        else:
            problems.append(f"'{sp}' bytes {b.start}..{b.end}: {b.why}; the steps it indexed are lost")
    for b in scan.bad:
        if b.file == FRAMES:
            problems.append(f"'{fp}': {b.steps}: {b.why}")
        elif b.steps and "frames" not in b.why:
            problems.append(f"'{sp}' bytes {b.start}..{b.end} ({b.steps}): {b.why}")
    if later:
        problems.append(f"'{p}': {later} intact steps lie after the damage and are not read; 'worldsim data repair' "
                        f"keeps them as an episode of their own")
    tail = scan.frames_tail()
    if tail:
        problems.append(f"'{fp}': {tail} bytes after the last indexed chunk (frames whose index record was never "
                        f"written)")
    return problems


def _decode_chunk(fp_handle, c: _Chunk, shape: tuple[int, int, int], fp: Path) -> np.ndarray:
    fp_handle.seek(c.offset)
    blob = fp_handle.read(c.length)
    if len(blob) != c.length or zlib.crc32(blob) != c.crc:
        raise DataError(f"'{fp}': frames of steps {c.start}..{c.start + c.n - 1} are corrupt (checksum mismatch); "
                        f"'worldsim data repair {fp.parent}' sets them aside and keeps the rest")
    try:
        raw = zlib.decompress(blob) if c.codec == CODECS["zlib"] else blob
    except zlib.error:
        raw = b""
    if len(raw) != c.n * int(np.prod(shape)):
        raise DataError(f"'{fp}': chunk at step {c.start} decodes to {len(raw)} bytes, expected "
                        f"{c.n} frames of {shape}; 'worldsim data repair {fp.parent}' sets it aside")
    return np.frombuffer(raw, np.uint8).reshape(c.n, *shape)  # (n, H, W, 3)


def iter_frame_chunks(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_step, frames (n, H, W, 3) uint8)`` chunk by chunk: stream an episode without
    holding it all in memory. Only the readable steps are yielded."""
    p = _existing(path)
    if p.suffix == ".npz" and p.is_file():
        ep = read_episode(p)
        yield 0, ep.frames
        return
    meta = read_meta(p)
    chunks = scan_episode(p, meta).prefix
    if not chunks:
        return
    shape = tuple(meta["frame_shape"])
    with open(p / FRAMES, "rb") as f:
        for c in chunks:
            yield c.start, _decode_chunk(f, c, shape, p / FRAMES)


def read_episode(path: str | Path, mmap: bool = True, load_frames: bool = True, strict: bool = False,
                 warn: bool = True) -> Episode:
    """Read an episode directory or a plain ``.npz``.

    ``mmap``: frames stored raw are memory-mapped instead of read (zlib chunks are always decoded).
    ``load_frames=False`` reads only actions, rewards, timestamps and meta (``frames`` is None).
    An episode whose writer never closed it, or whose index is damaged, comes back with its readable
    steps (those before the first damage), ``complete=False`` and the reasons in ``problems`` (also
    logged unless ``warn=False``); ``strict=True`` raises DataError instead.
    """
    p = _existing(path)
    if p.suffix == ".npz" and p.is_file():
        return _read_npz(p, load_frames)
    if not p.is_dir():
        raise DataError(f"'{p}' is neither an episode directory nor a .npz episode")
    meta = read_meta(p)
    scan = scan_episode(p, meta)
    chunks = scan.prefix
    problems = scan_problems(p, meta, scan)
    n = sum(c.n for c in chunks)
    complete = not problems
    if problems:
        msg = "; ".join(problems)
        if strict:
            raise DataError(msg + "; repair it with 'worldsim data repair' or re-collect it")
        if warn:
            log.warning("%s", msg)

    if "step_fields" in meta:
        steps = np.frombuffer(b"".join(c.steps for c in chunks), step_dtype(meta["step_fields"]))
    else:  # nothing was ever flushed
        steps = np.zeros(0, step_dtype(CORE_FIELDS))
    missing = [f for f in CORE_NAMES if f not in (steps.dtype.names or ())]
    if missing:
        raise DataError(f"'{p / META}': step_fields lacks {missing}; restore meta.json from a backup or re-record "
                        f"the episode")
    frames = None
    if load_frames:
        shape = tuple(meta.get("frame_shape") or (0, 0, 3))
        if n == 0:
            frames = np.zeros((0, *shape), np.uint8)
        elif mmap and all(c.codec == CODECS["raw"] for c in chunks):
            frames = np.memmap(p / FRAMES, np.uint8, "r", shape=(n, *shape))  # (T, H, W, 3)
        else:
            frames = np.empty((n, *shape), np.uint8)  # (T, H, W, 3)
            with open(p / FRAMES, "rb") as f:
                for c in chunks:
                    frames[c.start:c.start + c.n] = _decode_chunk(f, c, shape, p / FRAMES)
    lat = steps["latency_ms"].astype(np.float32)
    extra_names = [n_ for n_ in steps.dtype.names if n_ not in CORE_NAMES]
    return Episode(
        frames=frames,
        actions=steps["action"].astype(np.int64),
        rewards=steps["reward"].astype(np.float32),
        terminated=steps["terminated"].astype(bool),
        timestamps_ns=steps["timestamp_ns"].astype(np.int64),
        latency_ms=None if np.isnan(lat).all() else lat,
        meta=meta, complete=complete, path=p,
        extras={k: steps[k].astype(np.float64) for k in extra_names},
        problems=problems,
    )


def episode_length(path: str | Path) -> tuple[int, bool]:
    """(readable steps, complete) without decoding frames."""
    p = _existing(path)
    if p.suffix == ".npz" and p.is_file():
        z = _open_npz(p)
        try:
            return int(z["actions"].shape[0]), True
        except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise DataError(f"'{p}': cannot read 'actions' ({e}); re-export the .npz") from None
    meta = read_meta(p)
    scan = scan_episode(p, meta)
    return sum(c.n for c in scan.prefix), not scan_problems(p, meta, scan)


# ---------------------------------------------------------------------------------------------
# plain .npz episodes


_NPZ_READ_ERRORS = (ValueError, zipfile.BadZipFile, OSError, EOFError, zlib.error, struct.error)
_DEFLATE_MAX_RATIO = 1100  # zlib cannot shrink data more than ~1032x: a larger claimed size is a damaged directory


class _Npz:
    """A ``.npz`` whose members' headers were checked against their sizes before anything is loaded;
    every read error comes out as one DataError naming the file and the key."""

    def __init__(self, p: Path, z, dtypes: dict[str, np.dtype]):
        self.p, self._z, self.dtypes = p, z, dtypes
        self.files = list(z.files)

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.files:
            raise KeyError(key)
        if self.dtypes.get(key) is not None and self.dtypes[key].hasobject:
            raise DataError(f"'{self.p}': '{key}' holds Python objects (pickled data), which are never loaded; "
                            f"save it as an array of numbers or np.str_ strings")
        try:
            return self._z[key]
        except _NPZ_READ_ERRORS as e:
            raise DataError(f"'{self.p}': '{key}' is truncated or corrupt ({e}); re-export the .npz") from None


def _npz_headers(p: Path) -> dict[str, np.dtype]:
    """Each member's dtype, after checking that the shape its header declares fits the bytes it holds
    (a damaged header would otherwise have numpy allocate whatever it declares)."""
    from numpy.lib import format as npf

    dtypes: dict[str, np.dtype] = {}
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_DEFLATED and \
                    info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + (1 << 20):
                raise DataError(f"'{p}': '{name}' claims {info.file_size:,} bytes packed into {info.compress_size:,}, "
                                f"more than compression can do; the file is damaged: re-export it")
            with zf.open(info) as f:
                version = npf.read_magic(f)
                shape, _, dtype = (npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0)(f)
                held = info.file_size - f.tell()
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if not dtype.hasobject and declared > held:
                raise DataError(f"'{p}': '{name}' declares a {dtype} array of shape {tuple(shape)} ({declared:,} bytes) "
                                f"but holds {held:,} bytes; the file is damaged: re-export it")
            dtypes[name] = dtype
    return dtypes


def _open_npz(p: Path) -> _Npz:
    check_readable(p, "episode", DataError)
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip whose end (its directory) is missing
                raise DataError(f"'{p}' is a truncated or corrupt .npz (its zip directory is missing); re-export it")
        raise DataError(f"'{p}' is not a .npz (it is not a zip archive: other or damaged data); pass a file "
                        f"written by numpy.savez or 'worldsim data export'")
    try:
        dtypes = _npz_headers(p)
        return _Npz(p, np.load(p, allow_pickle=False), dtypes)
    except _NPZ_READ_ERRORS as e:
        raise DataError(f"'{p}' is not a readable .npz (truncated or corrupt: {e}); re-export it") from None


def _npz_str(z, key: str, p: Path) -> Any:
    try:
        v = z[key]
    except KeyError:
        raise DataError(f"'{p}' lacks '{key}'; a plain episode needs frames, actions, env_id, "
                        f"action_meanings (see docs/episode-format.md)") from None
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise DataError(f"'{p}': '{key}' cannot be read without pickle ({e}); save strings as np.str_ "
                        f"arrays") from None
    if v.dtype.kind not in "US":
        raise DataError(f"'{p}': '{key}' must be a string array, got dtype {v.dtype}; save it as np.array(str_or_list)")
    return v


def _npz_meta(z, p: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "meta_json" in z.files:
        try:
            meta = json.loads(str(z["meta_json"]))
        except (json.JSONDecodeError, ValueError) as e:
            raise DataError(f"'{p}': 'meta_json' is not valid JSON ({e}); drop it or fix it") from None
        if not isinstance(meta, dict):
            raise DataError(f"'{p}': 'meta_json' is not a JSON mapping (got {type(meta).__name__}); drop it or fix it")
    meta["env_id"] = str(_npz_str(z, "env_id", p))
    meta["action_meanings"] = [str(m) for m in np.atleast_1d(_npz_str(z, "action_meanings", p))]
    meta.setdefault("split", "train")
    for k in z.files:  # scalars beside the arrays (e.g. eval rollouts' 'start') become metadata
        if k not in meta and k not in _NPZ_ARRAYS and k != "meta_json":
            try:
                v = z[k]
            except DataError:
                continue
            if v.ndim == 0:
                meta[k] = v.item()
    for k in WRITER_KEYS:
        meta.pop(k, None)
    return meta


_NPZ_ARRAYS = ("frames", "actions", "rewards", "terminated", "timestamps_ns", "latency_ms", "env_id",
               "action_meanings")


def _read_npz(p: Path, load_frames: bool = True) -> Episode:
    z = _open_npz(p)
    meta = _npz_meta(z, p)
    try:
        actions = z["actions"]
        frames = z["frames"] if load_frames else None
    except KeyError as e:
        raise DataError(f"'{p}' lacks {e}; a plain episode needs frames, actions, env_id, action_meanings") from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"'{p}': an array is truncated or corrupt ({e}); re-export it") from None
    if actions.ndim != 1 or actions.dtype.kind not in "iu":
        raise DataError(f"'{p}': 'actions' must be an int64 vector, got {actions.dtype} {actions.shape}; "
                        f"save actions.astype(np.int64), one per frame")
    T = len(actions)
    if frames is not None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DataError(f"'{p}': 'frames' must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}; "
                            f"convert with frames.astype(np.uint8) in HWC order")
        if len(frames) != T:
            raise DataError(f"'{p}': {len(frames)} frames but {T} actions; each frame needs the action chosen "
                            f"after it (step alignment)")
        meta["frame_shape"] = list(frames.shape[1:])

    def opt(key, dtype, default):
        if key not in z.files:
            return default
        v = z[key]
        if v.shape != (T,):
            raise DataError(f"'{p}': '{key}' has shape {v.shape}, expected ({T},) like 'actions'; save one value per "
                            f"frame or leave it out")
        return v.astype(dtype)

    extras = {}
    for k in meta.pop("extra_fields", []) or []:
        if k in z.files:
            extras[k] = opt(k, np.float64, None)
    return Episode(
        frames=frames,
        actions=actions.astype(np.int64),
        rewards=opt("rewards", np.float32, np.zeros(T, np.float32)),
        terminated=opt("terminated", bool, np.zeros(T, bool)),
        timestamps_ns=opt("timestamps_ns", np.int64, np.zeros(T, np.int64)),
        latency_ms=opt("latency_ms", np.float32, None),
        meta=meta, complete=True, path=p, extras=extras,
    )


def list_episodes(path: str | Path) -> list[Path]:
    """Episode paths under ``path``: a dataset directory (searched recursively), an episode
    directory, or a ``.npz`` file. Sorted, so ``train/ep_000002`` comes before ``train/ep_000010``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"'{p}' not found; pass a dataset directory, an episode directory or a .npz")
    if p.is_file():
        if p.suffix == ".npz":
            return [p]
        raise DataError(f"'{p}' is not an episode: pass a dataset directory, an episode directory or a .npz")
    if is_episode_dir(p):
        return [p]
    found: list[Path] = []
    for root, dirs, files in os.walk(p):
        r = Path(root)
        if is_episode_dir(r):
            found.append(r)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .cache and friends
        found += [r / f for f in files if f.endswith(".npz") and not f.startswith(".")]
    return sorted(found)
