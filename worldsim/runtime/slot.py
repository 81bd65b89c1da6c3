"""The latest-wins action slot between the input side (the display loop) and the generation worker.

Two kinds of writes:

* ``set(action)``: the held-key state changed (a key went up); the newest value overwrites the old.
* ``press(action)``: a key went down. The action is *latched*: it stays pending until a generation
  consumes it with ``take()``, even if the key is released before that. This is what keeps a tap
  shorter than one frame from being lost.

``take()`` is called by the worker at the last moment before a generation starts: it returns the
pending (latched) action if there is one, else the held state, plus the arrival stamps
(``time.perf_counter_ns()``) of the input events whose effect first appears in that generation.
A key-up that arrives while a press is latched only shows in the generation after the latched one,
so its stamp is deferred to the next ``take()``; that keeps every latency record honest.

Pure Python, thread-safe, no pygame: the app maps keys to actions, the slot only holds them.
"""

from __future__ import annotations

import threading


class ActionSlot:
    def __init__(self, default: int = 0):
        self._lock = threading.Lock()
        self._default = int(default)
        self.reset()

    def reset(self, default: int | None = None) -> None:
        """Back to the resting action with nothing pending and no stamps."""
        with self._lock:
            if default is not None:
                self._default = int(default)
            self._current = self._default
            self._pending: int | None = None
            self._stamps: list[int] = []  # effect shows in the next take()
            self._deferred: list[int] = []  # effect shows one take() later (key-up behind a latch)

    def set(self, action: int, stamp_ns: int | None = None) -> None:
        """The held state is now ``action`` (latest wins)."""
        with self._lock:
            self._current = int(action)
            if stamp_ns is not None:
                (self._deferred if self._pending is not None else self._stamps).append(int(stamp_ns))

    def press(self, action: int, stamp_ns: int | None = None, held: int | None = None) -> None:
        """A key went down: latch ``action`` until a generation takes it; ``held`` is the held state
        after this event (defaults to ``action``)."""
        with self._lock:
            self._pending = int(action)
            self._current = int(action if held is None else held)
            # The new latched action already reflects every earlier key-up, so their stamps move up.
            self._stamps.extend(self._deferred)
            self._deferred = []
            if stamp_ns is not None:
                self._stamps.append(int(stamp_ns))

    def take(self) -> tuple[int, list[int]]:
        """(action for the generation about to start, stamps of the inputs it is the first to show)."""
        with self._lock:
            if self._pending is not None:
                action, self._pending = self._pending, None
                stamps, self._stamps, self._deferred = self._stamps, self._deferred, []
            else:
                action = self._current
                stamps, self._stamps = self._stamps + self._deferred, []
                self._deferred = []
            return action, stamps

    def peek(self) -> int:
        """The action ``take()`` would return now (for display), without consuming anything."""
        with self._lock:
            return self._current if self._pending is None else self._pending

    def clear_stamps(self) -> None:
        """Forget waiting stamps (after a pause or a reset the wait would not be the model's fault)."""
        with self._lock:
            self._stamps, self._deferred = [], []
