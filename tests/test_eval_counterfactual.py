"""Real counterfactuals (worldsim.eval.counterfactual): collected episodes replay to any frame, the game
played on from there under a held key is the real game's answer (its first frame under the recorded
action is the recorded next frame), states restore between keys, and what cannot be replayed says why.
Also ``worldsim eval`` end to end: the action response scored against them."""

import json

import numpy as np
import pytest

from worldsim.data.collect import CollectConfig, collect
from worldsim.envs import EnvConfig
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.eval.counterfactual import NotReplayable, held_frames
from worldsim.eval.rollout import load_eval_episodes


def collected(tmp_path, env_id, steps, max_steps):
    out = tmp_path / env_id.replace("/", "_")
    collect(CollectConfig(env=EnvConfig(env_id=env_id, max_episode_steps=max_steps), policy="sticky", steps=steps,
                          out=str(out), workers=0, heldout_episodes=0, seed=5), progress=False)
    return out


def check_against_recording(episodes, items, context, num_actions):
    """Held for one frame, the recorded action gives the recorded next frame; another action in between
    does not leak into the next (the state is restored between keys)."""
    for e, s in items:
        a = int(episodes[e].actions[s + context - 1])  # chosen after the context's last frame
        keys = {"recorded": a, "other": (a + 1) % num_actions, "recorded again": a}
        got = held_frames(episodes, [(e, s)], context, keys, 1)
        np.testing.assert_array_equal(got["recorded"][0, 0], episodes[e].frames[s + context])
        np.testing.assert_array_equal(got["recorded again"][0, 0], got["recorded"][0, 0])


def test_tiny_replay_matches_the_recording_and_a_direct_simulation(tmp_path):
    from worldsim.envs.tiny import TinyGame

    root = collected(tmp_path, TINY_ENV_ID, steps=80, max_steps=40)
    eps = load_eval_episodes([root], 64, TINY_ENV_ID, TINY_ACTIONS)
    items = [(1, 20), (0, 3), (0, 12), (1, 5)]  # unordered, two episodes: one pass each, rows kept in order
    check_against_recording(eps, items, 4, len(TINY_ACTIONS))
    keys = {"NOOP": 0, "UP": TINY_ACTIONS.index("UP"), "RIGHT": TINY_ACTIONS.index("RIGHT")}
    got = held_frames(eps, items, 4, keys, 6)
    assert got["UP"].shape == (4, 6, 64, 64, 3) and got["UP"].dtype == np.uint8
    from worldsim.data.episode import read_episode

    for row, (e, s) in enumerate(items):  # an independent simulation: reset, the recorded actions, the key
        meta = read_episode(eps[e].path, load_frames=False).meta
        g = TinyGame()
        g.reset(seed=meta["seed"])
        for a in eps[e].actions[:s + 3]:
            g.step(int(a))
        for f in range(6):
            frame, *_ = g.step(keys["UP"])
            np.testing.assert_array_equal(got["UP"][row, f], frame)
    # at the model's resolution (the episodes resized to it), area-resized like them
    small_eps = load_eval_episodes([root], 16, TINY_ENV_ID, TINY_ACTIONS)
    small = held_frames(small_eps, items, 4, keys, 6)
    from worldsim.eval.rollout import resize_frames

    assert small["UP"].shape == (4, 6, 16, 16, 3)
    np.testing.assert_array_equal(small["UP"], resize_frames(got["UP"].reshape(-1, 64, 64, 3), 16).reshape(4, 6, 16, 16, 3))


def test_boxing_replay_matches_the_recording(tmp_path):
    pytest.importorskip("ale_py", reason="ale-py is not installed (pip install gymnasium ale-py)")
    root = collected(tmp_path, "ALE/Boxing-v5", steps=60, max_steps=60)
    from worldsim.data.episode import list_episodes, read_episode

    meanings = read_episode(list_episodes(root)[0], load_frames=False).action_meanings
    eps = load_eval_episodes([root], 64, "ALE/Boxing-v5", meanings)
    check_against_recording(eps, [(0, 40), (0, 10), (0, 25)], 8, len(meanings))


def test_what_cannot_be_replayed_says_why(tmp_path):
    from worldsim.data.episode import EpisodeWriter, list_episodes, read_episode

    root = collected(tmp_path, TINY_ENV_ID, steps=40, max_steps=40)
    eps = load_eval_episodes([root], 64, TINY_ENV_ID, TINY_ACTIONS)
    eps[0].frames[7] = 255 - eps[0].frames[7]  # the recording no longer matches its game
    with pytest.raises(NotReplayable, match="does not reproduce its frame 7"):
        held_frames(eps, [(0, 4)], 4, {"NOOP": 0}, 2)
    # an episode without a seed (a plain .npz, say) or with sticky actions
    src = read_episode(list_episodes(root)[0])
    for name, meta in (("noseed", {k: v for k, v in src.meta.items() if k != "seed"}),
                       ("sticky", {**src.meta, "repeat_action_probability": 0.25})):
        with EpisodeWriter(tmp_path / name, meta) as w:
            for f, a in zip(src.frames, src.actions):
                w.append(f, int(a))
        ep = load_eval_episodes([tmp_path / name], 64, TINY_ENV_ID, TINY_ACTIONS)
        with pytest.raises(NotReplayable, match="no env seed" if name == "noseed" else "sticky actions"):
            held_frames(ep, [(0, 2)], 4, {"NOOP": 0}, 2)


def test_eval_scores_the_action_response_against_the_real_game(tmp_path):
    from test_eval_cli import make_checkpoint

    from worldsim.eval import cli

    root = collected(tmp_path, TINY_ENV_ID, steps=120, max_steps=40)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "eval.json"
    assert cli.main(["--checkpoint", str(ckpt), "--episodes", str(root), "--context", "3", "--horizon", "4",
                     "--starts", "2", "--action-response", "5", "--dtype", "fp32", "--quiet", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["counterfactual"]["available"] is True and res["counterfactual"]["contexts"] == 6
    cf = res["settings"][0]["action_response"]["counterfactual"]
    assert set(cf["actions"]) == {"NOOP", "UP", "DOWN", "LEFT", "RIGHT"}
    for name, v in cf["actions"].items():  # a random-weight model draws no sprite: nothing to score, said so
        assert v["contexts"] == 0 and v["cf_err_px"] is None
    assert cf["mean_cf_err_px"] is None


def test_counterfactual_scores_of_a_perfect_and_a_half_moving_model(tmp_path):
    from worldsim.eval.response import counterfactual_scores
    from worldsim.eval.sprites import TINY, find_sprites

    root = collected(tmp_path, TINY_ENV_ID, steps=80, max_steps=40)
    eps = load_eval_episodes([root], 64, TINY_ENV_ID, TINY_ACTIONS)
    items = [(0, 2), (0, 10), (1, 4), (1, 20)]
    keys = {a: TINY_ACTIONS.index(a) for a in ("NOOP", "UP", "DOWN", "LEFT", "RIGHT")}
    real = held_frames(eps, items, 4, keys, 5)
    end = {a: find_sprites(f[:, -1], TINY)[0] for a, f in real.items()}
    perfect = counterfactual_scores(end, real, TINY)
    assert perfect["mean_cf_err_px"] == 0 and perfect["mean_ratio_cf"] == pytest.approx(1.0)
    half = {a: end["NOOP"] + 0.5 * (p - end["NOOP"]) for a, p in end.items()}
    scores = counterfactual_scores(half, real, TINY)
    assert scores["mean_ratio_cf"] == pytest.approx(0.5)
    moved = [a for a in ("UP", "DOWN", "LEFT", "RIGHT") if np.abs(np.array(scores["actions"][a]["real_px"])).max() > 0]
    assert moved and all(scores["actions"][a]["cf_err_px"] > 0 for a in moved)
