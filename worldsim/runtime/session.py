"""A play Session: one generation worker thread, a latest-wins action slot, and an output queue.

Boundary: the session owns *when* frames are generated; the backend (``worldsim.runtime.backend``)
owns *how*; the app owns keys, display and pacing of presentation. Nothing here imports pygame or
blocks the caller: the display loop calls ``poll()`` and ``wait()``, never the model.

Worker loop, per chunk:

    wait until: not paused, the display has room (``max_ahead``) and the pacing period has passed
    action, stamps = slot.take()          # the last moment before generation starts
    t_take -> backend.step(action) -> t_done
    publish Chunk(frames, action, stamps, t_take, t_done)

Requests (``reset``, ``configure``, ``pause``) are queued and applied by the worker between
chunks, so the caller never waits for a forward to finish. A reset (or a restart) opens a new
*context*: its first output is a ``kind='context'`` chunk with the frames the model starts from,
and anything still in flight from the old context is dropped.

Faults: the worker records an exception it raised; ``health()`` reports ``raised``, ``died``
(thread gone without one) or ``stalled`` (one generation running longer than
``stall_timeout_s``, or a worker not started within ``start_timeout_s``: a child process that hangs
or is stopped while it imports torch is a fault like any other), each with the ``phase`` the worker
was in (start, reset, step, configure); ``restart()`` abandons the old worker (a Python thread cannot be killed: a
hung one is left to finish on its own, its output ignored; a backend with ``abort()``, which runs
in a child process, is killed) and starts a new one on a fresh copy of the backend. The app's
supervisor decides when to call it. ``fault_hook(step)`` runs inside the generation, for tests
that make a worker raise, die or hang.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from worldsim.runtime.slot import ActionSlot


def next_frame_start(scheduled_ns: int, t0_ns: int, period_ns: int) -> int:
    """When the next generation may start, on a fixed clock: the start that was scheduled plus one
    period, so the wake-up lateness of each wait does not add up (timed from ``t0``, a 60 FPS cap
    ran at 56-59 FPS with a model that kept up). A start more than a period late (a slow model, a
    pause, a new context: ``scheduled_ns`` 0) restarts the clock from ``t0``: no burst of catch-up frames."""
    base = scheduled_ns if scheduled_ns and 0 <= t0_ns - scheduled_ns < period_ns else t0_ns
    return base + period_ns


@dataclass
class SessionConfig:
    seed: int = 0  # noise seed of the first context; every reset draws the next one
    # Generation rate cap in frames per second (0: as fast as the model runs). A cap keeps the
    # game's pace steady when the model is faster than the screen and leaves CPU to the display.
    fps: float = 60.0
    # Chunks that may wait for the display before the worker pauses. 1: the worker runs at most
    # one chunk ahead, so the action it takes is never older than one frame period.
    max_ahead: int = 1
    stall_timeout_s: float = 2.0  # one generation longer than this counts as a hung worker
    # A worker not started by then (a child process imports torch: 1-3 s on the target, a loaded
    # machine several times that) counts as a hung worker too.
    start_timeout_s: float = 60.0


@dataclass
class Chunk:
    """Frames out of the worker, with the timing of the generation that made them."""

    frames: np.ndarray  # (C, H, W, 3) uint8
    kind: str  # 'context' (a fresh start: frames the model was seeded with) or 'gen'
    action: int  # the action that produced these frames (-1 for a context chunk)
    stamps: list[int]  # perf_counter_ns arrival times of the inputs first shown here
    t_take_ns: int  # when the action was taken (generation start)
    t_done_ns: int  # when the frames were ready
    index: int  # chunk number within its context
    context_id: int  # increments with every reset/restart
    settings: dict[str, Any]
    context_actions: np.ndarray | None = None  # for a context chunk: actions of frames 0..K-2
    info: dict = field(default_factory=dict)  # backend extras (reward, terminated, ...)

    @property
    def gen_ms(self) -> float:
        return (self.t_done_ns - self.t_take_ns) / 1e6


@dataclass
class Health:
    state: str  # 'ok', 'starting', 'raised', 'died', 'stalled', 'stopped'
    error: str | None = None
    detail: str | None = None  # traceback for 'raised'
    busy_s: float = 0.0  # how long the current generation has run
    phase: str = ""  # what the worker was doing: 'start', 'reset', 'step' or 'configure'

    @property
    def faulted(self) -> bool:
        return self.state in ("raised", "died", "stalled")


class Session:
    def __init__(self, backend, cfg: SessionConfig | None = None, slot: ActionSlot | None = None):
        self.backend = backend
        self.cfg = cfg or SessionConfig()
        from worldsim.runtime.process_backend import check_start_timeout

        check_start_timeout(self.cfg.start_timeout_s)
        self.slot = slot or ActionSlot()
        self.fault_hook: Callable[[int], None] | None = None
        self.on_output: Callable[[], None] | None = None  # called (worker thread) after each publish
        # The stall watchdog's clock (ns): how long one generation has run. Tests inject a manual one.
        self.clock: Callable[[], int] = time.perf_counter_ns
        self._cv = threading.Condition()
        self._queue: collections.deque[Chunk] = collections.deque()
        self._epoch = 0  # worker generation: a restarted worker gets a new one
        self._context_id = 0
        self._next_seed = self.cfg.seed
        self._requests: dict[str, Any] = {}
        self._paused = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._fault: tuple[int, str, str] | None = None  # (epoch, message, traceback)
        self._busy_since: int | None = None
        self._starting_since: int | None = None  # the worker is starting (clock ns), else None
        self._phase = ""  # the worker's current or last request: start, reset, step, configure
        self._started_ns = 0
        self.restarts = 0
        self.abandoned = 0  # hung workers left behind by restart()
        self.steps = 0  # chunks generated over the session's life
        self.gen_ms_ema = 0.0
        self._settings = dict(backend.settings)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Session":
        with self._cv:
            self._stopping = False
            self._spawn_locked(self.backend)
        return self

    def _spawn_locked(self, backend) -> None:
        self._epoch += 1
        self._context_id += 1
        self._queue.clear()
        self._fault = None
        self._busy_since = None
        self._starting_since, self._phase = self.clock(), "start"
        self._requests.pop("reset", None)
        self._started_ns = time.perf_counter_ns()
        seed = self._draw_seed()
        epoch = self._epoch
        self._thread = threading.Thread(target=self._work, args=(epoch, backend, seed),
                                        name=f"worldsim-worker-{epoch}", daemon=True)
        self._thread.start()

    def _draw_seed(self) -> int:
        s = self._next_seed
        self._next_seed += 1
        return s

    def stop(self, timeout: float = 2.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        close = getattr(self.backend, "close", None)
        if close is not None and (t is None or not t.is_alive()):
            close()
        elif hasattr(self.backend, "abort"):  # a hung generation in a child process: end it
            self.backend.abort()

    def restart(self) -> None:
        """Replace the worker (raised, died or hung) with a new one on a fresh backend copy."""
        with self._cv:
            old = self._thread
            if old is not None and old.is_alive() and not self.kills_hung_workers:
                self.abandoned += 1
            self.restarts += 1
            self._epoch += 1  # the old worker sees this and leaves at its next check
            self._cv.notify_all()
            old_backend = self.backend
        if hasattr(old_backend, "abort"):  # a process backend: kill the raised, dead or hung child
            old_backend.abort()
        backend = self.backend.fresh()
        with self._cv:
            self.backend = backend
            self._spawn_locked(backend)

    # -- requests (any thread, never blocking on the model) ---------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start again from the context frames (a fresh noise seed unless ``seed``)."""
        with self._cv:
            self._context_id += 1
            self._queue.clear()
            self._requests["reset"] = self._draw_seed() if seed is None else int(seed)
            self._cv.notify_all()

    def configure(self, **settings) -> None:
        """Switch sampling settings live (``steps=``, ``chunk=``); applied between chunks."""
        with self._cv:
            self._requests.setdefault("configure", {}).update(settings)
            self._cv.notify_all()

    def pause(self, paused: bool = True) -> None:
        with self._cv:
            self._paused = bool(paused)
            self._cv.notify_all()
        if not paused:
            self.slot.clear_stamps()

    @property
    def kills_hung_workers(self) -> bool:
        """True when the backend runs in a child process that ``restart()`` can kill (nothing is left behind)."""
        return hasattr(self.backend, "abort")

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    # -- output ------------------------------------------------------------------------------
    def poll(self) -> Chunk | None:
        """The oldest chunk not yet handed out, or None (never blocks)."""
        with self._cv:
            if not self._queue:
                return None
            chunk = self._queue.popleft()
            self._cv.notify_all()  # room for the worker
            return chunk

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for output; True if a chunk is waiting."""
        with self._cv:
            if not self._queue:
                self._cv.wait(timeout)
            return bool(self._queue)

    def health(self) -> Health:
        with self._cv:
            t, fault, epoch = self._thread, self._fault, self._epoch
            busy, starting, phase = self._busy_since, self._starting_since, self._phase
            stopping = self._stopping
        now = self.clock()
        if stopping:
            return Health("stopped")
        if fault is not None and fault[0] == epoch:
            return Health("raised", fault[1], fault[2], phase=phase)
        if t is None:
            return Health("stopped")
        if not t.is_alive():
            return Health("died", "the generation worker exited without an error", phase=phase)
        if starting is not None:
            start_s = (now - starting) / 1e9
            if start_s > self.cfg.start_timeout_s:
                return Health("stalled", f"the generation worker has not started in {start_s:.1f} s "
                                         f"(start_timeout_s {self.cfg.start_timeout_s:g} s)", busy_s=start_s,
                              phase="start")
            return Health("starting", busy_s=start_s, phase="start")
        if busy is not None:
            busy_s = (now - busy) / 1e9
            if busy_s > self.cfg.stall_timeout_s:
                return Health("stalled", f"one generation has run for {busy_s:.1f} s "
                                         f"(limit {self.cfg.stall_timeout_s:g} s)", busy_s=busy_s, phase=phase)
            return Health("ok", busy_s=busy_s, phase=phase)
        return Health("ok" if self.steps or self._queue else "starting")

    # -- the worker ----------------------------------------------------------------------------
    def _alive(self, epoch: int) -> bool:
        return epoch == self._epoch and not self._stopping

    def _publish(self, epoch: int, chunk: Chunk) -> bool:
        with self._cv:
            if not self._alive(epoch) or chunk.context_id != self._context_id:
                return False  # from an abandoned worker or a context the player already left
            self._queue.append(chunk)
            self._cv.notify_all()
        if self.on_output is not None:
            self.on_output()
        return True

    def _busy(self, epoch: int, busy: bool, phase: str = "step") -> None:
        """Mark the start (True) or end (False) of a generation (``phase``: reset, step, configure); an
        abandoned worker touches nothing."""
        with self._cv:
            if epoch == self._epoch:
                self._busy_since = self.clock() if busy else None
                if busy:
                    self._phase = phase

    def _started(self, epoch: int) -> None:
        with self._cv:
            if epoch == self._epoch:
                self._starting_since = None

    def _open_context(self, epoch: int, backend, seed: int, context_id: int) -> None:
        t0 = time.perf_counter_ns()
        self._busy(epoch, True, "reset")
        frames, actions = backend.reset(seed)
        self._busy(epoch, False)
        if epoch != self._epoch:
            return
        self.slot.clear_stamps()
        self._settings = dict(backend.settings)
        self._publish(epoch, Chunk(frames, "context", -1, [], t0, time.perf_counter_ns(), 0, context_id,
                                   dict(backend.settings), context_actions=actions))

    def _work(self, epoch: int, backend, seed: int) -> None:
        try:
            # A process backend starts its child (which prepares the backend there); a backend in this
            # thread prepares here (compiled forwards: found and loaded). Neither is a stalled generation.
            start = getattr(backend, "start_worker", None) or getattr(backend, "prepare", None)
            if start is not None:
                start()
            self._started(epoch)
            with self._cv:
                context_id = self._context_id
            self._open_context(epoch, backend, seed, context_id)
            index = 0
            next_start = 0
            while True:
                with self._cv:
                    while self._alive(epoch) and not self._requests and (
                            self._paused or len(self._queue) >= self.cfg.max_ahead):
                        self._cv.wait(0.1)
                    if not self._alive(epoch):
                        return
                    requests, self._requests = self._requests, {}
                    context_id = self._context_id
                if "configure" in requests:
                    self._busy(epoch, True, "configure")
                    backend.configure(**requests["configure"])
                    self._busy(epoch, False)
                    if epoch == self._epoch:
                        self._settings = dict(backend.settings)
                if "reset" in requests:
                    self._open_context(epoch, backend, requests["reset"], context_id)
                    index, next_start = 0, 0
                    continue
                if requests:
                    continue  # re-check pause/room after a settings switch
                # Pacing: wait out the frame period, interruptibly (a request or a stop wakes us).
                wait_ns = next_start - time.perf_counter_ns()
                if wait_ns > 0:
                    with self._cv:
                        if not self._requests and self._alive(epoch):
                            self._cv.wait(wait_ns / 1e9)
                    if time.perf_counter_ns() < next_start:
                        continue  # woken early: go round (requests, stop) and wait the rest
                action, stamps = self.slot.take()
                t0 = time.perf_counter_ns()
                self._busy(epoch, True)
                if self.fault_hook is not None:
                    self.fault_hook(self.steps)
                frames, info = backend.step(action)
                t1 = time.perf_counter_ns()
                self._busy(epoch, False)
                if epoch != self._epoch:
                    return  # abandoned while it ran: its frames belong to nobody
                settings = dict(backend.settings)
                self._settings = settings  # a backend may change mid-session (compiled forwards loaded)
                if self.cfg.fps > 0:
                    next_start = next_frame_start(next_start, t0, int(len(frames) * 1e9 / self.cfg.fps))
                gen_ms = (t1 - t0) / 1e6
                self.gen_ms_ema = gen_ms if self.steps == 0 else 0.9 * self.gen_ms_ema + 0.1 * gen_ms
                self.steps += 1
                index += 1
                self._publish(epoch, Chunk(frames, "gen", int(action), stamps, t0, t1, index, context_id,
                                           settings, info=info))
                if info.get("terminated") or info.get("truncated"):  # the real game ended: next episode
                    with self._cv:
                        self._context_id += 1
                        context_id = self._context_id
                    self._open_context(epoch, backend, self._draw_seed(), context_id)
                    index, next_start = 0, 0
        except Exception as e:  # reported through health(); the supervisor restarts the worker
            with self._cv:
                if epoch == self._epoch:  # an abandoned (or killed) worker must not mask a live one's fault
                    self._fault = (epoch, f"{type(e).__name__}: {e}", traceback.format_exc())
                self._cv.notify_all()
        finally:
            self._busy(epoch, False)
