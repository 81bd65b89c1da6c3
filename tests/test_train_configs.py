"""Every per-stage YAML in configs/ runs through ``worldsim train`` as its header documents (micro size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worldsim.checkpoint import read_meta
from worldsim.cli import main as worldsim

MICRO = ["data.resolution=16", "optim.steps=3", "optim.batch_size=2", "run.bf16=false", "run.sample_every=-1",
         "run.progress=false"]
MODEL = ["model.resolution=16", "model.dim=32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    assert worldsim(["collect", "--env", "worldsim/Tiny-v0", "--steps", "400", "--out", str(out), "--workers", "0",
                     "--heldout-episodes", "1", "--max-episode-steps", "100", "--no-progress"]) == 0
    return out


def train(stage: str, config: str, out: Path, data: Path, *extra: str) -> Path:
    argv = ["train", stage, f"configs/{config}.yaml", f"out_dir={out}", f"data.paths=[{data}]",
            f"data.cache_dir={out.parent / 'cache'}", *MICRO, *extra]
    assert worldsim(argv) == 0
    return out / "final.safetensors"


@pytest.mark.slow
def test_stage_configs_chain_through_the_cli(tiny, tmp_path):
    t = train("stage0", "stage0_teacher", tmp_path / "teacher", tiny, *MODEL)
    s1 = train("stage1", "stage1_teacher_forcing", tmp_path / "tf", tiny, *MODEL, f"init.teacher={t}")
    assert read_meta(s1)["init"]["from"] == "teacher"
    cd = train("stage2", "stage2_consistency", tmp_path / "cd", tiny, f"init.teacher={s1}")
    ode = train("stage2-ode", "stage2_ode", tmp_path / "ode", tiny, f"init.teacher={s1}", "num_trajectories=2")
    assert read_meta(ode)["cost"]["storage_bytes"] > 0 == read_meta(cd)["cost"]["storage_bytes"]
    s3 = train("stage3", "stage3_dmd", tmp_path / "dmd", tiny, f"init.student={cd}", f"init.teacher={t}",
               "rollout.frames=3", "rollout.window=2")
    meta = read_meta(s3)
    assert (meta["stage"], meta["role"]) == (3, "student") and meta["engine"]["steps"] == 2


def test_bad_stage_inputs_are_one_line_errors(tiny, tmp_path, capsys):
    argv = ["train", "stage1", "configs/stage1_teacher_forcing.yaml", f"out_dir={tmp_path}", *MICRO]
    assert worldsim(argv + ["optim.stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.steps" in err  # the nearest key is named
    assert worldsim(argv + [f"data.paths=[{tiny}]", "init.teacher=missing.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.safetensors" in err
    assert worldsim(["train", "stage7", "configs/stage1_teacher_forcing.yaml"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_keys_added_later_match_checkpoints_written_before_them():
    from worldsim.train.trainer import config_differences

    old = {"model": {"dim": 32, "anchor": True}}  # written before model.anchor_mode existed
    assert config_differences(old, {"model": {"dim": 32, "anchor": True, "anchor_mode": "residual"}}) == []
    diffs = config_differences(old, {"model": {"dim": 32, "anchor": True, "anchor_mode": "input"}})
    assert diffs == ["model.anchor_mode='residual' in the checkpoint but 'input' now"]
    assert config_differences(old, {"model": {"dim": 32, "anchor": True, "other": 1}}) == \
        ["model.other='<absent>' in the checkpoint but 1 now"]


def test_an_empty_override_says_how_to_write_an_empty_string():
    from worldsim.config import load_config
    from worldsim.errors import ConfigError
    from worldsim.train.stage1_teacher_forcing import Stage1Config

    with pytest.raises(ConfigError, match=r"init.teacher.*write init.teacher=''") as e:
        load_config(Stage1Config, overrides=["init.teacher="])
    assert "\n" not in str(e.value)
    assert load_config(Stage1Config, overrides=["init.teacher=''"]).init.teacher == ""


def test_only_an_euler_stage1_ship_may_change_the_shift():
    from worldsim.config import load_config
    from worldsim.errors import ConfigError
    from worldsim.train.pipeline import PipelineConfig, stage_configs

    base = ["out_dir=runs/x", "shift=3.0", "ship.engine.shift=9.0"]
    cfg = load_config(PipelineConfig, "configs/boxing_controllable.yaml", base)  # ship.stage=stage1, euler
    st = stage_configs(cfg)
    assert st["stage2"].engine.shift == st["stage3"].engine.shift == 3.0  # distilled stages keep theirs
    for bad in (["ship.stage=stage2"], ["ship.engine.sampler=renoise"]):
        with pytest.raises(ConfigError, match="ship.engine.shift 9.0 != shift 3.0"):
            stage_configs(load_config(PipelineConfig, "configs/boxing_controllable.yaml", base + bad))
