"""``worldsim data validate`` / ``info`` / ``export`` / ``import``: every bad input gives its one-line message."""

import json

import numpy as np
import pytest

from worldsim.cli import main as worldsim
from worldsim.data.episode import META, STEPS, EpisodeWriter, read_episode
from worldsim.data.validate import validate

TINY = {"env_id": "worldsim/Tiny-v0", "action_meanings": ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]}


def episode(path, n=6, meta=None, **kw):
    with EpisodeWriter(path, {**TINY, **(meta or {})}) as w:
        for t in range(n):
            w.append(np.full((16, 16, 3), t, np.uint8), t % 6, timestamp_ns=t, **kw)
    return path


def plain(path, **over):
    arrays = dict(frames=np.zeros((4, 8, 8, 3), np.uint8), actions=np.arange(4), env_id="worldsim/Tiny-v0",
                  action_meanings=np.array(TINY["action_meanings"]))
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_clean_dataset_passes(tmp_path, capsys):
    episode(tmp_path / "ds" / "train" / "ep_000000", meta={"seed": 1})
    episode(tmp_path / "ds" / "heldout" / "ep_000000", meta={"seed": 2, "split": "heldout"})
    assert validate(tmp_path / "ds") == []
    assert worldsim(["data", "validate", str(tmp_path / "ds")]) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize("case,match", [
    ("missing", "not found"),
    ("empty", "no episodes found"),
    ("torn", "half-written chunk"),
    ("unclosed", "episode not closed"),
    ("bad_json", "not valid JSON"),
    ("wrong_dtype", "must be uint8"),
    ("length", "5 frames but 4 actions"),
    ("action_range", "actions outside the action set 0..5 (first: 9 at step 2)"),
    ("unknown_env", "unknown game id 'ALE/Boxng-v5'"),
    ("meanings", "differ from worldsim/Tiny-v0's"),
    ("truncated_npz", "truncated or corrupt"),
    ("early_terminal", "terminated is set at step 1"),
    ("heldout_seed", "held-out episode uses seed 5"),
    ("mixed", "mix games or action sets"),
])
def test_each_problem_reported(tmp_path, case, match, capsys):
    target = tmp_path / "t"
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "empty":
        target.mkdir()
    elif case == "torn":
        p = episode(target / "ep")
        (p / STEPS).write_bytes((p / STEPS).read_bytes()[:-7])
    elif case == "unclosed":
        w = EpisodeWriter(target / "ep", TINY)
        w.append(np.zeros((8, 8, 3), np.uint8), 0)
        w.abort("KeyboardInterrupt")
    elif case == "bad_json":
        p = episode(target / "ep")
        (p / META).write_text("{")
    elif case == "wrong_dtype":
        target.mkdir()
        plain(target / "x.npz", frames=np.zeros((4, 8, 8, 3), np.float32))
    elif case == "length":
        target.mkdir()
        plain(target / "x.npz", frames=np.zeros((5, 8, 8, 3), np.uint8))
    elif case == "action_range":
        target.mkdir()
        plain(target / "x.npz", actions=np.array([0, 1, 9, 2]))
    elif case == "unknown_env":
        target.mkdir()
        plain(target / "x.npz", env_id="ALE/Boxng-v5")
    elif case == "meanings":
        target.mkdir()
        plain(target / "x.npz", action_meanings=np.array(["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "JUMP"]))
    elif case == "truncated_npz":
        target.mkdir()
        raw = plain(tmp_path / "g.npz").read_bytes()
        (target / "x.npz").write_bytes(raw[: len(raw) // 2])
    elif case == "early_terminal":
        target.mkdir()
        plain(target / "x.npz", terminated=np.array([False, True, False, True]))
    elif case == "heldout_seed":
        episode(target / "train" / "ep_000000", meta={"seed": 5})
        episode(target / "heldout" / "ep_000000", meta={"seed": 5, "split": "heldout"})
    elif case == "mixed":
        target.mkdir()
        plain(target / "a.npz")
        plain(target / "b.npz", env_id="ALE/Pong-v5",
              action_meanings=np.array(["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]),
              actions=np.zeros(4, np.int64))
    problems = validate(target)
    assert problems, case
    assert any(match in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    assert worldsim(["data", "validate", str(target)]) == 1
    out = capsys.readouterr().out
    assert match in out and "problem(s) found" in out


def test_every_problem_names_file_and_fix(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    plain(target / "x.npz", actions=np.array([0, 1, 9, 2]))
    [p] = validate(target)
    assert str(target / "x.npz") in p and "fix:" in p


def test_repair_cli_then_validate(tmp_path, capsys):
    p = episode(tmp_path / "ds" / "ep")
    (p / STEPS).write_bytes((p / STEPS).read_bytes()[:-7])
    assert worldsim(["data", "validate", str(tmp_path / "ds")]) == 1
    before = {f.name: f.read_bytes() for f in p.iterdir()}
    capsys.readouterr()
    assert worldsim(["data", "repair", str(tmp_path / "ds")]) == 1  # the only chunk was torn: nothing intact
    out = capsys.readouterr().out
    assert "refused" in out and "delete the episode" in out
    assert {f.name: f.read_bytes() for f in p.iterdir()} == before  # refused: left as it was


def test_info_and_json(tmp_path, capsys):
    episode(tmp_path / "ds" / "train" / "ep_000000", n=8, meta={"policy": "sticky"})
    episode(tmp_path / "ds" / "heldout" / "ep_000000", n=4, meta={"policy": "sticky", "split": "heldout"})
    out_json = tmp_path / "info.json"
    rc = worldsim(["data", "info", str(tmp_path / "ds"), "--bench", "--clip-len", "3", "--resolution", "8",
                   "--bench-seconds", "0.2", "--cache-dir", str(tmp_path / "cache"), "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "episodes:    2 (heldout 1, train 1; 0 incomplete)" in out
    assert "steps:       12" in out and "worldsim/Tiny-v0 (2)" in out and "sticky (2)" in out
    assert "16x16x3" in out and "on disk" in out and "clips/s" in out
    info = json.loads(out_json.read_text())
    assert info["actions"]["worldsim/Tiny-v0"]["NOOP"] == 2 + 1  # steps 0 and 6, and step 0
    assert info["bench"]["clips"] == (8 - 2) + (4 - 2)


def test_export_import_cli(tmp_path, capsys):
    episode(tmp_path / "ds" / "train" / "ep_000000")
    episode(tmp_path / "ds" / "train" / "ep_000001")
    assert worldsim(["data", "export", str(tmp_path / "ds"), str(tmp_path / "npz")]) == 0
    files = sorted((tmp_path / "npz").glob("*.npz"))
    assert [f.name for f in files] == ["train_ep_000000.npz", "train_ep_000001.npz"]
    assert worldsim(["data", "import", str(tmp_path / "npz"), "--out", str(tmp_path / "back")]) == 0
    a = read_episode(tmp_path / "ds" / "train" / "ep_000001")
    b = read_episode(tmp_path / "back" / "train_ep_000001")
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert worldsim(["data", "preview", str(tmp_path / "ds" / "train" / "ep_000000"), str(tmp_path / "p.mp4")]) == 0
    assert (tmp_path / "p.mp4").stat().st_size > 0
    # bad targets: one line, exit 2
    assert worldsim(["data", "export", str(tmp_path / "ds"), str(tmp_path / "one.npz")]) == 2
    assert "holds 2 episodes" in capsys.readouterr().err
    assert worldsim(["data", "export", str(tmp_path / "ds" / "train" / "ep_000000"), str(tmp_path / "x.gif")]) == 2
    assert worldsim(["data", "import", str(tmp_path / "ds"), "--out", str(tmp_path / "z")]) == 2
    assert "is not a .npz" in capsys.readouterr().err


def test_mp4_preview_frames(tmp_path):
    import imageio.v2 as imageio

    from worldsim.data.preview import export_mp4

    p = episode(tmp_path / "ep", n=5)
    out = export_mp4(p, tmp_path / "v.mp4", fps=10, scale=3)
    r = imageio.get_reader(out)
    assert r.count_frames() == 5
    assert r.get_data(0).shape == (48, 48, 3)
