"""Input-to-pixel latency and frame pacing, measured on the display side.

For every input event (stamped with ``time.perf_counter_ns()`` on arrival) the meter records,
once the first frame generated under it has been flipped to the screen:

    total        = t_present - t_input
    wait         = t_take    - t_input   # until the worker took the action for the next generation
    generation   = t_done    - t_take    # the model (or emulator) producing the chunk
    presentation = t_present - t_done    # hand-over, scaling, blit and flip

and, for every generated frame presented, the time since the previous one (FPS and jitter). Per
generated chunk (not only those that carried an input) it also keeps the generation time and, where the
backend reports it (``info['model_ms']``: the engine's own step), the model's part of it; the rest is
the transfer around the model (the pipe to a generation process, the frame's conversion to uint8).
Storage is bounded (deques), so a kiosk running all day keeps flat memory.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from worldsim.stats import percentiles


class LatencyMeter:
    def __init__(self, keep: int = 20000, recent: int = 240):
        self.keep, self.recent_n = keep, recent
        self.reset()

    def reset(self) -> None:
        self.records: collections.deque = collections.deque(maxlen=self.keep)  # (total, wait, gen, present) ms
        self.recent: collections.deque = collections.deque(maxlen=self.recent_n)  # totals, for the HUD
        self.intervals: collections.deque = collections.deque(maxlen=self.keep)  # ms between presented frames
        self.present_times: collections.deque = collections.deque(maxlen=self.recent_n)
        self.chunk_gen: collections.deque = collections.deque(maxlen=self.keep)  # ms, t_done - t_take per chunk
        self.chunk_model: collections.deque = collections.deque(maxlen=self.keep)  # ms, the model's part
        self.frames = 0
        self.inputs = 0
        self._first_ns: int | None = None
        self._last_ns: int | None = None

    def add(self, t_input_ns: int, t_take_ns: int, t_done_ns: int, t_present_ns: int) -> float:
        total = (t_present_ns - t_input_ns) / 1e6
        self.records.append((total, (t_take_ns - t_input_ns) / 1e6, (t_done_ns - t_take_ns) / 1e6,
                             (t_present_ns - t_done_ns) / 1e6))
        self.recent.append(total)
        self.inputs += 1
        return total

    def frame(self, t_present_ns: int) -> None:
        """A newly generated frame was presented."""
        if self._last_ns is not None:
            self.intervals.append((t_present_ns - self._last_ns) / 1e6)
        else:
            self._first_ns = t_present_ns
        self._last_ns = t_present_ns
        self.present_times.append(t_present_ns)
        self.frames += 1

    def chunk(self, t_take_ns: int, t_done_ns: int, model_ms: float | None = None) -> None:
        """A generated chunk was first presented: its generation time and the model's own part of it."""
        self.chunk_gen.append((t_done_ns - t_take_ns) / 1e6)
        if model_ms is not None:
            self.chunk_model.append(float(model_ms))

    def gap(self) -> None:
        """The stream was interrupted on purpose (pause, reset): do not count the pause as a frame time."""
        self._last_ns = None

    # -- read-outs -------------------------------------------------------------------------------
    def fps(self) -> float:
        """Mean presented FPS over the whole run."""
        if not self.intervals:
            return 0.0
        return 1000.0 / float(np.mean(self.intervals))

    def recent_fps(self, now_ns: int, window_s: float = 1.0) -> float:
        ts = [t for t in self.present_times if now_ns - t <= window_s * 1e9]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / ((ts[-1] - ts[0]) / 1e9)

    def recent_percentiles(self) -> tuple[float, float]:
        p = percentiles(self.recent, (50, 95))
        return p["p50"], p["p95"]

    def summary(self) -> dict:
        recs = np.asarray(self.records, dtype=np.float64).reshape(-1, 4)
        ft = percentiles(self.intervals)
        ft["std"] = float(np.std(self.intervals)) if self.intervals else float("nan")
        return {
            "latency_ms": percentiles(recs[:, 0]),
            "breakdown_ms": {"wait": percentiles(recs[:, 1]), "generation": percentiles(recs[:, 2]),
                             "presentation": percentiles(recs[:, 3])},
            "inputs": len(recs),
            "fps": self.fps(),
            "frames": self.frames,
            "frame_time_ms": ft,
            "jitter_ms": ft["std"],
            "chunk_ms": {"generation": percentiles(self.chunk_gen), "model": percentiles(self.chunk_model)},
        }


def format_summary(s: dict) -> str:
    lat, b, ft = s["latency_ms"], s["breakdown_ms"], s["frame_time_ms"]
    frames = (f"{s['frames']} frames at {s['fps']:.1f} FPS; frame time p50 {ft['p50']:.1f} ms, p99 {ft['p99']:.1f} ms, "
              f"jitter (std) {s['jitter_ms']:.1f} ms")
    ch = s.get("chunk_ms", {})
    if ch and not math.isnan(ch["generation"]["p50"]):  # some generated chunk was presented
        frames += f"; generation per chunk p50 {ch['generation']['p50']:.1f} ms"
        if not math.isnan(ch["model"]["p50"]):
            frames += f" (the model {ch['model']['p50']:.1f}, transfer {ch['generation']['p50'] - ch['model']['p50']:.1f})"
    if not s["inputs"]:
        return ("input-to-pixel latency: no inputs, so no p50/p95/p99/max (--synthetic-input RATE posts "
                "random key events)\n" + frames)
    return (f"input-to-pixel latency over {s['inputs']} inputs: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms  (median wait {b['wait']['p50']:.1f} + generation "
            f"{b['generation']['p50']:.1f} + presentation {b['presentation']['p50']:.1f} ms)\n" + frames)

