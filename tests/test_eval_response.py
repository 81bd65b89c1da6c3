"""Action response (``worldsim eval --action-response``): an engine that moves the picture the way the
key says scores a clearly positive ratio, one that ignores the keys scores exactly 0, and the real
game's per-action displacements come out of the episodes with the right signs (Tiny-v0)."""

import dataclasses

import numpy as np
import pytest
import torch

from test_eval_cli import make_episode
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.eval.response import action_response, format_response, real_held_displacement, real_step_displacement
from worldsim.eval.rollout import EvalConfig, load_eval_episodes, make_plan
from worldsim.eval.sprites import find_sprites, sprite_spec

R = 16
SHIFT = {"UP": (-1, 0), "DOWN": (1, 0), "LEFT": (0, -1), "RIGHT": (0, 1)}


class ScriptedEngine:
    """Stands in for the world model: each step repeats the last frame, shifted one pixel the way the
    action says (``follow=True``; edges repeated, nothing wraps round) or not at all."""

    def __init__(self, follow: bool):
        self.follow = follow
        self.cfg = dataclasses.make_dataclass("Cfg", [("chunk", int, 1)])()

    def reset(self, batch, seed=0):
        self.last = None

    def prefill(self, frames, prev_actions):
        self.last = frames[:, -1]  # (B, 3, R, R)

    def step(self, actions):
        a = torch.as_tensor(actions).view(-1)
        out = []
        for b in range(self.last.shape[0]):
            dy, dx = SHIFT.get(TINY_ACTIONS[int(a[b])], (0, 0)) if self.follow else (0, 0)
            x = torch.nn.functional.pad(self.last[b][None], (1, 1, 1, 1), mode="replicate")[0]  # walls, no wrap
            out.append(x[:, 1 - dy:1 - dy + R, 1 - dx:1 - dx + R])
        self.last = torch.stack(out)
        return self.last[:, None]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    d = tmp_path_factory.mktemp("resp")
    paths = [make_episode(d / f"ep{i}.npz", seed=i, T=120) for i in range(3)]
    return load_eval_episodes(paths, R, TINY_ENV_ID, TINY_ACTIONS, None, 0)


def test_real_displacements_have_the_game_s_signs(episodes):
    real = real_step_displacement(episodes, sprite_spec(TINY_ENV_ID), TINY_ACTIONS)
    assert real["DOWN"]["px_per_frame"][0] > 0.2 and real["UP"]["px_per_frame"][0] < -0.2
    assert real["RIGHT"]["px_per_frame"][1] > 0.2 and real["LEFT"]["px_per_frame"][1] < -0.2
    assert abs(real["NOOP"]["px_per_frame"][0]) < 0.05 and real["NOOP"]["pairs"] > 0


@pytest.mark.parametrize("follow", [True, False], ids=["follows keys", "ignores keys"])
def test_action_response_tells_a_model_that_follows_keys_from_one_that_ignores_them(episodes, follow):
    spec = sprite_spec(TINY_ENV_ID)
    cfg = EvalConfig(context=3, horizon=4, starts=2, batch=4)
    plan = make_plan(episodes, cfg)
    real = real_step_displacement(episodes, spec, TINY_ACTIONS)
    resp = action_response(ScriptedEngine(follow), episodes, plan, cfg, spec, TINY_ACTIONS, len(TINY_ACTIONS), 3, real)
    assert resp["rollouts"] == 4 and set(resp["actions"]) == {"UP", "DOWN", "LEFT", "RIGHT"}
    if follow:
        assert resp["mean_ratio"] > 0.5
        assert all(v["ratio"] > 0.3 for v in resp["actions"].values())
    else:
        assert resp["mean_ratio"] == 0.0
    assert "action response 1x2" in format_response("1x2", resp)
    found = {a: v["rollouts_with_sprite"] for a, v in resp["actions"].items()}
    assert all(0 < n <= 4 for n in found.values())
    said = format_response("1x2", resp)  # a ratio over fewer rollouts than were run says how few
    assert ("found at both ends" in said) == (min(found.values()) < 4)
    lost = {**resp, "actions": {a: {**v, "rollouts_with_sprite": 1} for a, v in resp["actions"].items()}}
    assert "the player found at both ends in 1 of 4 rollouts" in format_response("1x2", lost)


def test_real_held_runs_and_the_held_ratio(episodes):
    spec = sprite_spec(TINY_ENV_ID)
    held = real_held_displacement(episodes, spec, TINY_ACTIONS, 2)
    assert held["DOWN"]["px"][0] > 0.4 and held["UP"]["px"][0] < -0.4 and held["DOWN"]["runs"] > 0
    assert held["RIGHT"]["px"][1] > 0.4 and held["LEFT"]["px"][1] < -0.4
    # A hand-made episode: every run of DOWN held twice moves the sprite by exactly what the frames say.
    ep = episodes[0]
    acts = np.asarray(ep.actions)
    down = TINY_ACTIONS.index("DOWN")
    pos, found = find_sprites(ep.frames, spec)
    want = [pos[t + 2] - pos[t] for t in range(len(acts) - 2)
            if acts[t] == down and acts[t + 1] == down and found[t] and found[t + 2]]
    one = real_held_displacement([ep], spec, TINY_ACTIONS, 2)
    if want:
        np.testing.assert_allclose(one["DOWN"]["px"], np.mean(want, 0))
        assert one["DOWN"]["runs"] == len(want)
    cfg = EvalConfig(context=3, horizon=4, starts=2, batch=4)
    plan = make_plan(episodes, cfg)
    real = real_step_displacement(episodes, spec, TINY_ACTIONS)
    for follow in (True, False):
        resp = action_response(ScriptedEngine(follow), episodes, plan, cfg, spec, TINY_ACTIONS, len(TINY_ACTIONS), 2,
                               real, held)
        if follow:
            assert resp["mean_ratio_held"] > 0.3 and "real held runs" in format_response("1x2", resp)
        else:
            assert resp["mean_ratio_held"] == 0.0
