"""``play.py`` and ``worldsim bench latency`` end to end, headless, with a tiny random checkpoint:
exit codes and one-line errors, the --json summary, record -> replay, the real-game path
(``--play-real``), and a recorder killed with SIGKILL leaving a readable episode."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pytest.importorskip("pygame")

from worldsim.app.cli import main as play_main  # noqa: E402
from worldsim.bench.latency import main as bench_main  # noqa: E402
from worldsim.data.episode import list_episodes, read_episode  # noqa: E402
from worldsim.data.validate import validate  # noqa: E402
from worldsim.errors import WorldsimError  # noqa: E402
from worldsim.runtime.testing import wait_for, write_random_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as play.py on 2 cores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"))


@pytest.mark.slow
def test_play_headless_json_record_and_replay(ckpt, tmp_path, capsys):
    out, rec = tmp_path / "play.json", tmp_path / "rec"
    # The default worker: the model in a child process. --max-seconds counts from the start, and the
    # child's start (torch import, model load) can take 5 s on a busy 2-core machine: 12 s leaves room
    # for it and still plays for seconds.
    rc = play_main(["--headless", "--checkpoint", ckpt, "--max-seconds", "12", "--json", str(out),
                    "--record", str(rec), "--steps", "1", "speed=2"])
    assert rc == 0
    s = strict_json(out)
    # How many frames fit depends on the machine's load: check that play happened and the cap held,
    # not a speed.
    assert s["settings"]["steps"] == 1 and s["frames"] >= 1
    # A random tiny-game checkpoint plays at that game's 15 steps/s: speed 2 caps generation at 30 a second.
    assert 0 < s["fps"] < 33 and s["pace"]["speed"] == 2 and abs(s["tick_ms"] - 1000 / 30) < 0.01
    assert abs(s["spare_ms"] - (s["tick_ms"] - s["chunk_ms"]["generation"]["p50"])) < 1e-6
    for k in ("p50", "p95", "p99", "max"):
        assert k in s["latency_ms"]
    assert "jitter_ms" in s and "frame_time_ms" in s
    assert validate(rec) == []
    (ep,) = list_episodes(rec)
    assert len(read_episode(ep)) >= 2  # the context frame(s) it started from, then what was played
    capsys.readouterr()
    meta = read_episode(ep).meta
    assert meta["speed"] == 2 and meta["sampling"]["speed"] == 2 and meta["frame_period"]["period_ms"] == 66.667
    assert play_main(["--headless", "--replay", str(rec), "--speed", "0"]) == 0
    assert f"replayed {len(read_episode(ep))} frames" in capsys.readouterr().out


def strict_json(path):
    """Parse as a strict reader would: a bare NaN/Infinity (no inputs -> no percentiles) is an error."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_play_headless_synthetic_input_measures_latency(ckpt, tmp_path, capsys):
    out = tmp_path / "play.json"
    rc = play_main(["--headless", "--checkpoint", ckpt, "--max-seconds", "1.5", "--synthetic-input", "20",
                    "--json", str(out), "worker=thread"])
    assert rc == 0
    printed = capsys.readouterr().out
    for word in ("p50", "p95", "p99", "max", "FPS", "jitter"):
        assert word in printed
    s = strict_json(out)
    assert s["inputs"] > 0
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 5000


def test_play_errors_are_one_line_exit_2(tmp_path, capsys):
    assert play_main(["--headless", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("play.py: error:") and "not found" in err and "\n" not in err
    assert play_main(["--headless", "--checkpoint", "x.safetensors", "sped=2"]) == 2
    assert "did you mean 'speed'" in capsys.readouterr().err
    for argv in (["fps=30"], ["--fps", "30"], ["--kiosk", "play.fps=30"], ["--headless", "speed=-1"]):
        assert play_main(["--headless", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "speed" in err, err
    assert play_main(["--headless", "--kiosk", "idle_timeout=3"]) == 2
    assert "idle_timeout_s" in capsys.readouterr().err
    assert play_main(["--headless", "worker=fork"]) == 2
    err = capsys.readouterr().err.strip()
    assert "worker must be 'process' or 'thread'" in err and "'fork'" in err and "\n" not in err


def test_a_bad_game_or_config_is_refused_before_the_display_opens(monkeypatch, capsys):
    """On a machine whose display will not open (SDL prints its own complaint), a mistyped game or key
    still gets its one line, and no window is asked for."""
    def no_display(headless=False):
        raise AssertionError("the display was opened before the flags and config were checked")

    monkeypatch.setattr("worldsim.app.display.init_pygame", no_display)
    for argv, want in ((["--game", "tetris"], "unknown game 'tetris'"), (["sped=2"], "did you mean 'speed'")):
        assert play_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and "\n" not in err, err


def test_play_real_game_records_the_same_way(tmp_path):
    rec = tmp_path / "real"
    rc = play_main(["--headless", "--play-real", "worldsim/Tiny-v0", "--max-seconds", "1.0", "--record", str(rec)])
    assert rc == 0
    assert validate(rec) == []
    (ep,) = list_episodes(rec)
    e = read_episode(ep)
    assert e.env_id == "worldsim/Tiny-v0" and e.meta["source"] == "play-real"
    assert e.frames.shape[1:] == (64, 64, 3)  # native resolution
    assert len(e) >= 2  # the game was played and recorded (how far in 1 s depends on the machine's load)


@pytest.mark.slow
def test_bench_latency_json(ckpt, tmp_path):
    out = tmp_path / "lat.json"
    assert bench_main(["--checkpoint", ckpt, "--duration", "1", "--warmup", "0.3", "--settings", "1:2,3:4",
                       "--rate", "15", "--json", str(out)]) == 0
    r = strict_json(out)
    assert r["setting"] == {"chunk": 1, "steps": 2}
    assert set(r["latency_ms"]) >= {"p50", "p95", "p99", "max"} and r["fps"] > 0  # figures, not a speed check
    assert [(x["chunk"], x["steps"]) for x in r["settings"]] == [(1, 2), (3, 4)]
    for x in r["settings"]:
        assert x["inputs"] > 0 and x["latency_ms"]["p50"] > 0


@pytest.mark.slow
def test_recording_survives_sigkill(ckpt, tmp_path):
    rec = tmp_path / "rec"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "play.py"), "--headless", "--checkpoint", ckpt,
                             "--record", str(rec), "--max-seconds", "300"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def committed():  # frames a reader finds now, while play.py still writes (0 before the episode exists)
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            return len(read_episode(list_episodes(rec)[0], warn=False))
        except (IndexError, WorldsimError):
            return 0

    try:
        assert wait_for(lambda: committed() > 10, 120, poll=0.1), "no 10 frames committed in 120 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (ep,) = list_episodes(rec)
    e = read_episode(ep, warn=False)
    assert not e.complete and len(e) > 10  # readable up to the last flush, and not passed off as complete
    assert e.frames.shape[0] == len(e.actions)


def test_bench_usage_lists_benches(capsys):
    from worldsim.bench.cli import main as bench_cli

    assert bench_cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert "engine" in out and "latency" in out
    assert bench_cli(["lateny"]) == 2
    assert "usage: worldsim bench" in capsys.readouterr().err


def test_bench_engine_quick_times_the_dtype_play_uses(ckpt, tmp_path, monkeypatch, capsys):
    """``--quick`` times the dtype play.py picks here (bf16 where the CPU has native bf16 matmuls; fp32
    where bf16 would be emulated, several times slower), and each row's share of peak is against a
    matmul peak in its own dtype."""
    import torch

    from worldsim.bench import engine_bench
    from worldsim.device import dtype_name, pick_dtype

    monkeypatch.setattr(engine_bench, "SETTINGS", [(1, 1)])  # one setting: the dtype is what is checked
    out = tmp_path / "engine.json"
    for forced in ("fp32", None):  # WORLDSIM_DTYPE as play.py reads it, then the machine's own choice
        if forced:
            monkeypatch.setenv("WORLDSIM_DTYPE", forced)
        else:
            monkeypatch.delenv("WORLDSIM_DTYPE", raising=False)
        want = dtype_name(pick_dtype(torch.device("cpu")))
        assert engine_bench.main(["--checkpoint", ckpt, "--quick", "--device", "cpu", "--json", str(out)]) == 0
        r = strict_json(out)
        assert r["play_dtype"] == want and list(r["matmul_peak_gflops"]) == [want]
        assert [row["dtype"] for row in r["rows"]] == [want]
        row = r["rows"][0]
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_achieved"] / r["matmul_peak_gflops"][want])
    with pytest.raises(SystemExit) as e:
        engine_bench.main(["--checkpoint", ckpt, "--quick", "--dtypes", "fp16"])
    assert e.value.code == 2 and "--dtypes fp16: use a comma list of bf16, fp32" in capsys.readouterr().err
