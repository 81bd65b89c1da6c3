"""``worldsim.eval.evaluate``: one library call gives the player's yardstick (realism beside its real-versus-
real calibration, control against the real game, stability) and the open-loop figures, on a tiny random-
weight model and collected (replayable) Tiny-v0 episodes; a run that stops keeps what it measured."""

import json

import numpy as np
import pytest
import torch

from test_eval_cli import make_checkpoint
from test_eval_counterfactual import collected
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.errors import WorldsimError
from worldsim.eval import EvalConfig, EvalReport, evaluate
from worldsim.eval import cli
from worldsim.eval.report import FrameKeeper, realism_reason
from worldsim.eval.response import DIRECTIONS
from worldsim.eval.rollout import load_eval_episodes

CFG = dict(context=3, horizon=4, starts=2, batch=4, free_play=80, action_response=4, realism_frames=80,
           realism_steps=80, stability_window=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    root = collected(d, TINY_ENV_ID, steps=240, max_steps=80)  # 3 episodes, replayable on the real game
    ckpt = make_checkpoint(d / "tiny.safetensors")
    model, _, base = cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, [])
    episodes = load_eval_episodes([root], model.cfg.resolution, TINY_ENV_ID, TINY_ACTIONS)
    return d, root, ckpt, model, base, episodes


def test_evaluate_reports_realism_control_and_stability(setup):
    _, _, _, model, base, episodes = setup
    updates, snaps = [], {}
    report = evaluate(model, episodes, [("1x2", base)], EvalConfig(**CFG), TINY_ENV_ID, TINY_ACTIONS,
                      on_update=lambda r: updates.append(len(r.settings)),
                      on_snapshots=lambda name, ctx, s: snaps.update(s) or {"n": len(s)})
    assert isinstance(report, EvalReport) and report.complete and updates == [0, 1]
    assert sorted(snaps) == [1, 80]
    # realism: two halves of the real episodes read near chance; a random-weight model is told apart
    cal, s = report.calibration, report.settings[0]
    assert set(cal) == {"full", "degraded"} and cal["full"]["accuracy"] <= 0.75
    assert s.realism["full"]["accuracy"] >= 0.9 and s.realism["degraded"]["view"] == "degraded"
    assert 36 <= s.realism["full"]["train_frames"] <= 40 and 36 <= s.realism["full"]["test_frames"] <= 40  # 80 a sample
    # control: the counterfactual move ratio per direction and the player's error after the held frames
    ctl = s.control
    assert ctl["available"] and ctl["frames"] == 4 and set(ctl["move_ratio"]) <= set(DIRECTIONS)
    assert "NOOP" in ctl["error_px"] and "mean_error_px" in ctl  # None here: random weights draw no player
    # stability: frame statistics at the end of free play, the player found, first / last window realism
    st = s.stability
    assert st["frames"] == 80 and st["window"] == 30 and 0 <= st["player_found_rate"] <= 1
    assert st["realism_first"]["test_frames"] == st["realism_last"]["test_frames"] == 15  # half of the window
    assert {"mean", "std_ratio", "hist_l1"} <= set(st["drift"])
    # the tables and the JSON
    rows = report.yardstick()
    assert [r["setting"] for r in rows] == ["real vs real", "1x2"]
    assert rows[1]["realism"] == s.realism["full"]["accuracy"] and rows[1]["move_ratio"] == ctl["mean_move_ratio"]
    js = json.loads(json.dumps(cli._clean(report.to_json())))
    assert js["yardstick"][1]["realism_last"] == st["realism_last"]["accuracy"] and js["complete"] is True
    assert js["settings"][0]["free_play"]["snapshots"] == {"n": 2} and len(js["rollouts"]) == js["num_rollouts"]
    text = cli.format_yardstick(report)
    assert "real vs real" in text and "first 30" in text and "%" in text


def test_free_play_paths_pool_realism_over_paths_from_other_contexts(setup):
    """Two paths: each from its own context and seed; realism and the first/last windows pool both (as
    many frames as one path gives); frame statistics and snapshots stay the first path's."""
    import dataclasses

    _, _, _, model, base, episodes = setup
    cfg = EvalConfig(**{**CFG, "action_response": 0})
    one = evaluate(model, episodes, [("1x2", base)], cfg, TINY_ENV_ID, TINY_ACTIONS).settings[0]
    snaps = {}
    two = evaluate(model, episodes, [("1x2", base)], dataclasses.replace(cfg, free_play_paths=2), TINY_ENV_ID,
                   TINY_ACTIONS, on_snapshots=lambda name, ctx, s: snaps.update(s) or {"n": len(s)}).settings[0]
    paths = two.free_play["paths"]
    assert len(paths) == 2 and paths[0]["seed"] == 0 and paths[1]["seed"] == 1
    assert (paths[0]["episode"], paths[0]["context_start"]) != (paths[1]["episode"], paths[1]["context_start"])
    assert two.free_play["windows"] == one.free_play["windows"] and sorted(snaps) == [1, 80]
    assert two.realism["full"]["train_frames"] == one.realism["full"]["train_frames"]
    # each path's window is split by time on its own: one frame of rounding per path
    assert abs(two.stability["realism_first"]["test_frames"] - one.stability["realism_first"]["test_frames"]) <= 1
    assert two.realism["full"]["accuracy"] >= 0.9  # random weights are still told apart


def test_keepers_of_several_paths_share_the_frames_out():
    from worldsim.eval.report import PathKeepers

    k = PathKeepers(total=100, n=10, window=7, paths=3)
    for p in range(3):
        for i in range(1, 101):
            k.path(p)(i, np.full((2, 2, 3), p, np.uint8))
    spread, first = k.take("spread"), k.take("first")
    assert [len(s) for s in spread] == [4, 3, 3] and [len(f) for f in first] == [3, 2, 2]
    assert [int(s[0, 0, 0, 0]) for s in spread] == [0, 1, 2]  # each path's own frames, path after path


def test_control_reads_the_counterfactual():
    from worldsim.eval.report import SettingReport

    cf = {"actions": {"NOOP": {"cf_err_px": 1.0, "contexts": 4},
                      "UP": {"cf_err_px": 3.0, "contexts": 4, "ratio_cf": 0.5}},
          "mean_cf_err_px": 2.0, "mean_ratio_cf": 0.5}
    s = SettingReport("1x2", None, {}, {}, {}, 1.0, 1, action_response={"frames": 12, "counterfactual": cf})
    assert s.control == {"available": True, "frames": 12, "move_ratio": {"UP": 0.5},
                         "error_px": {"NOOP": 1.0, "UP": 3.0}, "mean_move_ratio": 0.5, "mean_error_px": 2.0}
    s.action_response = {"frames": 12, "counterfactual": {"available": False, "reason": "x"}}
    assert s.control["available"] is False and "replayed" in s.control["reason"]


def test_what_is_not_measured_says_why(setup):
    _, _, _, model, base, episodes = setup
    cfg = EvalConfig(**{**CFG, "free_play": 0, "action_response": 0})
    report = evaluate(model, episodes[:1], [("1x1", base)], cfg, TINY_ENV_ID, TINY_ACTIONS)
    s = report.settings[0]
    assert report.calibration["available"] is False and "--free-play" in report.calibration["reason"]
    assert s.realism["available"] is False and s.stability is None
    assert s.control["available"] is False and "--action-response" in s.control["reason"]
    assert realism_reason(EvalConfig(free_play=100, realism_frames=0), 2) == "skipped (realism frames 0)"
    assert realism_reason(EvalConfig(free_play=100), 2) is None
    one = evaluate(model, episodes[:1], [("1x1", base)], EvalConfig(**CFG), TINY_ENV_ID, TINY_ACTIONS)
    assert "2 evaluation episodes" in one.calibration["reason"]
    assert one.settings[0].realism["full"]["accuracy"] >= 0.9  # the model is still judged against real frames
    with pytest.raises(WorldsimError, match="--realism-frames"):
        EvalConfig(realism_frames=3).validate()


def test_frame_keeper_keeps_the_spread_and_both_windows():
    k = FrameKeeper(total=100, n=5, window=10)
    for i in range(1, 101):
        k(i, np.full((2, 2, 3), i, np.uint8))
    assert k.take("spread")[:, 0, 0, 0].tolist() == [1, 26, 50, 75, 100]
    assert k.take("first")[:, 0, 0, 0].tolist() == list(range(1, 11))
    assert k.take("last")[:, 0, 0, 0].tolist() == list(range(91, 101))
    assert len(k.frames) == 5 + 20 - 2  # 1 and 100 are in a window too


def test_stability_tells_a_world_that_degrades_from_one_that_holds():
    """Free play that is the real game for its first half and its mean frame after: the first window
    reads near chance against other real episodes (0.64 here), the last one near 100% (0.96)."""
    from test_eval_realism import tiny_episode
    from worldsim.eval.report import model_realism

    real = [tiny_episode(seed) for seed in range(4)]
    play = np.concatenate([tiny_episode(seed, T=50) for seed in range(10, 14)])  # (200, 16, 16, 3)
    play[100:] = play[:100].mean(0).round().astype(np.uint8)  # the world collapses to a blur halfway
    cfg = EvalConfig(free_play=200, realism_frames=200, realism_steps=150, stability_window=100)
    keeper = FrameKeeper(200, 200, 100)
    for i, f in enumerate(play, 1):
        keeper(i, f)
    fp = {"frames": 200, "drift_last_window": {"sprite_found_rate": 0.5}}
    realism, st = model_realism(keeper, real, cfg, fp)
    assert st["realism_first"]["accuracy"] <= 0.75 and st["realism_last"]["accuracy"] >= 0.9
    assert 0.6 <= realism["full"]["accuracy"] and st["player_found_rate"] == 0.5


def test_a_stopped_run_keeps_what_it_measured(setup, tmp_path, monkeypatch, capsys):
    """--compiled without built forwards fails at the first setting: the JSON written after the real
    figures stays, marked incomplete; the error is one line."""
    from worldsim.cli import main as worldsim_main

    _, root, ckpt, *_ = setup
    monkeypatch.setenv("WORLDSIM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "e.json"
    assert worldsim_main(["eval", "--checkpoint", str(ckpt), "--episodes", str(root), "--context", "3", "--horizon",
                          "4", "--starts", "1", "--dtype", "fp32", "--quiet", "--free-play", "40", "--realism-frames",
                          "40", "--realism-steps", "20", "--compiled", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no compiled forwards" in err[-1] and "worldsim compile" in err[-1]
    res = json.loads(out.read_text())
    assert res["complete"] is False and res["settings"] == [] and res["calibration"]["full"]["accuracy"] is not None
    assert res["command"] == "worldsim eval" and res["baselines"]["copy_last"]["summary"]["psnr_h1_8"] is not None
