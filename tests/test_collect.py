"""``worldsim collect``: round trip collect -> read -> export npz -> import -> identical; resume; seeds;
held-out split; worker processes; bad settings."""

import json

import numpy as np
import pytest

from worldsim.cli import main as worldsim
from worldsim.data.collect import CollectConfig, collect, episode_seeds
from worldsim.data.episode import EpisodeWriter, list_episodes, read_episode
from worldsim.data.npz import export_npz, import_npz
from worldsim.envs import EnvConfig
from worldsim.errors import DataError, WorldsimError

TINY = "worldsim/Tiny-v0"


def cfg(out, **kw):
    base = dict(env=EnvConfig(env_id=TINY, max_episode_steps=40), policy="sticky", steps=100, out=str(out),
                workers=0, heldout_episodes=0, seed=3)
    base.update(kw)
    return CollectConfig(**base)


def all_frames(root):
    return {p.relative_to(root).as_posix(): read_episode(p) for p in list_episodes(root)}


def test_round_trip_collect_read_export_import(tmp_path):
    out = tmp_path / "tiny"
    s = collect(cfg(out, steps=90, heldout_episodes=1), progress=False)
    assert s["train_steps"] == 90 and s["heldout_episodes"] == 1
    eps = list_episodes(out)
    train = [read_episode(p) for p in eps if "train" in p.parts]
    assert sum(len(e) for e in train) == 90
    e = train[0]
    # 40 env steps then the final frame: 41 frames; alignment: frames[t+1] is the result of actions[t]
    assert len(e) == 41 and e.meta["end"] == "truncated" and e.complete
    assert e.meta["policy"] == "sticky" and e.meta["seed"] == episode_seeds(3, "train", 0)[0]
    assert e.meta["env_id"] == TINY and e.meta["action_meanings"][0] == "NOOP" and e.meta["frameskip"] == 1
    assert e.meta["tiny"]["sprite"] == 12 and e.meta["max_episode_steps"] == 40
    assert e.meta["frame_period"] == {"frameskip": 1, "emulator_hz": 15.0, "period_ms": 66.667}  # game time of a step
    for k in ("software_version", "policy_seed", "collection_seed", "episode_index", "repeat_prob"):
        assert k in e.meta, k
    from worldsim.envs import make_env

    env = make_env(TINY, max_episode_steps=40)
    f = env.reset(seed=e.meta["seed"])
    assert np.array_equal(f, e.frames[0])
    for t in range(len(e) - 1):  # replaying the recorded actions reproduces every recorded frame
        f, *_ = env.step(int(e.actions[t]))
        assert np.array_equal(f, e.frames[t + 1])
    npz = export_npz(e, tmp_path / "e.npz")
    back = read_episode(import_npz(npz, tmp_path / "imp"))
    for k in ("frames", "actions", "rewards", "terminated", "timestamps_ns"):
        assert np.array_equal(getattr(e, k), getattr(back, k)), k
    assert {k: v for k, v in back.meta.items() if k not in ("imported_from", "closed_unix")} == \
        {k: v for k, v in e.meta.items() if k != "closed_unix"}


def test_resume_continues_to_total_and_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    collect(cfg(a, steps=60), progress=False)
    s = collect(cfg(a, steps=130), progress=False)  # continue
    assert s["train_steps"] == 130 and s["steps_this_run"] == 70
    s = collect(cfg(a, steps=130), progress=False)  # nothing left to do
    assert s["steps_this_run"] == 0
    collect(cfg(b, steps=130), progress=False)  # in one go
    fa, fb = all_frames(a), all_frames(b)
    # same seeds, same episodes: only the cut of the episode that met the first budget differs
    assert sorted(fa) == sorted(fb)
    first = fa["train/ep_000000"]
    assert np.array_equal(first.frames, fb["train/ep_000000"].frames)
    cut = fa["train/ep_000001"]
    assert cut.meta["end"] == "budget" and len(cut) == 60 - 41
    assert np.array_equal(cut.frames, fb["train/ep_000001"].frames[:len(cut)])
    runs = json.loads((a / "collection.json").read_text())["runs"]
    assert [r["steps_requested"] for r in runs] == [60, 130, 130]


def test_resume_recollects_unclosed_episode(tmp_path):
    out = tmp_path / "d"
    collect(cfg(out, steps=82), progress=False)  # two full episodes of 41
    ref = read_episode(out / "train" / "ep_000001")
    import shutil

    shutil.rmtree(out / "train" / "ep_000001")
    w = EpisodeWriter(out / "train" / "ep_000001", {"env_id": TINY, "action_meanings": ref.action_meanings})
    w.append(ref.frames[0], 0)
    w.abort("SIGKILL")  # what a killed worker leaves
    s = collect(cfg(out, steps=82), progress=False)
    assert s["steps_this_run"] == 41
    again = read_episode(out / "train" / "ep_000001")
    assert again.complete and np.array_equal(again.frames, ref.frames) and np.array_equal(again.actions, ref.actions)


def test_heldout_kept_apart_by_seed(tmp_path):
    out = tmp_path / "h"
    collect(cfg(out, steps=100, heldout_episodes=3), progress=False)
    metas = [read_episode(p, load_frames=False).meta for p in list_episodes(out)]
    held = [m for m in metas if m["split"] == "heldout"]
    train = [m for m in metas if m["split"] == "train"]
    assert len(held) == 3 and all("heldout" in str(p) for p in list_episodes(out / "heldout"))
    assert not {m["seed"] for m in held} & {m["seed"] for m in train}
    assert len({m["seed"] for m in held}) == 3
    assert episode_seeds(3, "train", 0) != episode_seeds(3, "heldout", 0)


def test_settings_mismatch_and_foreign_dirs(tmp_path):
    out = tmp_path / "m"
    collect(cfg(out, steps=20), progress=False)
    with pytest.raises(DataError, match="other settings.*policy: 'sticky' -> 'random'"):
        collect(cfg(out, steps=40, policy="random"), progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not empty"):
        collect(cfg(tmp_path / "foreign"), progress=False)
    with pytest.raises(WorldsimError, match="unknown game id"):
        collect(cfg(tmp_path / "g", env=EnvConfig(env_id="ALE/Boxng-v5")), progress=False)
    assert not (tmp_path / "g").exists()  # nothing is created for a bad game
    with pytest.raises(WorldsimError, match="unknown policy"):
        collect(cfg(tmp_path / "g", policy="smart"), progress=False)
    with pytest.raises(WorldsimError, match="--out"):
        collect(cfg(""), progress=False)


def test_worker_processes_cli_and_json(tmp_path, capsys):
    out, js = tmp_path / "w", tmp_path / "s.json"
    rc = worldsim(["collect", "--env", TINY, "--policy", "scripted", "--steps", "300", "--out", str(out),
                   "--workers", "2", "--heldout-episodes", "2", "--seed", "1", "--max-episode-steps", "50",
                   "--json", str(js), "--no-progress"])
    assert rc == 0
    s = json.loads(js.read_text())
    assert s["train_steps"] == 300 and s["heldout_episodes"] == 2 and s["workers"] == 2
    assert s["steps_per_s"] > 0
    assert sum(len(read_episode(p, load_frames=False)) for p in list_episodes(out / "train")) == 300
    for p in list_episodes(out):  # every episode reproducible from its recorded seeds
        e = read_episode(p)
        assert e.complete
    assert "300 train steps" in capsys.readouterr().out
    assert worldsim(["collect", "--env", "ALE/Boxng-v5", "--out", str(tmp_path / "z")]) == 2
    assert worldsim(["collect", "--out", str(tmp_path / "z"), "stepz=3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err


def test_collect_boxing_micro(tmp_path):
    pytest.importorskip("ale_py")
    out = tmp_path / "boxing"
    s = collect(CollectConfig(steps=120, out=str(out), workers=0, policy="scripted", heldout_episodes=0,
                              max_episode_frames=50), progress=False)
    assert s["train_steps"] == 120
    e = read_episode(out / "train" / "ep_000000")
    assert e.env_id == "ALE/Boxing-v5" and e.frames.shape == (50, 210, 160, 3) and e.meta["end"] == "max_frames"
    assert len(e.action_meanings) == 18 and e.meta["script"] == "boxing"


@pytest.mark.parametrize("preset", ["collect_boxing", "collect_boxing_scripted", "collect_tiny"])
def test_presets_load(preset):
    from pathlib import Path

    from worldsim.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    c = load_config(CollectConfig, path, ["out=x"])
    assert c.out == "x" and c.steps > 0 and c.env.repeat_action_probability == 0.0
