"""``worldsim eval clips``: the teacher's and the student's clip realism on one scale. End to end on tiny
random-weight checkpoints (bidirectional through its own sampler, causal through the engine), the
realism figures' sense (identical samples read exactly chance, blank frames are always told), the plan,
and the one-line refusals."""

import json

import numpy as np
import pytest
import torch

from worldsim.checkpoint import save_checkpoint
from worldsim.config import to_dict
from worldsim.engine import EngineConfig
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.errors import CheckpointError, ConfigError
from worldsim.eval import cli
from worldsim.eval.clips import ClipConfig, clip_plan, clip_realism, generate_clips
from worldsim.eval.rollout import load_eval_episodes
from worldsim.model import ModelConfig, WorldDiT
from tests.test_eval_cli import make_episode


def make_model_file(path, causal: bool, ema: bool = False):
    torch.manual_seed(0)
    m = WorldDiT(ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, causal=causal,
                             num_actions=len(TINY_ACTIONS)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    meta = {"role": "student" if causal else "teacher", "stage": 1 if causal else 0, "step": 7,
            "model_config": to_dict(m.cfg), "env_id": TINY_ENV_ID, "action_meanings": list(TINY_ACTIONS),
            "resolution": 16}
    if causal:
        meta["engine"] = to_dict(EngineConfig(window=4, sink=1, steps=2))
    else:
        meta["sampler"] = {"kind": "bidirectional-euler", "steps": 3, "shift": 3.0}
    if ema:  # a run's training state records its EMA networks
        meta["ema_updates"] = {"model": 7}
    prefix = "ema.model." if ema else "model."
    tensors = {f"{prefix}{k}": v for k, v in m.state_dict().items()}
    if ema:
        tensors.update({f"model.{k}": v.clone() * 0 for k, v in m.state_dict().items()})  # raw weights differ
    save_checkpoint(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    eps = [make_episode(d / f"run{i}.npz", seed=i, T=40) for i in range(2)]
    return d, eps


def run(ckpt, eps, out, *extra):
    argv = ["--checkpoint", str(ckpt), "--episodes", *map(str, eps), "--frames", "48", "--realism-steps", "20",
            "--dtype", "fp32", "--quiet", "--json", str(out), *extra]
    assert cli.main(["clips", *argv]) == 0
    return json.loads(out.read_text())


def test_teacher_clips_end_to_end(setup, capsys):
    d, eps = setup
    res = run(make_model_file(d / "teacher.safetensors", causal=False), eps, d / "t.json")
    assert res["sampling"] == {"kind": "bidirectional", "steps": 3, "shift": 3.0, "guidance": 1.0}
    assert res["clips"] * res["config"]["horizon"] >= 48
    for row in ("model", "real_vs_real"):
        for view in ("full", "degraded"):
            assert 0.0 <= res[row][view]["accuracy"] <= 1.0 and res[row][view]["test_frames"] > 0
    assert "clip realism of" in capsys.readouterr().out
    # more steps and guidance are the caller's; a run's EMA weights are read with --weights ema
    res = run(make_model_file(d / "run.safetensors", causal=False, ema=True), eps, d / "t2.json",
              "--weights", "ema", "--teacher-steps", "2", "--guidance", "1.5")
    assert res["sampling"]["steps"] == 2 and res["sampling"]["guidance"] == 1.5
    assert res["checkpoint"]["weights"] == "ema"


def test_student_clips_go_through_the_engine(setup):
    d, eps = setup
    res = run(make_model_file(d / "student.safetensors", causal=True), eps, d / "s.json", "--settings", "1x1")
    assert res["sampling"] == {"kind": "causal", "setting": "1x1"}
    res = run(d / "student.safetensors", eps, d / "s2.json")  # default: the checkpoint's engine settings
    assert res["sampling"]["setting"] == "1x2"


def test_identical_samples_read_chance_and_blank_frames_are_told(setup):
    d, eps = setup
    episodes = load_eval_episodes(eps, 16, TINY_ENV_ID, TINY_ACTIONS)
    cfg = ClipConfig(context=2, horizon=4, frames=64, realism_steps=40)
    plan = clip_plan(episodes, cfg)
    # a sampler that copies the last context frame: the frames are real ones, so the shapes line up
    copy = generate_clips(lambda ctx, prev, acts, seed: np.repeat(ctx[:, -1:], acts.shape[1], 1),
                          episodes, plan, cfg, no_action=len(TINY_ACTIONS))
    fake, real = copy
    assert len(fake) == len(real) == len(episodes) and all(f.shape == r.shape for f, r in zip(fake, real))
    same = clip_realism(real, real, cfg)["model"]
    assert same["full"]["accuracy"] == 0.5 and same["degraded"]["accuracy"] == 0.5  # each test pair splits
    blank = clip_realism([np.zeros_like(r) for r in real], real, cfg)["model"]
    assert blank["full"]["accuracy"] >= 0.95


def test_plan_spreads_over_every_episode_and_covers_the_frames(setup):
    d, eps = setup
    episodes = load_eval_episodes(eps, 16, TINY_ENV_ID, TINY_ACTIONS)
    cfg = ClipConfig(context=2, horizon=6, frames=60)
    plan = clip_plan(episodes, cfg)
    assert {i for i, _ in plan} == {0, 1} and len(plan) * cfg.horizon >= 60
    assert all(0 <= s <= 40 - 8 for _, s in plan)
    assert clip_plan(episodes, ClipConfig(context=2, horizon=6, frames=60)) == plan  # seeded


def test_refusals_are_one_line(setup, capsys):
    from worldsim.cli import main as worldsim_main

    d, eps = setup
    student = make_model_file(d / "student2.safetensors", causal=True)
    teacher = make_model_file(d / "teacher2.safetensors", causal=False)
    with pytest.raises(ConfigError, match="causal model"):
        run(student, eps, d / "x.json", "--teacher-steps", "8")
    with pytest.raises(ConfigError, match="bidirectional model"):
        run(teacher, eps, d / "x.json", "--settings", "1x2")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        run(teacher, eps, d / "x.json", "--weights", "ema")
    with pytest.raises(ConfigError, match="one setting"):
        run(student, eps, d / "x.json", "--settings", "1x1,1x2")
    assert worldsim_main(["eval", "clips", "--checkpoint", str(d / "absent.safetensors"), "--episodes",
                          *map(str, eps), "--json", str(d / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.safetensors" in err[0]
    assert not (d / "x.json").exists()
