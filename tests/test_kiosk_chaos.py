"""The kiosk under attack: its generation worker killed (SIGKILL) or stopped (SIGSTOP) while it
starts, while it resets and while it generates. Frames come back after every fault, every fault is one
JSON line, and SIGTERM still ends the booth with exit code 0.

The fast tests: the sequence that once hung the booth for good (kill the worker, then its replacement
0.3 s after it appears, while it imports torch) and a bad ``start_timeout_s``. The slow one runs
``python play.py --kiosk --headless`` under random faults for ``WORLDSIM_CHAOS_S`` seconds (default
90; ``WORLDSIM_CHAOS_SEED`` repeats a run). By hand, for longer, with its figures printed:

    WORLDSIM_CHAOS_S=300 python -m pytest -q -s -m slow tests/test_kiosk_chaos.py
"""

import collections
import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.app.kiosk import KioskConfig  # noqa: E402
from worldsim.app.player import PlayConfig  # noqa: E402
from worldsim.app.synthetic import build_player  # noqa: E402
from worldsim.runtime import ProcessBackend, load_playable  # noqa: E402
from worldsim.runtime.testing import (generation_children, tiny_model_config, wait_for,  # noqa: E402
                                      write_random_checkpoint)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker in /proc (Linux)")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """64x64 frames, 8 of them as context: the start data (~100 KB) is more than a pipe holds, as the
    default model's is; a tiny network, so generation is cheap."""
    mc = dataclasses.replace(tiny_model_config(6), resolution=64, patch=8)
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "wide.safetensors", model_config=mc,
                                   context_frames=8)


def records(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_killing_the_worker_and_then_its_replacement_while_it_starts_does_not_hang_the_booth(ckpt):
    backend = ProcessBackend(load_playable(ckpt, dtype="fp32").backend, threads=1)
    play = PlayConfig(fullscreen=True, hud=False, start_screen=False, max_seconds=240, stall_timeout_s=5,
                      backoff_initial_s=0.2)
    log = io.StringIO()
    k = build_player(backend, kiosk=KioskConfig(play=play), log_stream=log, env_id="worldsim/Tiny-v0")
    me, deadline = os.getpid(), time.monotonic() + 180
    seen: dict = {"stage": 0, "next_look": 0.0}

    def attack(k, now):
        t = time.monotonic()
        if t > deadline:
            k.request_quit("test timeout")
        elif seen["stage"] == 0 and k.frames_presented > 5:
            seen["first"] = generation_children(me)[0]
            os.kill(seen["first"], signal.SIGKILL)
            seen["stage"] = 1
        elif seen["stage"] == 1 and t >= seen["next_look"]:  # look for the replacement every 10 ms
            seen["next_look"] = t + 0.01
            fresh = [p for p in generation_children(me) if p != seen["first"]]
            if fresh:
                seen.update(stage=2, second=fresh[0], appeared=t)
        elif seen["stage"] == 2 and t - seen["appeared"] >= 0.3:
            os.kill(seen["second"], signal.SIGKILL)  # it is importing torch
            seen.update(stage=3, frames=k.frames_presented)
        elif seen["stage"] == 3 and k.frames_presented > seen["frames"] + 10:
            k.request_quit("done")

    k.tick_hook = attack
    pygame.event.clear()
    k.run()
    recs = records(log.getvalue())
    faults = [r for r in recs if r["event"] == "fault"]
    assert k.quit_reason == "done", (seen, faults)
    assert len(faults) == 2 and all("died" in f["error"] and "exit code -9" in f["error"] for f in faults)
    assert faults[0]["phase"] in ("step", "reset") and faults[1]["phase"] == "start"
    recovered = [r for r in recs if r["event"] == "recovered"]
    assert sum(r["faults"] for r in recovered) == 2 and k.session.restarts == 2
    assert recs[-1]["event"] == "kiosk_stop" and recs[-1]["longest_gap_s"] >= recovered[-1]["gap_s"] > 0
    assert generation_children(me) == []  # the last worker ended with the booth


def test_a_bad_start_timeout_is_one_line_and_exit_2(ckpt):
    cmd = [sys.executable, "play.py", "--kiosk", "--headless", "--checkpoint", str(ckpt), "play.start_timeout_s=0"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WORLDSIM_COMPILE": "off"})
    assert out.returncode == 2, out.stderr
    errors = [x for x in out.stderr.splitlines() if "error" in x.lower()]
    assert len(errors) == 1 and "start_timeout_s" in errors[0] and "> 0" in errors[0]
    assert "Traceback" not in out.stderr


# -- the slow chaos run ---------------------------------------------------------------------------------
START_TIMEOUT_S = 30.0  # the booth's start_timeout_s in the chaos run: a loaded 2-core machine imports torch in ~10 s
RECOVERY_S = START_TIMEOUT_S + 90.0  # a fault, its back-off and a fresh worker's start, on a busy machine


class JsonLog:
    """The kiosk's JSON lines as they are written (whole lines only)."""

    def __init__(self, path: Path):
        self.path, self.records, self._pos, self._part = path, [], 0, ""

    def read(self) -> list[dict]:
        if self.path.exists():
            with open(self.path) as f:
                f.seek(self._pos)
                data = f.read()
                self._pos = f.tell()
            lines = (self._part + data).split("\n")
            self._part = lines.pop()
            self.records += [json.loads(x) for x in lines if x.strip()]
        return self.records

    def count(self, event: str) -> int:
        return sum(r["event"] == event for r in self.read())

    def frames_since(self, faults: int) -> bool:
        """Whether frames came after the first ``faults`` faults: the first frame, or recoveries of them all."""
        recs = self.read()
        if faults == 0:
            return any(r["event"] == "first_frame" for r in recs)
        return sum(r["faults"] for r in recs if r["event"] == "recovered") >= faults


class Attacker:
    """Kills or stops the kiosk's generation worker at random moments of a chosen phase."""

    def __init__(self, kiosk_pid: int, tmpdir: Path, log: JsonLog, rng: random.Random):
        self.pid, self.tmpdir, self.log, self.rng = kiosk_pid, tmpdir, log, rng
        self.known: set[int] = set()  # workers seen so far
        self.injected: list[tuple[str, str]] = []  # (phase aimed at, signal)

    def workers(self) -> list[int]:
        return generation_children(self.pid)

    def new_worker(self) -> int:
        """Wait for a worker not attacked before (a replacement appears after the fault is seen and backed off)."""
        assert wait_for(lambda: set(self.workers()) - self.known, RECOVERY_S, poll=0.005), "no new worker appeared"
        pid = max(set(self.workers()) - self.known)
        self.known.add(pid)
        return pid

    def hit(self, pid: int, sig: int, phase: str) -> None:
        os.kill(pid, sig)
        self.injected.append((phase, signal.Signals(sig).name))

    def start(self, sig: int) -> None:
        """While the replacement starts (importing torch, loading the start data)."""
        pid = self.new_worker()
        time.sleep(self.rng.uniform(0.0, 0.6))  # a random moment of its start
        self.hit(pid, sig, "start")

    def reset(self, sig: int) -> None:
        """While the replacement opens its first context: its start data is loaded (the file is gone),
        and the first reset of a fresh process takes a few hundred ms."""
        pid = self.new_worker()  # its start data was written before it was spawned
        assert wait_for(lambda: not list(self.tmpdir.glob("worldsim-worker-*")), RECOVERY_S, poll=0.002)
        time.sleep(self.rng.uniform(0.0, 0.1))
        self.hit(pid, sig, "reset")

    def step(self, sig: int) -> None:
        """While frames come: after the first frame or the recovery from every fault so far."""
        assert wait_for(lambda: self.log.frames_since(len(self.injected)), RECOVERY_S, poll=0.02), \
            f"no frames after fault {len(self.injected)}"
        time.sleep(self.rng.uniform(0.1, 1.5))  # a random moment of play
        workers = self.workers()
        assert len(workers) == 1, workers
        self.known.add(workers[0])
        self.hit(workers[0], sig, "step")


def gaps_summary(recs: list[dict]) -> str:
    gaps = [r["gap_s"] for r in recs if r["event"] == "recovered"]
    median = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    return f"gaps after faults: max {max(gaps, default=0.0):.1f} s, median {median:.1f} s"


@pytest.mark.slow
def test_kiosk_keeps_showing_frames_under_random_kills_and_stops(ckpt, tmp_path):
    duration = float(os.environ.get("WORLDSIM_CHAOS_S", "90"))
    seed = int(os.environ.get("WORLDSIM_CHAOS_SEED", str(time.time_ns() % 100_000)))
    rng = random.Random(seed)
    tmpdir = tmp_path / "tmp"  # the booth's TMPDIR: where its workers' start data lives, briefly
    tmpdir.mkdir()
    log_path = tmp_path / "kiosk.jsonl"
    cmd = [sys.executable, "play.py", "--kiosk", "--headless", "--checkpoint", str(ckpt), f"log={log_path}",
           "play.stall_timeout_s=3", f"play.start_timeout_s={START_TIMEOUT_S:g}", "play.backoff_initial_s=0.25",
           "play.backoff_max_s=1", "play.healthy_after_s=1", "attract_reset_s=2"]
    env = {**os.environ, "TMPDIR": str(tmpdir), "WORLDSIM_COMPILE": "off", "SDL_VIDEODRIVER": "dummy"}
    with open(tmp_path / "kiosk.out", "w") as out:
        booth = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    log = JsonLog(log_path)
    attacker = Attacker(booth.pid, tmpdir, log, rng)
    # Every phase with both signals once, in a random order, then random faults until the time is up
    # (and every phase has been logged at least once). A stop while starting costs a whole start
    # timeout: only in the first round.
    plan = [(p, s) for p in ("start", "reset", "step") for s in (signal.SIGKILL, signal.SIGSTOP)]
    rng.shuffle(plan)
    phases = {"start", "reset", "step"}
    t_end = time.monotonic() + duration
    try:
        while True:
            missing = phases - {r["phase"] for r in log.read() if r["event"] == "fault"}
            now = time.monotonic()
            if not plan and now >= t_end and (not missing or now >= t_end + duration):
                break
            if plan:
                phase, sig = plan.pop()
            else:
                phase = rng.choice(sorted(missing or phases))
                sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGSTOP])
                if phase == "start":
                    sig = signal.SIGKILL
            # 'start' and 'reset' hit the next worker: the first, or the one replacing the last one hit
            getattr(attacker, phase)(sig)
        injected = len(attacker.injected)
        assert wait_for(lambda: log.frames_since(injected), RECOVERY_S, poll=0.05), \
            f"no frames after the last fault; {log.count('fault')} of {injected} faults logged"
        booth.send_signal(signal.SIGTERM)
        rc = booth.wait(60)
    finally:
        if booth.poll() is None:  # a failed run: end the booth and its (maybe stopped) worker
            left = generation_children(booth.pid)
            booth.kill()
            booth.wait(10)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    recs = log.read()
    faults = [r for r in recs if r["event"] == "fault"]
    stop = recs[-1]
    hit = collections.Counter(f"{p}/{s}" for p, s in attacker.injected)
    seen = collections.Counter(f"{f['phase']}/{f['kind']}" for f in faults)
    print(f"\nchaos seed {seed}: {len(attacker.injected)} faults injected {dict(hit)}; {len(faults)} logged "
          f"{dict(seen)}; {gaps_summary(recs)}; longest gap without frames {stop.get('longest_gap_s')} s; "
          f"uptime {stop.get('uptime_s')} s; exit code {rc}")
    assert rc == 0 and stop["event"] == "kiosk_stop" and stop["reason"] == "SIGTERM" and stop["exit_code"] == 0
    assert len(faults) == len(attacker.injected)  # one line per fault, no fault unseen and none spurious
    assert {f["phase"] for f in faults} == {"start", "reset", "step"}
    assert {f["kind"] for f in faults} == {"raised", "stalled"}  # killed: the worker died; stopped: it stalled
    assert sum(r["faults"] for r in recs if r["event"] == "recovered") == len(faults)  # frames after every fault
    assert list(tmpdir.glob("worldsim-worker-*")) == []  # no start data left behind
