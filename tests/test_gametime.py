"""Game time: the frame period is recorded and read back (episode, checkpoint, recording), an old
checkpoint's default is printed, the player's tick comes from the period and the speed, pacing reads an
injectable clock, training refuses mixed periods and records the period it trained at."""

from __future__ import annotations

import os

import numpy as np
import pytest

from worldsim.errors import ConfigError, DataError
from worldsim.gametime import (DEFAULT_PERIOD, NS, FramePeriod, Pace, Pacer, checkpoint_period, episode_period,
                               game_name, replay_offsets_ns)

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class FakeClock:
    """A clock that moves only when slept on: pacing read off it is exact and independent of the machine."""

    def __init__(self, t: int = 1_000 * NS):
        self.t = t
        self.slept = 0

    def __call__(self) -> int:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += int(round(s * NS))
        self.slept += 1


# -- the arithmetic -------------------------------------------------------------------------------
def test_frame_period_and_pace_arithmetic():
    assert DEFAULT_PERIOD == FramePeriod(4, 60.0)
    assert DEFAULT_PERIOD.steps_per_s == 15 and abs(DEFAULT_PERIOD.ms - 66.667) < 1e-3
    for fs, rate in ((1, 60), (2, 30), (4, 15)):
        p = FramePeriod(fs)
        assert p.steps_per_s == rate and FramePeriod.from_meta(p.to_meta()) == p
    pace = Pace(DEFAULT_PERIOD, 1.0, "Boxing")
    assert pace.tick_ns == 66_666_667 and pace.rate == 15
    assert pace.label() == "Boxing, 15 steps/s, speed 1.00x"
    assert Pace(DEFAULT_PERIOD, 2.0).tick_ns == 33_333_333 and Pace(DEFAULT_PERIOD, 0.5).rate == 7.5
    uncapped = Pace(DEFAULT_PERIOD, 0.0, "Boxing")
    assert uncapped.tick_ns == 0 and uncapped.rate == 0 and "uncapped" in uncapped.label()
    assert Pace(FramePeriod(2), 1.0).to_meta() == {"frame_period": {"frameskip": 2, "emulator_hz": 60.0,
                                                                    "period_ms": 33.333}, "speed": 1.0, "steps_per_s": 30.0}
    assert game_name("ALE/Boxing-v5") == "Boxing" and game_name("BoxingNoFrameskip-v4") == "Boxing"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="speed must be >= 0"):
            Pace(DEFAULT_PERIOD, bad)
    with pytest.raises(ConfigError, match="frameskip"):
        FramePeriod(0)
    with pytest.raises(ConfigError, match="frame_period"):
        FramePeriod.from_meta({"emulator_hz": 60})


def test_the_sessions_generation_starts_fall_on_the_tick_of_a_fake_clock():
    """The player's tick (period / speed) drives the session's fixed-clock rule (``next_frame_start``):
    starts land on t0 + k * tick however late each wake-up is, and a stall restarts the clock (no burst)."""
    from worldsim.runtime.session import next_frame_start

    for speed in (1.0, 2.0, 0.5):
        tick = Pace(DEFAULT_PERIOD, speed).tick_ns
        clock = FakeClock(t=5 * NS)
        t0, scheduled, starts = clock(), 0, []
        for k in range(8):
            start = max(clock(), scheduled)  # the worker waits until the scheduled start
            clock.t = start + 1_000_000  # ... and wakes up 1 ms late every time
            starts.append(clock())
            scheduled = next_frame_start(scheduled, clock(), tick)
            clock.t += 10_000_000  # a 10 ms generation
        gaps = np.diff(starts)
        assert np.all(np.abs(gaps - tick) <= 1_000_000), (speed, gaps)  # within the wake-up lateness, not adding up
        assert abs((starts[-1] - starts[1]) - 6 * tick) <= 1_000_000
        assert t0 + 7 * tick <= starts[-1] <= t0 + 7 * tick + 2_000_000
    tick = Pace(DEFAULT_PERIOD, 1.0).tick_ns
    late = 10 * NS + 3 * tick  # a pause of three ticks: the next start is one tick after it, not three at once
    assert next_frame_start(10 * NS, late, tick) == late + tick


def test_replay_offsets_follow_timestamps_scaled_by_speed():
    ts = np.array([0, 66, 133, 200, 5_000], dtype=np.int64) * 1_000_000  # a 4.8 s pause before the last
    assert list(replay_offsets_ns(ts, 1.0) // 1_000_000) == [0, 66, 133, 200, 700]  # the pause plays as 0.5 s
    assert list(replay_offsets_ns(ts, 2.0) // 1_000_000) == [0, 33, 66, 100, 350]
    assert list(replay_offsets_ns(ts, 0.0)) == [0, 0, 0, 0, 0]


def test_pacer_waits_on_the_clock_it_is_given():
    clock = FakeClock()
    pacer = Pacer(clock, clock.sleep, slice_s=0.005)
    due = clock() + 66_666_667
    naps = 0
    while not pacer.nap(due):
        naps += 1
    assert due <= clock() <= due + 2 and naps in (13, 14)  # 13 slices of 5 ms, then the 1.67 ms rest


# -- episodes -------------------------------------------------------------------------------------
def write_episode(path, *, meta_extra=None, n=6, dt_ms=66.667):
    from worldsim.data.episode import EpisodeWriter

    meta = {"env_id": "ALE/Boxing-v5", "action_meanings": ["NOOP", "FIRE"], **(meta_extra or {})}
    with EpisodeWriter(path, meta) as w:
        for t in range(n):
            w.append(np.full((8, 8, 3), 10 * t, np.uint8), t % 2, timestamp_ns=int(t * dt_ms * 1e6))
    return path


def test_episode_frame_period_recorded_derived_or_default(tmp_path):
    from worldsim.data.episode import read_episode

    recorded = write_episode(tmp_path / "a", meta_extra={"frame_period": FramePeriod(2).to_meta(), "frameskip": 2})
    old_skip = write_episode(tmp_path / "b", meta_extra={"frameskip": 1})
    oldest = write_episode(tmp_path / "c")
    assert read_episode(recorded).frame_period == FramePeriod(2)
    assert read_episode(old_skip).frame_period == FramePeriod(1)  # from its env metadata
    assert episode_period(read_episode(oldest).meta) is None and read_episode(oldest).frame_period == DEFAULT_PERIOD


def test_tiny_game_records_its_own_period():
    from worldsim.envs import make_env

    d = make_env("worldsim/Tiny-v0", frameskip=2).describe()  # the tiny game has no frames to skip
    assert d["frame_period"] == {"frameskip": 1, "emulator_hz": 15.0, "period_ms": 66.667}


@pytest.fixture(scope="module")
def boxing(tmp_path_factory):
    """Two tiny Boxing collections, at frameskip 1 and 2 (a few dozen emulator steps each)."""
    pytest.importorskip("ale_py")
    from worldsim.cli import main as worldsim

    root = tmp_path_factory.mktemp("boxing")
    out = {}
    for fs in (1, 2):
        out[fs] = root / f"fs{fs}"
        assert worldsim(["collect", "--env", "ALE/Boxing-v5", "--frameskip", str(fs), "--steps", "24",
                         "--max-episode-frames", "12", "--workers", "0", "--out", str(out[fs]), "--no-progress"]) == 0
    return out


def test_collect_at_frameskip_1_and_2_writes_that_period(boxing):
    from worldsim.data.episode import list_episodes, read_episode

    for fs, path in boxing.items():
        eps = list_episodes(path)
        assert len(eps) == 2
        for ep in eps:
            e = read_episode(ep)
            assert e.frame_period == FramePeriod(fs) and e.meta["frame_period"]["period_ms"] == round(1000 * fs / 60, 3)


def micro_training(tmp_path) -> list[str]:
    """Overrides that train a micro Boxing model for two steps on the collections above."""
    return ["data.resolution=16", "model.resolution=16", "model.dim=32", "model.depth=2", "model.num_actions=18",
            "data.clip_len=4", "optim.steps=2", "optim.batch_size=2", "run.bf16=false", "run.sample_every=-1",
            "run.progress=false", f"data.cache_dir={tmp_path / 'cache'}", "data.split=null"]


def test_training_records_the_datas_period_and_refuses_a_mix(boxing, tmp_path, capsys):
    from worldsim.checkpoint import read_meta
    from worldsim.cli import main as worldsim
    from worldsim.train.data import DataConfig, open_clips

    micro = micro_training(tmp_path)
    out = tmp_path / "teacher"
    assert worldsim(["train", "stage0", "configs/stage0_teacher.yaml", f"out_dir={out}",
                     f"data.paths=[{boxing[2]}]", *micro]) == 0
    meta = read_meta(out / "final.safetensors")
    assert meta["frame_period"] == FramePeriod(2).to_meta()
    resolved = checkpoint_period(meta, "final.safetensors")
    assert resolved.period == FramePeriod(2) and resolved.source == "checkpoint" and not resolved.note

    cfg = DataConfig(paths=[str(boxing[1]), str(boxing[2])], clip_len=4, resolution=16, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError) as e:
        open_clips(cfg, None)
    msg = str(e.value)
    assert "\n" not in msg and "mixes frame periods" in msg and "frameskip 1" in msg and "frameskip 2" in msg
    assert str(boxing[1]) in msg and str(boxing[2]) in msg
    capsys.readouterr()
    assert worldsim(["train", "stage0", "configs/stage0_teacher.yaml", f"out_dir={tmp_path / 'mixed'}",
                     f"data.paths=[{boxing[1]},{boxing[2]}]", *micro]) == 2
    err = capsys.readouterr().err.strip()
    assert "mixes frame periods" in err and "\n" not in err


def test_continuing_a_student_on_data_of_another_period_is_refused_unless_retimed(boxing, tmp_path, capsys):
    from worldsim.checkpoint import read_meta
    from worldsim.cli import main as worldsim

    micro = micro_training(tmp_path)
    first = tmp_path / "s2"
    assert worldsim(["train", "stage1", "configs/stage1_teacher_forcing.yaml", f"out_dir={first}",
                     f"data.paths=[{boxing[2]}]", *micro]) == 0
    capsys.readouterr()
    assert worldsim(["train", "stage1", "configs/stage1_teacher_forcing.yaml", f"out_dir={tmp_path / 's1'}",
                     f"data.paths=[{boxing[1]}]", f"init.student={first / 'final.safetensors'}", *micro]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "frameskip 2" in err and "frameskip 1" in err and "init.retime=true" in err, err
    assert not (tmp_path / "s1" / "final.safetensors").exists()
    # init.retime=true: the frameskip-2 student continues on frameskip-1 data and records the new period
    assert worldsim(["train", "stage1", "configs/stage1_teacher_forcing.yaml", f"out_dir={tmp_path / 's1'}",
                     f"data.paths=[{boxing[1]}]", f"init.student={first / 'final.safetensors'}", "init.retime=true",
                     *micro]) == 0
    assert read_meta(tmp_path / "s1" / "final.safetensors")["frame_period"] == FramePeriod(1).to_meta()


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_period_recorded_from_its_data_or_the_default(tmp_path):
    assert checkpoint_period({"frame_period": FramePeriod(1).to_meta()}).period == FramePeriod(1)
    data = tmp_path / "data"
    write_episode(data / "train" / "ep_000000", meta_extra={"frameskip": 2, "frame_period": FramePeriod(2).to_meta()})
    old = {"env_id": "ALE/Boxing-v5", "train_config": {"data": {"paths": [str(tmp_path / "gone"), str(data)]}}}
    r = checkpoint_period(old, "old.safetensors")
    assert r.period == FramePeriod(2) and r.source == f"training data {data}" and not r.note
    r = checkpoint_period({"env_id": "ALE/Boxing-v5", "train_config": {"data": {"paths": ["nowhere"]}}}, "old.safetensors")
    assert r.is_default and r.period == DEFAULT_PERIOD
    assert r.note == ("model old.safetensors records no frame period; playing at frameskip 4 (15 steps/s), "
                      "the ALE v5 default; set speed= to play it faster or slower")
    tiny = checkpoint_period({"env_id": "worldsim/Tiny-v0"})  # the built-in game's id fixes its period
    assert tiny.period == FramePeriod(1, 15.0) and not tiny.note


def test_shipped_model_plays_at_30_steps_per_second():
    """The shipped file records its period: frameskip 2, Boxing at 30 steps a second."""
    from pathlib import Path

    from worldsim.checkpoint import read_meta

    path = Path(__file__).resolve().parents[1] / "assets" / "default.safetensors"
    if not path.is_file():
        pytest.skip("no shipped model")
    r = checkpoint_period(read_meta(path), path.name)
    assert r.source == "checkpoint" and r.period.frameskip == 2 and r.period.steps_per_s == 30


# -- play, recording, replay ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def old_ckpt(tmp_path_factory):
    """A micro Boxing-shaped model written without a frame period, as files before it were."""
    from worldsim.runtime.testing import tiny_model_config, write_random_checkpoint

    return str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "old.safetensors",
                                       model_config=tiny_model_config(18)))


def test_play_says_the_default_once_and_records_period_and_speed(old_ckpt, tmp_path, capsys):
    from worldsim.app.cli import main as play_main
    from worldsim.data.episode import list_episodes, read_episode

    rec = tmp_path / "rec"
    rc = play_main(["--headless", "--checkpoint", old_ckpt, "--max-seconds", "3", "--record", str(rec),
                    "--speed", "0.5", "worker=thread", "threads=1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("records no frame period; playing at frameskip 4 (15 steps/s), the ALE v5 default") == 1
    assert "pace: Boxing at 0.5x its own speed, 7.5 steps/s" in err
    (ep,) = list_episodes(rec)
    meta = read_episode(ep).meta
    assert meta["speed"] == 0.5 and meta["sampling"]["speed"] == 0.5 and meta["steps_per_s"] == 7.5
    assert FramePeriod.from_meta(meta["frame_period"]) == DEFAULT_PERIOD


def test_replay_paces_by_the_recorded_timestamps_on_a_fake_clock(tmp_path):
    pygame = pytest.importorskip("pygame")
    from worldsim.app.display import Screen, init_pygame
    from worldsim.app.replay import replay

    init_pygame(headless=True)
    rec = write_episode(tmp_path / "rec" / "ep_000000", meta_extra={"source": "play", "speed": 1.0}, n=5, dt_ms=50)
    collected = write_episode(tmp_path / "col" / "ep_000000", meta_extra={"frameskip": 2}, n=5)
    try:
        for path, speed, step_ms in ((rec, 1.0, 50.0), (rec, 2.0, 25.0), (collected, 1.0, 1000 * 2 / 60)):
            clock = FakeClock()
            shown = []
            screen = Screen((8, 8), scale=4)
            out = replay(path.parent, screen, speed=speed, pacer=Pacer(clock, clock.sleep),
                         on_frame=lambda t, ep: shown.append(clock()))
            assert out["frames"] == 5
            gaps_ms = np.diff(shown) / 1e6
            assert np.allclose(gaps_ms, step_ms, atol=1e-3), (path, speed, gaps_ms)
    finally:
        pygame.display.quit()


def test_removed_fps_key_names_its_replacement(tmp_path, capsys):
    from worldsim.app.cli import main as play_main

    cfg = tmp_path / "play.yaml"
    cfg.write_text("fps: 30\n")
    assert play_main(["--headless", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'fps'" in err and "speed=" in err and "\n" not in err


def test_bench_latency_reports_the_tick_and_the_time_to_spare(old_ckpt, tmp_path, capsys):
    """At micro size and a fraction of a second: the JSON has the pace figures per setting and for the emulator."""
    import json

    from worldsim.cli import main as worldsim

    pytest.importorskip("ale_py")
    out = tmp_path / "lat.json"
    assert worldsim(["bench", "latency", "--checkpoint", old_ckpt, "--duration", "0.5", "--warmup", "0.2",
                     "--settings", "1:1", "--worker", "thread", "--rate", "20", "--real", "ALE/Boxing-v5",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "to spare per tick" in text and "real emulator ALE/Boxing-v5" in text and "wait for the tick" in text
    r = json.loads(out.read_text())
    assert abs(r["tick_ms"] - 66.667) < 1e-2 and r["pace"]["speed"] == 1.0
    gen = r["chunk_ms"]["generation"]["p50"]
    assert gen is not None and abs(r["spare_ms"] - (r["tick_ms"] - gen)) < 1e-6
    for part in ("wait", "generation", "presentation"):
        assert set(r["breakdown_ms"][part]) >= {"p50", "p95", "p99", "max"}
    assert r["real"]["env_id"] == "ALE/Boxing-v5" and abs(r["real"]["tick_ms"] - 66.667) < 1e-2
    assert worldsim(["bench", "latency", "--fps", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fps" in err and "--speed" in err and "\n" not in err
