"""``worldsim eval`` end to end on a tiny random-weight checkpoint and synthetic Tiny-v0 episodes:
the JSON's keys, the saved rollouts (names, contents, readable as episodes), the wrong-game
refusal, a game without a sprite entry, the missing default checkpoint."""

import json

import numpy as np
import pytest
import torch

from worldsim.checkpoint import save_checkpoint
from worldsim.config import to_dict
from worldsim.data.episode import read_episode
from worldsim.engine import EngineConfig
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID, TinyGame
from worldsim.errors import CheckpointError, DataError, WorldsimError
from worldsim.eval import cli
from worldsim.model import ModelConfig, WorldDiT

K, H = 3, 5  # context and horizon of these runs


def make_checkpoint(path, env_id=TINY_ENV_ID, meanings=TINY_ACTIONS):
    torch.manual_seed(0)
    m = WorldDiT(ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=len(meanings)))
    with torch.no_grad():  # zero-init output layers would predict a constant frame
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    meta = {"role": "student", "stage": "test", "step": 0, "model_config": to_dict(m.cfg), "env_id": env_id,
            "action_meanings": list(meanings), "resolution": 16, "engine": to_dict(EngineConfig(window=4, sink=1))}
    save_checkpoint(path, {f"model.{k}": v for k, v in m.state_dict().items()}, meta)
    return path


def make_episode(path, seed, T=16, env_id=TINY_ENV_ID, meanings=TINY_ACTIONS):
    """A real Tiny-v0 episode at its native 64x64 (eval resizes to the model's 16x16)."""
    g, rng = TinyGame(), np.random.default_rng(seed)
    frame, frames, actions = g.reset(seed=seed), [], []
    for _ in range(T):
        a = int(rng.integers(len(TINY_ACTIONS)))
        frames.append(frame)
        actions.append(a)
        frame, *_ = g.step(a)
    np.savez(path, frames=np.stack(frames), actions=np.array(actions, np.int64), env_id=np.str_(env_id),
             action_meanings=np.array(meanings))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    ckpt = make_checkpoint(d / "tiny.safetensors")
    eps = [make_episode(d / f"run{i}.npz", seed=i) for i in range(2)]
    return d, ckpt, eps


def run(ckpt, eps, out, *extra):
    argv = ["--checkpoint", str(ckpt), "--episodes", *map(str, eps), "--context", str(K), "--horizon", str(H),
            "--json", str(out), "--starts", "2", "--dtype", "fp32", "--quiet", *extra]
    if "--spacing" not in extra:  # these tests check exact starts
        argv += ["--spacing", "even"]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


def test_eval_end_to_end(setup, capsys):
    d, ckpt, eps = setup
    res = run(ckpt, eps, d / "out" / "eval.json", "--settings", "1x1,2x2", "--save-rollouts", str(d / "roll"),
              "--free-play", "6", "--seed", "3")
    assert res["complete"] is True
    for key in ("checkpoint", "env_id", "action_meanings", "resolution", "config", "horizons", "episodes",
                "num_rollouts", "rollouts", "sprite", "baselines", "settings", "table"):
        assert key in res, key
    assert res["env_id"] == TINY_ENV_ID and res["resolution"] == 16 and res["horizons"] == [1, 2, 3, 4, 5]
    assert res["sprite"]["available"] is True
    # 16 frames, K + H = 8: starts 0 and 8 in each episode; the first predicted frame is start + K
    assert [(r["episode"], r["start"]) for r in res["rollouts"]] == [("run0", 3), ("run0", 11), ("run1", 3), ("run1", 11)]
    assert [s["name"] for s in res["settings"]] == ["1x1", "2x2"]
    for s in res["settings"]:
        for metric in ("psnr", "ssim", "sprite_err_px", "sprite_miss_rate", "sprite_err_found_px"):
            assert len(s["per_horizon"][metric]) == H, metric
        assert set(s["summary"]) >= {"psnr_h1_8", "psnr_h16", "ssim_h1_8", "sprite_err_h8", "sprite_miss_h8"}
        assert s["summary"]["psnr_h16"] is None  # the horizon is 5
        fp = s["free_play"]
        assert fp["frames"] == 6 and fp["windows"][-1]["last_frame"] == 6
        assert {"mean", "std", "hist_l1", "temporal_change", "sprite_found_rate"} <= set(fp["windows"][0])
        assert sorted(fp["snapshots"]) == ["1", "6", "strip"]
        resp = s["action_response"]  # --action-response: on by default (12 frames)
        assert resp["frames"] == 12 and set(resp["actions"]) <= {"UP", "DOWN", "LEFT", "RIGHT"} and resp["actions"]
    assert set(res["real_action_displacement"]) >= {"NOOP", "UP", "DOWN", "LEFT", "RIGHT"}
    for name in ("copy_last", "mean_frame"):
        assert len(res["baselines"][name]["per_horizon"]["psnr"]) == H
    # per-rollout values (for paired comparisons): one row per rollout, their mean is the per-horizon figure
    for entry in (*res["settings"], res["baselines"]["copy_last"]):
        pr = entry["per_rollout"]
        assert set(pr) == {"mse", "sprite_err_px"} and len(pr["mse"]) == 4 and len(pr["mse"][0]) == H
        np.testing.assert_allclose(np.nanmean(np.array(pr["sprite_err_px"], dtype=float), 0),
                                   np.array(entry["per_horizon"]["sprite_err_px"], dtype=float), rtol=1e-9)
        want = 10 * np.log10(1 / np.array(pr["mse"]).mean(0))
        np.testing.assert_allclose(want, entry["per_horizon"]["psnr_mse"], rtol=1e-9)
    assert set(res["baselines"]["mean_frame"]["per_rollout"]) == {"mse"}
    assert [r["setting"] for r in res["table"]] == ["1x1", "2x2", "copy-last", "mean-frame"]
    assert "copy-last" in capsys.readouterr().out

    # rollouts: one directory per setting, <episode>_<start>.npz, readable as plain episodes
    for setting in ("1x1", "2x2"):
        names = sorted(p.name for p in (d / "roll" / setting).iterdir())
        assert names == ["run0_11.npz", "run0_3.npz", "run1_11.npz", "run1_3.npz"]
    src = np.load(eps[1])
    z = np.load(d / "roll" / "2x2" / "run1_11.npz")
    assert z["frames"].shape == (H, 16, 16, 3) and z["frames"].dtype == np.uint8
    assert int(z["start"]) == 11 and str(z["env_id"]) == TINY_ENV_ID
    np.testing.assert_array_equal(z["actions"], src["actions"][11:11 + H])
    assert int(z["prev_action"]) == int(src["actions"][10])  # the action that produced the first frame
    assert list(z["action_meanings"]) == TINY_ACTIONS
    ep = read_episode(d / "roll" / "2x2" / "run1_11.npz")
    assert ep.env_id == TINY_ENV_ID and ep.meta["start"] == 11 and ep.meta["setting"] == "2x2"


def test_single_setting_writes_rollouts_flat_and_is_seeded(setup):
    d, ckpt, eps = setup
    a = run(ckpt, eps, d / "a.json", "--save-rollouts", str(d / "flat"), "--seed", "1", "--spacing", "stratified")
    b = run(ckpt, eps, d / "b.json", "--seed", "1", "--spacing", "stratified")
    assert [s["name"] for s in a["settings"]] == ["1x2"]  # the checkpoint's engine settings
    assert a["rollouts"] == b["rollouts"] and len(a["rollouts"]) == 4  # seeded starts: one in each half
    assert sorted(p.name for p in (d / "flat").iterdir()) == sorted(f"{r['episode']}_{r['start']}.npz"
                                                                    for r in a["rollouts"])
    assert a["settings"][0]["per_horizon"] == b["settings"][0]["per_horizon"]


def test_action_response_can_be_skipped_and_refuses_negative_frames(setup):
    d, ckpt, eps = setup
    res = run(ckpt, eps, d / "noresp.json", "--settings", "1x1", "--action-response", "0")
    assert "action_response" not in res["settings"][0] and "real_action_displacement" not in res
    with pytest.raises(WorldsimError, match="--action-response"):
        run(ckpt, eps, d / "bad.json", "--action-response", "-1")


def test_refuses_episodes_of_another_game(setup):
    d, ckpt, eps = setup
    boxing = make_episode(d / "boxing.npz", seed=0, env_id="ALE/Boxing-v5")
    with pytest.raises(DataError, match="ALE/Boxing-v5.*worldsim/Tiny-v0"):
        cli.main(["--checkpoint", str(ckpt), "--episodes", str(eps[0]), str(boxing), "--json", str(d / "x.json")])
    other_actions = make_episode(d / "other.npz", seed=0, meanings=TINY_ACTIONS[::-1])
    with pytest.raises(DataError, match="action set"):
        cli.main(["--checkpoint", str(ckpt), "--episodes", str(other_actions), "--json", str(d / "x.json")])
    assert not (d / "x.json").exists()


def test_wrong_game_is_one_line_through_the_cli(setup, capsys):
    from worldsim.cli import main as worldsim_main

    d, ckpt, _ = setup
    boxing = make_episode(d / "boxing2.npz", seed=0, env_id="ALE/Boxing-v5")
    assert worldsim_main(["eval", "--checkpoint", str(ckpt), "--episodes", str(boxing), "--json",
                          str(d / "y.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ALE/Boxing-v5" in err[0] and "worldsim/Tiny-v0" in err[0]


def test_game_without_sprite_entry_skips_the_metric_with_a_reason(tmp_path):
    from worldsim.runtime.testing import ALE_ACTIONS  # Tennis plays all 18

    # Tennis has no player locator (worldsim.eval.sprites)
    ckpt = make_checkpoint(tmp_path / "tennis.safetensors", "ALE/Tennis-v5", ALE_ACTIONS)
    ep = make_episode(tmp_path / "tennis.npz", seed=0, env_id="ALE/Tennis-v5", meanings=ALE_ACTIONS)
    res = run(ckpt, [ep], tmp_path / "p.json", "--free-play", "3")
    assert res["sprite"]["available"] is False and "ALE/Tennis-v5" in res["sprite"]["reason"]
    s = res["settings"][0]
    assert "sprite_err_px" not in s["per_horizon"] and s["summary"]["sprite_err_h8"] is None
    assert "sprite_found_rate" not in s["free_play"]["windows"][0]


def test_missing_default_checkpoint_is_a_clear_error(tmp_path, monkeypatch, setup):
    _, _, eps = setup
    monkeypatch.setattr(cli, "DEFAULT_CHECKPOINT", tmp_path / "assets" / "absent.safetensors")
    with pytest.raises(CheckpointError, match="--checkpoint"):
        cli.main(["--episodes", str(eps[0]), "--json", str(tmp_path / "z.json")])


def test_settings_parsing_and_engine_overrides(setup):
    from argparse import Namespace

    from worldsim.engine import EngineConfig
    from worldsim.errors import ConfigError

    _, ckpt, _ = setup
    base = EngineConfig(chunk=1, steps=2, window=6, timesteps=[999.0, 500.0])

    def names(**kw):
        args = Namespace(**{"settings": None, "steps": None, "chunk": None, **kw})
        return [(n, c.chunk, c.steps, c.timesteps) for n, c in cli.parse_settings(args, base)]

    assert names() == [("1x2", 1, 2, [999.0, 500.0])]  # the checkpoint's own settings, untouched
    # the checkpoint's sigmas stay with their step count (what play runs), other counts get the schedule's
    assert names(steps="1,2,4") == [("1x1", 1, 1, []), ("1x2", 1, 2, [999.0, 500.0]), ("1x4", 1, 4, [])]
    assert names(steps="4", chunk="1,3") == [("1x4", 1, 4, []), ("3x4", 3, 4, [])]
    assert names(settings="1x1,3x4,1x1") == [("1x1", 1, 1, []), ("3x4", 3, 4, [])]
    with pytest.raises(ConfigError, match="CHUNKxSTEPS"):
        names(settings="1-2")
    # sigmas asked for on the command line are never dropped in silence
    assert names(settings="1x2,3x2", engine=["timesteps=[999,500]"])[1] == ("3x2", 3, 2, [999.0, 500.0])
    with pytest.raises(ConfigError, match="timesteps"):
        names(settings="1x2,1x4", engine=["timesteps=[999,500]"])
    with pytest.raises(ConfigError, match="window"):
        names(settings="8x2")  # a chunk wider than the cache window
    _, _, eng = cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, ["window=8"])
    assert eng.window == 8 and eng.sink == 1
    with pytest.raises(ConfigError, match="window"):
        cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, ["windw=8"])


def test_bench_fps_joins_the_table(tmp_path):
    bench = {"rows": [{"chunk": 1, "steps": 2, "dtype": "bf16", "fps": 61.5},
                      {"chunk": 1, "steps": 2, "dtype": "fp32", "fps": 20.0},
                      {"chunk": 3, "steps": 4, "dtype": "fp32", "fps": 30.0}]}
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(bench))
    assert cli.bench_fps(str(p), "bf16") == {(1, 2): 61.5, (3, 4): 30.0}
    assert cli.bench_fps(str(p), "fp32") == {(1, 2): 20.0, (3, 4): 30.0}
    summary = {"psnr_h1_8": 30.0, "psnr_h16": 25.0, "psnr_mse_h1_8": 28.0, "ssim_h1_8": 0.9, "sprite_err_h8": 1.2,
               "sprite_miss_h8": 0.0}
    copy = {**summary, "psnr_h1_8": 26.5, "psnr_mse_h1_8": 28.75}
    from types import SimpleNamespace

    rows = cli.table_rows([SimpleNamespace(name="1x2", summary=summary, bench_fps=61.5)], {"copy_last": {"summary": copy}})
    assert rows[0]["psnr_gain_vs_copy_last"] == pytest.approx(3.5) and rows[0]["fps"] == 61.5
    assert rows[0]["psnr_mse_gain_vs_copy_last"] == pytest.approx(-0.75)
    text = cli.format_table(rows, 16)
    assert "61.5" in text and "+3.50" in text and "-0.75" in text and "copy-last" in text


def test_paired_comparison_of_two_evaluations(setup, tmp_path, capsys):
    """``worldsim eval compare``: B - A on shared rollouts with a bootstrap interval; a model against
    itself differs by exactly 0; evaluations on other rollouts, or without per-rollout values, refuse."""
    from worldsim.cli import main as worldsim_main
    from worldsim.errors import DataError
    from worldsim.eval.compare import compare_files

    d, ckpt, eps = setup
    a = d / "out" / "eval.json"
    if not a.exists():
        run(ckpt, eps, a, "--settings", "1x1,2x2", "--seed", "3")
    same = compare_files(a, a, "1x1", "1x1", draws=200)
    assert same["psnr_mse_h1_8"]["diff"] == 0 and same["psnr_mse_h1_8"]["ci95"] == [0.0, 0.0]
    vs_copy = compare_files(a, a, "copy_last", "1x1", draws=200)
    f = vs_copy["sprite_err_h8"]
    assert f["a"] == pytest.approx(json.loads(a.read_text())["baselines"]["copy_last"]["summary"]["sprite_err_h8"])
    assert f["ci95"][0] <= f["diff"] <= f["ci95"][1] and vs_copy["rollouts"] == 4
    # a hand-made B whose every sprite error is 1 px smaller: the interval is exactly -1
    res = json.loads(a.read_text())
    pr = res["settings"][0]["per_rollout"]
    pr["sprite_err_px"] = [[None if v is None else v - 1.0 for v in row] for row in pr["sprite_err_px"]]
    (tmp_path / "b.json").write_text(json.dumps(res))
    c = compare_files(a, tmp_path / "b.json", "1x1", "1x1", draws=200)
    assert c["sprite_err_h8"]["diff"] == pytest.approx(-1.0) and c["sprite_err_h8"]["ci95"] == pytest.approx([-1.0, -1.0])
    # refusals: other rollouts, no per-rollout values, an unknown setting, not an eval JSON
    other = dict(res, rollouts=res["rollouts"][::-1])
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="same rollouts"):
        compare_files(a, tmp_path / "other.json")
    del res["settings"][0]["per_rollout"]
    (tmp_path / "old.json").write_text(json.dumps(res))
    with pytest.raises(DataError, match="per-rollout"):
        compare_files(a, tmp_path / "old.json", "1x1", "1x1")
    with pytest.raises(DataError, match="no setting '9x9'"):
        compare_files(a, a, "9x9")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(DataError, match="not a worldsim eval"):
        compare_files(a, tmp_path / "junk.json")
    # the subcommand: prints both figures; a bad input is one line and exit 2
    assert worldsim_main(["eval", "compare", str(a), str(tmp_path / "b.json"), "--a-setting", "1x1", "--b-setting",
                          "1x1", "--draws", "200", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "MSE-PSNR h1-8" in out and "sprite error h5" in out and "B better" in out
    assert json.loads((tmp_path / "c.json").read_text())["sprite_err_h8"]["diff"] == pytest.approx(-1.0)
    for argv, msg in (([str(a), str(tmp_path / "missing.json")], "not found"),
                      ([str(a), str(a), "--draws", "10"], "--draws must be at least 100")):
        assert worldsim_main(["eval", "compare", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]


def test_refuses_episodes_of_another_frame_period(setup, capsys):
    """A model that records its time step is judged only on episodes of that step (Tiny-v0: 66.7 ms)."""
    from worldsim.cli import main as worldsim_main

    d, ckpt, eps = setup
    ep = make_episode(d / "fast.npz", seed=3)
    with np.load(ep) as z:
        arrays = dict(z)
    np.savez(ep, **arrays, frameskip=np.int64(2))  # 2 frames at 60 Hz: 33.3 ms a step
    assert worldsim_main(["eval", "--checkpoint", str(ckpt), "--episodes", str(ep), "--json", str(d / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fast.npz" in err[0] and "frameskip 2" in err[0], err
    assert not (d / "p.json").exists()
