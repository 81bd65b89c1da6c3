"""A backend that generates in a child process: the model gets every core, and a hung one can be killed.

Why a process rather than the Session's worker thread. Torch's CPU ops run on an OpenMP team; a team
driven from a non-main thread of a process whose main thread also owns one was measured 1.7x slower
on the 2-core target (frame-wise 2-step: 30 ms/frame against 17.5 ms from a main thread), and the
display loop's wake-ups then stall every barrier (37 ms/frame in play.py with 2 threads, 26 ms with 1).
In a child process the model's ops run on that process's main thread: 18.8 ms/frame at p50 with 2
threads while the display loop runs beside it. And a Python thread cannot be killed, a process can:
``abort()`` ends a hung generation instead of abandoning it.

Protocol: the parent's Session worker thread calls ``reset``/``step``/``configure`` as on any backend;
each is one request over a pipe and one reply, so the action still reaches the model at the last
moment before generation starts (the pipe costs ~0.1 ms). The child runs the same backend object
(pickled at start: weights, context, settings). Errors in the child come back as ``RuntimeError`` with
the child's message; a child that died raises ``RuntimeError`` naming its exit code, which the
Session reports as a fault and its supervisor answers with ``restart()`` -> ``fresh()`` -> a new child.

Cores (``threads=0``, the default): the child generates with every core but one, pinned to them, and
the parent's threads (display, input, pipe) are pinned to the remaining core. On the 2-core target that
is one generation thread with a core of its own: an OpenMP team of two stalls at every op's barrier
each time the display loop takes one of its cores, and a lone thread does not. Measured with play.py
headless, 2-step, five interleaved pairs of 14 s: 54.8 FPS on average with two unpinned threads, 57.5
pinned (58.2 / 53.7 / 58.5 / 59.2 / 58.0 against 52.3 / 49.6 / 58.8 / 56.6 / 56.8), p99 latency 44-61
ms against 53-87, frame-time jitter 1.8-2.2 ms against 2.5-4.1. A given ``threads`` count is not pinned.

The child starts in the Session's worker thread (``start_worker``, never on the display's thread, and
outside the stall clock): a spawned interpreter imports torch, about 1-3 s on the target, shown as the
start or restarting screen.

Nothing here can block on a dead or stopped child. The start data (the backend: weights, context
frames, settings) goes through a private temporary file whose path the child gets, not through the
pipe: multiprocessing writes a spawned child's arguments into a pipe whose read end the parent itself
holds open until the write is done, and the child reads them only once it has imported torch. The
default model's came to 113 KB (its context frames travel by value), more than a pipe holds, so a
child killed while importing torch blocked the parent for good. What still goes through that pipe is
~1 KB. The wait for 'ready' watches the pipe and the child's sentinel with a deadline
(``start_timeout_s``): a child that dies says so at once, one that hangs or is stopped fails the start
when the deadline passes. Requests are a few bytes; a reply that never comes (a stopped child) is the
Session's stall watchdog's to end, with ``abort()``, which never waits on the pipe.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import threading
import traceback
from multiprocessing.connection import wait as wait_ready
from typing import Any

# How long a child may take to report ready: a cold start imports torch (1-3 s on the 2-core target;
# a loaded machine or a cold disk can take several times that). play.start_timeout_s sets it.
DEFAULT_START_TIMEOUT_S = 60.0


# The parent's cores before any child pinned it, and how many live children hold it pinned: backends
# whose lives overlap (a restart's old and new child) restore it only when the last one ends.
_parent_pin: dict[str, Any] = {"count": 0, "mask": None}
_parent_pin_lock = threading.Lock()


def split_cores(threads: int) -> tuple[int, set[int] | None, set[int] | None]:
    """(generation threads, the child's cores, the parent's cores) for a ``threads`` request: 0 on a
    machine with 2+ usable cores gives every core but the first to the child, pinned, and the first to
    the parent; otherwise no pinning (cores ``None``) and ``threads`` (0: every core)."""
    if not hasattr(os, "sched_getaffinity"):
        allowed = []
    else:  # the cores this process had before a live child pinned it (a second child splits the same way)
        allowed = sorted(_parent_pin["mask"] if _parent_pin["mask"] is not None else os.sched_getaffinity(0))
    if threads > 0 or len(allowed) < 2:
        return (threads if threads > 0 else (len(allowed) or os.cpu_count() or 1)), None, None
    return len(allowed) - 1, set(allowed[1:]), {allowed[0]}


def _pin_threads(cores: set[int]) -> bool:
    """Pin every thread of this process to ``cores`` (Linux: affinity is per thread); best effort."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    done = False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
            done = True
        except OSError:  # a thread that just ended, or a sandbox that refuses: run unpinned
            pass
    return done


def _pin_parent(cores: set[int]) -> bool:
    with _parent_pin_lock:
        mask = os.sched_getaffinity(0)
        if not _pin_threads(cores):
            return False
        if _parent_pin["count"] == 0:
            _parent_pin["mask"] = mask
        _parent_pin["count"] += 1
        return True


def _unpin_parent() -> None:
    with _parent_pin_lock:
        _parent_pin["count"] -= 1
        if _parent_pin["count"] == 0:
            _pin_threads(_parent_pin["mask"])
            _parent_pin["mask"] = None


def check_start_timeout(start_timeout_s: float) -> float:
    """``start_timeout_s`` as a float, or a ConfigError naming the key and the fix."""
    from worldsim.errors import ConfigError

    try:
        value = float(start_timeout_s)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"start_timeout_s must be a number of seconds > 0 (got {start_timeout_s!r}): how long a "
                          f"generation worker may take to start; {DEFAULT_START_TIMEOUT_S:g} fits a slow torch import")
    return value


def _write_start_data(backend) -> str:
    """The backend pickled into a private temporary file (mode 0600); its path goes to the child."""
    fd, path = tempfile.mkstemp(prefix="worldsim-worker-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(backend, f, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # already removed by the other side
        pass


def _leave() -> None:
    """End the child at once: an interpreter that imported torch took 1.7-2.5 s to shut down on the
    loaded 2-core target (past ``close()``'s wait, so it was killed), and the child holds nothing
    that needs a shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(conn, start_path: str, threads: int, cores: set[int] | None = None) -> None:
    """Child process main: load the backend the parent wrote to ``start_path``, then answer (op, args)
    requests until 'close' or the parent goes away."""
    import torch

    with open(start_path, "rb") as f:  # the parent's own file, written for this child a moment ago
        backend = pickle.load(f)
    _remove(start_path)
    if cores:
        _pin_threads(cores)
    torch.set_num_threads(threads)
    prepare = getattr(backend, "prepare", None)
    if prepare is not None:  # e.g. find and load the compiled forwards: before 'ready', outside the stall clock
        try:
            prepare()
        except Exception as e:  # an accelerator only: the backend generates without it
            print(f"play.py: worker preparation failed ({type(e).__name__}: {e}); generating without it", flush=True)
    conn.send(("ready", os.getpid(), torch.get_num_threads()))
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the parent closed its end or died: nothing left to serve
            _leave()
        if op == "close":
            _leave()
        try:
            if op == "reset":
                out = backend.reset(*args)
            elif op == "step":
                out = backend.step(*args)
            elif op == "configure":
                out = backend.configure(**args[0])
            else:
                raise ValueError(f"unknown request {op!r}")
            conn.send(("ok", out, dict(backend.settings)))
        except Exception as e:  # reported to the parent, which raises it in the Session worker
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))


class ProcessBackend:
    """Wraps a picklable backend (``ModelBackend``) so that it runs in a child process."""

    def __init__(self, inner, threads: int = 0, start_timeout_s: float = DEFAULT_START_TIMEOUT_S):
        self.inner = inner  # the parent's copy: static attributes (model, action meanings, ...) read from it
        self.kind = inner.kind
        self.threads = threads
        self.start_timeout_s = check_start_timeout(start_timeout_s)  # a child not ready by then: start failed
        self._settings = dict(inner.settings)
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()  # one request at a time; abort() never takes it
        self._proc_lock = threading.Lock()  # the child's handle and _closed, between a start and abort()
        self._closed = False
        self.pid: int | None = None
        self.child_threads: int | None = None
        self.child_cores: set[int] | None = None  # pinned cores of the child (None: not pinned)
        self._pinned_parent = False  # this child holds the parent pinned (released in abort)

    # -- the backend interface ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:  # model, cfg, context, action_meanings, name, num_actions ...
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "worker": "process", "threads": self.child_threads,
                "pinned": sorted(self.child_cores) if self.child_cores else None}

    def fresh(self) -> "ProcessBackend":
        return ProcessBackend(self.inner.fresh(), self.threads, self.start_timeout_s)

    def with_settings(self, steps: int | None = None, chunk: int | None = None) -> "ProcessBackend":
        return ProcessBackend(self.inner.with_settings(steps, chunk), self.threads, self.start_timeout_s)

    def reset(self, seed: int | None = None):
        return self._call("reset", seed)

    def step(self, action: int):
        return self._call("step", int(action))

    def configure(self, steps: int | None = None, chunk: int | None = None) -> None:
        self._call("configure", {"steps": steps, "chunk": chunk})

    # -- the child -----------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Start the child now (the Session calls this before the first reset, outside the stall clock:
        a start takes seconds; one that fails raises at once, one that hangs within ``start_timeout_s``)."""
        with self._lock:
            if self._proc is None and not self._closed:
                self._start_locked()

    def _start_locked(self) -> None:
        ctx = mp.get_context("spawn")  # never fork: the parent's OpenMP and SDL state must not be copied
        threads, child_cores, parent_cores = split_cores(self.threads)
        try:
            path = _write_start_data(self.inner)
        except OSError as e:
            raise RuntimeError(f"could not write the generation process's start data to {tempfile.gettempdir()} "
                               f"({e.strerror or e}); free space there or set TMPDIR") from None
        parent, child = ctx.Pipe()
        try:
            proc = ctx.Process(target=_serve, args=(child, path, threads, child_cores), name="worldsim-generator",
                               daemon=True)
            proc.start()  # writes ~1 KB into the new interpreter's pipe: never more than the pipe holds
            child.close()
            with self._proc_lock:
                self._proc, self._conn = proc, parent
                closed = self._closed
            if closed:  # abort() came while the child was being spawned: it must not outlive us
                self.abort()
                raise RuntimeError("the generation process was closed while it started")
            self._wait_ready(proc, parent)
        finally:
            _remove(path)
        if parent_cores:
            with self._proc_lock:  # not for a child that abort() ended meanwhile: it would never unpin
                if not self._closed and _pin_parent(parent_cores):
                    self._pinned_parent, self.child_cores = True, child_cores

    def _wait_ready(self, proc, conn) -> None:
        """Block until the child says 'ready', it dies, or ``start_timeout_s`` passes; the last two raise."""
        ready = wait_ready([conn, proc.sentinel], timeout=self.start_timeout_s)
        if conn in ready:  # the message, or the end of the pipe of a child that died
            try:
                _, self.pid, self.child_threads = conn.recv()
                return
            except (EOFError, OSError):
                pass
        if ready:
            raise RuntimeError(self._died_message(" while it started"))
        self.abort()
        raise RuntimeError(f"the generation process did not start within {self.start_timeout_s:g} s "
                           f"(start_timeout_s); it was killed")

    def _died_message(self, when: str = "") -> str:
        proc = self._proc
        if proc is not None:
            proc.join(1.0)
        code = None if proc is None else proc.exitcode
        return f"the generation process died{when} (exit code {code})"

    def _call(self, op: str, *args):
        with self._lock:
            if self._closed:
                raise RuntimeError("the generation process was closed")
            if self._proc is None:
                self._start_locked()
            try:
                self._conn.send((op, args))
                reply = self._conn.recv()
            except (EOFError, OSError):
                raise RuntimeError(self._died_message()) from None
        if reply[0] == "error":
            raise RuntimeError(f"in the generation process: {reply[1]}\n{reply[2]}")
        self._settings = reply[2]
        return reply[1]

    def abort(self) -> None:
        """Kill the child now (a hung or abandoned generation); a request in flight raises in its thread.
        The parent's threads get back the cores they had before, once no live child holds them pinned."""
        with self._proc_lock:
            self._closed = True
            proc = self._proc
        if proc is not None and proc.is_alive():  # SIGKILL also ends a stopped (SIGSTOP) child
            proc.kill()
            proc.join(2.0)
        if self._pinned_parent:
            self._pinned_parent = False
            _unpin_parent()

    def close(self) -> None:
        """End the child cleanly if it is idle, else kill it."""
        if self._lock.acquire(timeout=0.5):
            try:
                if self._proc is not None and self._proc.is_alive() and not self._closed:
                    try:
                        self._conn.send(("close", ()))
                    except OSError:
                        pass
                    self._proc.join(2.0)
            finally:
                self._lock.release()
        self.abort()
