"""The research commands end to end on a tiny random-weight checkpoint and real Tiny-v0 episodes: the
one-frame floor measures the real next frame, the error budget reads what ``worldsim eval
--save-rollouts`` wrote, and bad inputs are one line and exit 2."""

import json

import pytest
import torch

from worldsim.cli import main as worldsim
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.eval import cli
from worldsim.runtime.testing import write_random_checkpoint

K, H = 3, 5  # context and horizon of these runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random checkpoint and two 16-step Tiny-v0 episodes (eval resizes them to the model's 16x16)."""
    d = tmp_path_factory.mktemp("research")
    assert worldsim(["collect", "--env", TINY_ENV_ID, "--steps", "32", "--max-episode-steps", "16", "--out",
                     str(d / "tiny"), "--workers", "0", "--heldout-episodes", "0", "--no-progress"]) == 0
    eps = sorted((d / "tiny" / "train").iterdir())
    assert len(eps) == 2
    return d, write_random_checkpoint(d / "tiny.safetensors", "tiny", engine={"window": 4, "sink": 1}), eps


def test_one_frame_floor_measures_the_real_next_frame(setup):
    """With a model that returns its input, noise level 0 gives back the real next frame: error 0 (the
    target frame is the one the sprite is measured against); the copy-last figure is the eval's
    copy-last sprite error at horizon 1 on the same plan."""
    from research.one_frame_floor import one_frame_sprite_error
    from worldsim.engine import Engine
    from worldsim.eval.rollout import EvalConfig, evaluate_baselines, load_eval_episodes, make_plan
    from worldsim.eval.sprites import TINY

    d, ckpt, eps = setup
    model, meta, eng_cfg = cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, [])
    episodes = load_eval_episodes(eps, 16, TINY_ENV_ID, TINY_ACTIONS)
    cfg = EvalConfig(context=K, horizon=1, starts=3, batch=4)
    plan = make_plan(episodes, cfg)
    engine = Engine(model, eng_cfg)
    engine.model_fn = lambda x, *a, **k: (model(x, *a, **k), x)[1]  # the cache is written; x0 = the input
    out = one_frame_sprite_error(engine, episodes, plan, cfg, TINY, [0.0], model.cfg.num_actions)
    assert out["rollouts"] == len(plan) >= 4 and out["levels"] == {0.0: 0.0}
    base = evaluate_baselines(episodes, plan, cfg, TINY, 4.0, model.cfg.num_actions)["copy_last"]
    assert base["sprite_miss_rate"] == [0.0] and out["copy_last"] == pytest.approx(base["sprite_err_px"][0])
    assert out["copy_last"] > 0  # the sprite moves in these episodes: copying is not free


def test_one_frame_floor_command(setup, capsys):
    from research import one_frame_floor

    d, ckpt, eps = setup
    assert one_frame_floor.main(["--checkpoint", str(ckpt), "--episodes", *map(str, eps), "--context", str(K),
                                 "--starts", "2", "--levels", "0.5,1.0"]) == 0
    out = capsys.readouterr().out
    assert "sigma 0.50" in out and "sigma 1.00" in out and "copy-last" in out
    assert one_frame_floor.main(["--checkpoint", str(d / "missing.safetensors"), "--episodes", str(eps[0])]) == 2
    assert "not found" in capsys.readouterr().err


def test_token_floor_span_and_pass_through(setup, capsys):
    """A full-rank projector keeps every value and a narrower one only its rows' span; a model narrower
    than its patch loses part of every frame through each span; pass-through of a model that returns its
    input shows the sprite as its input does; the command prints both and refuses a missing checkpoint."""
    from research import token_floor as mod
    from worldsim.engine import Engine
    from worldsim.eval.rollout import EvalConfig, load_eval_episodes, make_plan
    from worldsim.eval.sprites import TINY

    d, ckpt, eps = setup
    model, meta, eng_cfg = cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, [])
    episodes = load_eval_episodes(eps, 16, TINY_ENV_ID, TINY_ACTIONS)
    cfg = EvalConfig(context=K, horizon=1, starts=3, batch=4)
    engine = Engine(model, eng_cfg)
    engine.model_fn = lambda x, *a, **k: (model(x, *a, **k), x)[1]  # the cache is written; x0 = the input
    out = mod.pass_through(engine, episodes, make_plan(episodes, cfg), cfg, TINY, [0.0, 1.0], model.cfg.num_actions)
    assert out["levels"][0.0]["sprite_l1"] == out["levels"][0.0]["input_l1"] == out["real_l1"]
    assert out["levels"][1.0]["sprite_l1"] > out["real_l1"]  # pure noise does not show the sprite
    eye = torch.eye(48)
    assert torch.allclose(mod.row_space_projector(eye), eye, atol=1e-5)  # full rank keeps every value
    assert torch.allclose(mod.row_space_projector(3 * eye[:32]), torch.diag((torch.arange(48) < 32).float()), atol=1e-5)
    floor = mod.span_floor(model, out["next_frames"], TINY)  # dim 32 < 48 values a patch: spans lose some
    assert floor["real"] == {"sprite_l1": out["real_l1"], "frame_mse": 0.0}
    assert all(v["frame_mse"] > 1e-4 for k, v in floor.items() if k != "real")
    assert {"noisy frame (patch_embed)", "last anchor (anchor_embed)", "output head's span (out)"} <= set(floor)
    assert mod.main(["--checkpoint", str(ckpt), "--episodes", *map(str, eps), "--context", str(K), "--starts", "2",
                     "--levels", "0.02,1.0"]) == 0
    text = capsys.readouterr().out
    assert "span of noisy frame (patch_embed)" in text and "pass-through at sigma 0.02" in text
    assert mod.main(["--checkpoint", str(d / "missing.safetensors"), "--episodes", str(eps[0])]) == 2
    assert "not found" in capsys.readouterr().err
    # a model that plays with guidance on its fire button (the shipped one does) is measured as it plays
    guided = write_random_checkpoint(d / "guided.safetensors", "tiny", engine={"window": 4, "sink": 1, "guidance": 5.0,
                                                                              "guidance_contrast": "button"})
    assert mod.main(["--checkpoint", str(guided), "--episodes", *map(str, eps), "--context", str(K), "--starts", "2",
                     "--levels", "1.0"]) == 0, capsys.readouterr().err


def test_error_budget_on_saved_rollouts(setup, tmp_path, capsys):
    """python -m research.error_budget reads what --save-rollouts wrote and its source episodes; a game
    without an opponent entry is budgeted without that region; bad inputs are one line and exit 2."""
    from research import error_budget as mod

    d, ckpt, eps = setup
    assert cli.main(["--checkpoint", str(ckpt), "--episodes", *map(str, eps), "--context", str(K), "--horizon", str(H),
                     "--json", str(tmp_path / "e.json"), "--starts", "2", "--dtype", "fp32", "--quiet", "--spacing",
                     "even", "--settings", "1x1", "--save-rollouts", str(tmp_path / "ro"), "--action-response", "0"]) == 0
    out_json = tmp_path / "b.json"
    assert mod.main(["--rollouts", str(tmp_path / "ro"), "--episodes", *map(str, eps), "--horizon", str(H),
                     "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["rollouts"] == len(list((tmp_path / "ro").glob("*.npz"))) >= 4
    assert res["sources"]["model"]["share"]["opponent"] == 0.0
    assert sum(res["sources"]["model"]["share"].values()) == pytest.approx(1.0)
    assert "exact player" in capsys.readouterr().out
    assert mod.main(["--rollouts", str(tmp_path / "nothing"), "--episodes", str(eps[0])]) == 2
    assert "no rollouts" in capsys.readouterr().err
    assert mod.main(["--rollouts", str(tmp_path / "ro"), "--episodes", str(eps[0]), "--horizon", str(H)]) == 2
    assert "is not among --episodes" in capsys.readouterr().err
    assert mod.main(["--rollouts", str(tmp_path / "ro"), "--episodes", *map(str, eps), "--horizon", "9"]) == 2
    assert "--horizon 9" in capsys.readouterr().err
    assert mod.main(["--rollouts", str(tmp_path / "ro"), "--episodes", *map(str, eps), "--horizon", str(H),
                     "--second", str(tmp_path / "nothing")]) == 2
    assert "--second must hold the same rollouts" in capsys.readouterr().err
    # the same rollouts as their own second sample: no spread between them
    assert mod.main(["--rollouts", str(tmp_path / "ro"), "--episodes", *map(str, eps), "--horizon", str(H),
                     "--second", str(tmp_path / "ro"), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["spread"]["mse_between_samples"] == [0.0] * H


def test_sprite_predictability_refuses_a_missing_dataset(tmp_path, capsys):
    from research import sprite_predictability

    assert sprite_predictability.main(["--train", str(tmp_path / "none"), "--heldout", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_research_is_not_installed_with_the_package():
    """The analyses stay out of the wheel: setuptools packages only worldsim and kernels."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(fnmatch("research", pat) or fnmatch("research.tests", pat) for pat in include), include
    assert "research/tests" in cfg["tool"]["pytest"]["ini_options"]["testpaths"]
