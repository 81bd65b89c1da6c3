"""Episode format: round trips, crash safety (SIGKILL of a recorder process), torn tails, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from worldsim.data.episode import (FRAMES, META, STEPS, EpisodeWriter, episode_length, list_episodes,
                                   read_episode, read_meta)
from worldsim.data.repair import repair_episode
from worldsim.data.npz import export_npz, import_npz
from worldsim.errors import DataError
from worldsim.runtime.testing import wait_for

META0 = {"env_id": "worldsim/Tiny-v0", "action_meanings": ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"],
         "policy": "test", "seed": 1}


def pattern(t, shape=(24, 20, 3)):
    """A frame that encodes its own step index, so a reader can check every frame it gets."""
    f = np.zeros(shape, np.uint8)
    f[..., 0] = t % 256
    f[..., 1] = (t // 256) % 256
    f[0, :, 2] = np.arange(shape[1]) * 7 % 256
    return f


def write(path, n, **kw):
    with EpisodeWriter(path, META0, **kw) as w:
        for t in range(n):
            w.append(pattern(t), t % 6, reward=0.5 * t, terminated=t == n - 1, timestamp_ns=1000 + t,
                     latency_ms=2.0 + t)
    return path


@pytest.mark.parametrize("codec", ["zlib", "raw"])
def test_round_trip(tmp_path, codec):
    p = write(tmp_path / "ep", 37, codec=codec, max_chunk_frames=8)
    e = read_episode(p)
    assert e.complete and not e.problems and len(e) == 37
    assert e.frames.shape == (37, 24, 20, 3) and e.frames.dtype == np.uint8
    assert all(np.array_equal(e.frames[t], pattern(t)) for t in range(37))
    assert e.actions.dtype == np.int64 and list(e.actions[:7]) == [0, 1, 2, 3, 4, 5, 0]
    assert e.rewards.dtype == np.float32 and e.rewards[3] == 1.5
    assert e.terminated.tolist() == [False] * 36 + [True]
    assert e.timestamps_ns.tolist() == list(range(1000, 1037))
    assert np.allclose(e.latency_ms, 2.0 + np.arange(37))
    assert e.meta["policy"] == "test" and e.meta["split"] == "train" and e.meta["num_steps"] == 37
    assert e.meta["software_version"] and e.env_id == "worldsim/Tiny-v0" and e.num_actions == 6
    if codec == "raw":
        assert isinstance(e.frames, np.memmap)
        assert not isinstance(read_episode(p, mmap=False).frames, np.memmap)
    steps_only = read_episode(p, load_frames=False)
    assert steps_only.frames is None and len(steps_only) == 37
    assert episode_length(p) == (37, True)


def test_extras_and_meta_updates(tmp_path):
    with EpisodeWriter(tmp_path / "ep", META0) as w:
        for t in range(5):
            w.append(pattern(t), 0, score=float(t), lives=3.0)
        w.update_meta(checkpoint_hash="abc")
    e = read_episode(tmp_path / "ep")
    assert e.latency_ms is None
    assert e.extras["score"].tolist() == [0, 1, 2, 3, 4] and e.extras["lives"].tolist() == [3.0] * 5
    assert e.meta["checkpoint_hash"] == "abc"


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(DataError, match="lacks 'action_meanings'"):
        EpisodeWriter(tmp_path / "a", {"env_id": "x"})
    with pytest.raises(DataError, match="split 'test'"):
        EpisodeWriter(tmp_path / "b", {**META0, "split": "test"})
    w = EpisodeWriter(tmp_path / "c", META0)
    with pytest.raises(DataError, match=r"uint8 \(H, W, 3\)"):
        w.append(np.zeros((8, 8, 3), np.float32), 0)
    with pytest.raises(DataError, match=r"uint8 \(H, W, 3\)"):
        w.append(np.zeros((8, 8), np.uint8), 0)
    with pytest.raises(DataError, match="outside the action set 0..5"):
        w.append(pattern(0), 6)
    w.append(pattern(0), 0)
    with pytest.raises(DataError, match="frame shape"):
        w.append(np.zeros((8, 8, 3), np.uint8), 0)
    with pytest.raises(DataError, match="extra fields"):
        w.append(pattern(1), 0, score=1.0)
    w.close()
    with pytest.raises(DataError, match="closed"):
        w.append(pattern(2), 0)
    with pytest.raises(DataError, match="already exists"):
        EpisodeWriter(tmp_path / "c", META0)


def test_exception_leaves_episode_incomplete(tmp_path):
    with pytest.raises(RuntimeError):
        with EpisodeWriter(tmp_path / "ep", META0) as w:
            for t in range(4):
                w.append(pattern(t), 0)
            raise RuntimeError("boom")
    e = read_episode(tmp_path / "ep")
    assert len(e) == 4 and not e.complete
    assert "aborted by RuntimeError" in e.problems[0]
    with pytest.raises(DataError, match="not closed"):
        read_episode(tmp_path / "ep", strict=True)


# ---------------------------------------------------------------- crash safety

RECORDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_data_episode import META0, pattern
    from worldsim.data.episode import EpisodeWriter
    w = EpisodeWriter(sys.argv[1], META0, flush_every_s={flush})
    t = 0
    while True:
        if t < {stop_at}:
            w.append(pattern(t), t % 6, reward=float(t))
            print(t + 1, flush=True)  # frames appended so far
            t += 1
        time.sleep({period})
""")


def committed(path) -> int:
    """Frames a reader finds in an episode that is still being written (0 before its first commit)."""
    try:
        return episode_length(path)[0]
    except DataError:
        return 0


def _run_recorder(path, flush, period, stop_at=10**9):
    root = str(Path(__file__).resolve().parents[1])
    code = RECORDER.format(root=root, flush=flush, period=period, stop_at=stop_at)
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, cwd=root)


@pytest.mark.parametrize("kill_after", [0.9, 1.37])
def test_sigkill_mid_recording_loses_at_most_a_second(tmp_path, kill_after):
    path = tmp_path / "ep"
    proc = _run_recorder(path, flush=0.25, period=0.004)
    try:
        deadline = time.time() + 20
        while not (path / STEPS).exists() or (path / STEPS).stat().st_size == 0:  # wait for the first commit
            assert time.time() < deadline, "recorder never committed a chunk"
            time.sleep(0.02)
        time.sleep(kill_after)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    appended = int(out.split()[-1])
    e = read_episode(path)
    assert not e.complete and "not closed" in e.problems[0]
    assert 0 < len(e) <= appended
    # what was committed is exactly what was appended, frame for frame
    assert all(np.array_equal(e.frames[t], pattern(t)) for t in range(len(e)))
    assert e.rewards.tolist() == [float(t) for t in range(len(e))]
    # flushes every 0.25 s: the loss is well under a second of frames (~250 frames/s here)
    lost_s = (appended - len(e)) * 0.004
    assert lost_s < 1.0, f"lost {appended - len(e)} frames"


def test_sigkill_while_idle_loses_nothing(tmp_path):
    """Frames appended before a pause are committed by the background flusher within flush_every_s."""
    path = tmp_path / "ep"
    proc = _run_recorder(path, flush=0.3, period=0.01, stop_at=7)
    try:
        deadline = time.time() + 20
        while proc.stdout.readline().strip() != "7":
            assert time.time() < deadline
        # idle: no append comes, the flusher must commit all 7 on its own (every 0.3 s; the deadline is
        # for a flusher that never runs, not a speed)
        assert wait_for(lambda: committed(path) == 7, 30), f"{committed(path)} of 7 frames committed after 30 s"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    e = read_episode(path)
    assert len(e) == 7 and not e.complete


def test_torn_tail_detected_reported_and_repaired(tmp_path):
    p = write(tmp_path / "ep", 30, max_chunk_frames=8)  # chunks of 8, 8, 8, 6
    steps = (p / STEPS).read_bytes()
    # simulate a crash in the middle of the last index record of an unclosed episode
    (p / STEPS).write_bytes(steps[:-20])
    meta = json.loads((p / META).read_text())
    meta["complete"] = False
    (p / META).write_text(json.dumps(meta))
    e = read_episode(p)
    assert len(e) == 24 and not e.complete
    assert any("half-written chunk" in pr for pr in e.problems)
    with pytest.raises(DataError, match="half-written"):
        read_episode(p, strict=True)
    rep = repair_episode(p)
    assert rep.kept == {str(p): 24} and rep.cut_bytes > 0 and (rep.aside / "steps.bin.from-0").exists() is False
    e = read_episode(p)
    assert e.complete and len(e) == 24 and e.meta["repaired"]["problems"]
    assert all(np.array_equal(e.frames[t], pattern(t)) for t in range(24))


def test_closed_episode_with_missing_tail_is_not_complete(tmp_path):
    p = write(tmp_path / "ep", 20, max_chunk_frames=8)
    data = (p / STEPS).read_bytes()
    (p / STEPS).write_bytes(data[: len(data) - 3])  # meta says complete, the file disagrees
    e = read_episode(p)
    assert not e.complete and len(e) == 16
    assert "says 20 steps but only 16" in e.problems[0]


def test_corrupt_frames_detected(tmp_path):
    p = write(tmp_path / "ep", 20, max_chunk_frames=8)
    raw = bytearray((p / FRAMES).read_bytes())
    raw[5] ^= 0xFF
    (p / FRAMES).write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        read_episode(p)
    assert len(read_episode(p, load_frames=False)) == 20  # the steps are still readable


def test_frames_file_shorter_than_index(tmp_path):
    p = write(tmp_path / "ep", 20, max_chunk_frames=8)
    os.truncate(p / FRAMES, (p / FRAMES).stat().st_size - 10)
    e = read_episode(p)
    assert len(e) == 16 and not e.complete and "missing" in e.problems[-1]


def test_bad_meta(tmp_path):
    p = write(tmp_path / "ep", 3)
    (p / META).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_episode(p)
    (p / META).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a worldsim episode"):
        read_meta(p)
    (p / META).unlink()
    with pytest.raises(DataError, match="no meta.json"):
        read_episode(p)
    with pytest.raises(DataError, match="not found"):
        read_episode(tmp_path / "nope")


# ---------------------------------------------------------------- npz and listing


def test_npz_round_trip_identical(tmp_path):
    p = write(tmp_path / "ep", 12)
    e = read_episode(p)
    npz = export_npz(e, tmp_path / "out" / "ep.npz")
    z = np.load(npz, allow_pickle=False)  # the documented keys (docs/episode-format.md), no pickle needed
    assert z["frames"].dtype == np.uint8 and z["actions"].dtype == np.int64
    assert str(z["env_id"]) == "worldsim/Tiny-v0" and list(z["action_meanings"])[:2] == ["NOOP", "FIRE"]
    back = read_episode(import_npz(npz, tmp_path / "imp"))
    for k in ("frames", "actions", "rewards", "terminated", "timestamps_ns", "latency_ms"):
        assert np.array_equal(getattr(e, k), getattr(back, k)), k
    for k in ("env_id", "action_meanings", "policy", "seed", "split", "software_version", "created_unix"):
        assert back.meta[k] == e.meta[k], k
    assert back.complete and back.meta["imported_from"] == str(npz)
    # the .npz itself reads as an episode everywhere
    ez = read_episode(npz)
    assert ez.complete and np.array_equal(ez.frames, e.frames) and ez.meta["policy"] == "test"
    with pytest.raises(DataError, match="already exists"):
        import_npz(npz, tmp_path / "imp")


def test_plain_npz_minimal(tmp_path):
    f = tmp_path / "m.npz"
    np.savez(f, frames=np.zeros((4, 8, 8, 3), np.uint8), actions=np.arange(4), env_id="worldsim/Tiny-v0",
             action_meanings=np.array(META0["action_meanings"]), start=np.int64(9))
    e = read_episode(f)
    assert len(e) == 4 and e.rewards.tolist() == [0] * 4 and e.meta["start"] == 9 and e.split == "train"


@pytest.mark.parametrize("arrays,match", [
    (dict(actions=np.arange(4)), "lacks 'env_id'"),
    (dict(frames=np.zeros((4, 8, 8, 3), np.float32), actions=np.arange(4)), "must be uint8"),
    (dict(frames=np.zeros((4, 8, 8), np.uint8), actions=np.arange(4)), "must be uint8"),
    (dict(frames=np.zeros((5, 8, 8, 3), np.uint8), actions=np.arange(4)), "5 frames but 4 actions"),
    (dict(frames=np.zeros((4, 8, 8, 3), np.uint8), actions=np.zeros(4, np.float32)), "int64 vector"),
    (dict(frames=np.zeros((4, 8, 8, 3), np.uint8), actions=np.arange(4), rewards=np.zeros(3)), "'rewards' has shape"),
])
def test_bad_npz(tmp_path, arrays, match):
    f = tmp_path / "bad.npz"
    base = {"env_id": "worldsim/Tiny-v0", "action_meanings": np.array(["NOOP", "FIRE"])}
    if "lacks 'env_id'" in match:
        base = {}
    np.savez(f, **base, **arrays)
    with pytest.raises(DataError, match=match):
        read_episode(f)


def test_truncated_and_pickled_npz(tmp_path):
    good = tmp_path / "g.npz"
    np.savez(good, frames=np.zeros((4, 8, 8, 3), np.uint8), actions=np.arange(4), env_id="worldsim/Tiny-v0",
             action_meanings=np.array(["NOOP"]))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_episode(cut)
    pk = tmp_path / "pk.npz"
    np.savez(pk, frames=np.zeros((1, 8, 8, 3), np.uint8), actions=np.arange(1), env_id="x",
             action_meanings=np.array(["NOOP", 1], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        read_episode(pk)


def test_list_episodes(tmp_path):
    write(tmp_path / "ds" / "train" / "ep_000010", 2)
    write(tmp_path / "ds" / "train" / "ep_000002", 2)
    export_npz(tmp_path / "ds" / "train" / "ep_000002", tmp_path / "ds" / "extra" / "x.npz")
    (tmp_path / "ds" / ".cache").mkdir()
    eps = list_episodes(tmp_path / "ds")
    assert [p.name for p in eps] == ["x.npz", "ep_000002", "ep_000010"]
    assert list_episodes(eps[1]) == [eps[1]] and list_episodes(eps[0]) == [eps[0]]
    with pytest.raises(DataError, match="not found"):
        list_episodes(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is not an episode"):
        list_episodes(tmp_path / "f.txt")
