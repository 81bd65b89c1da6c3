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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
from typing import Any

START_TIMEOUT_S = 120.0  # a cold start imports torch; a loaded machine can take long


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


def _serve(conn, backend, threads: int, cores: set[int] | None = None) -> None:
    """Child process main: answer (op, args) requests until 'close' or the parent goes away."""
    import torch

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
            return
        if op == "close":
            return
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

    def __init__(self, inner, threads: int = 0):
        self.inner = inner  # the parent's copy: static attributes (model, action meanings, ...) read from it
        self.kind = inner.kind
        self.threads = threads
        self._settings = dict(inner.settings)
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()  # one request at a time; abort() never takes it
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
        return ProcessBackend(self.inner.fresh(), self.threads)

    def with_settings(self, steps: int | None = None, chunk: int | None = None) -> "ProcessBackend":
        return ProcessBackend(self.inner.with_settings(steps, chunk), self.threads)

    def reset(self, seed: int | None = None):
        return self._call("reset", seed)

    def step(self, action: int):
        return self._call("step", int(action))

    def configure(self, steps: int | None = None, chunk: int | None = None) -> None:
        self._call("configure", {"steps": steps, "chunk": chunk})

    # -- the child -----------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Start the child now (the Session calls this before the first reset, outside the stall clock:
        a start takes seconds; a start that fails or hangs raises within ``START_TIMEOUT_S``)."""
        with self._lock:
            if self._proc is None and not self._closed:
                self._start_locked()

    def _start_locked(self) -> None:
        ctx = mp.get_context("spawn")  # never fork: the parent's OpenMP and SDL state must not be copied
        parent, child = ctx.Pipe()
        threads, child_cores, parent_cores = split_cores(self.threads)
        proc = ctx.Process(target=_serve, args=(child, self.inner, threads, child_cores), name="worldsim-generator",
                           daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(START_TIMEOUT_S):
            self.abort()
            raise RuntimeError(f"the generation process did not start within {START_TIMEOUT_S:g} s")
        try:
            _, self.pid, self.child_threads = parent.recv()
        except (EOFError, OSError):
            raise RuntimeError(self._died_message()) from None
        if parent_cores and _pin_parent(parent_cores):
            self._pinned_parent, self.child_cores = True, child_cores

    def _died_message(self) -> str:
        proc = self._proc
        if proc is not None:
            proc.join(1.0)
        code = None if proc is None else proc.exitcode
        return f"the generation process died (exit code {code})"

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
        self._closed = True
        proc = self._proc
        if proc is not None and proc.is_alive():
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
