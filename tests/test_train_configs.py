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


def train(stage: str, config: str, out: Path, data: Path, *extra: str, config_path: Path | None = None) -> Path:
    argv = ["train", stage, str(config_path or f"configs/{config}.yaml"), f"out_dir={out}", f"data.paths=[{data}]",
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

    old = {"model": {"dim": 32, "anchor": True}}  # written before model.anchor_history existed
    assert config_differences(old, {"model": {"dim": 32, "anchor": True, "anchor_history": 1}}) == []
    diffs = config_differences(old, {"model": {"dim": 32, "anchor": True, "anchor_history": 2}})
    assert diffs == ["model.anchor_history=1 in the checkpoint but 2 now"]
    assert config_differences(old, {"model": {"dim": 32, "anchor": True, "other": 1}}) == \
        ["model.other='<absent>' in the checkpoint but 1 now"]


def test_removed_options_at_their_no_op_value_match_and_others_differ():
    """A saved training config holding a removed option is the same config without it where the option
    changed nothing (anchor_self 0, anchor_mode input, or any mode without anchors)."""
    from worldsim.train.trainer import config_differences

    now = {"model": {"anchor": True, "anchor_history": 2}, "anchor_noise": 0.3}
    saved = {"model": {"anchor": True, "anchor_mode": "input", "anchor_history": 2}, "anchor_noise": 0.3,
             "anchor_self": 0.0}
    assert config_differences(saved, now) == []
    plain = {"model": {"anchor": False, "anchor_mode": "residual", "anchor_history": 1}}
    assert config_differences(plain, {"model": {"anchor": False, "anchor_history": 1}}) == []
    diffs = config_differences({**saved, "anchor_self": 0.5, "model": {**saved["model"], "anchor_mode": "residual"}}, now)
    assert diffs == ["anchor_self=0.5 in the checkpoint but '<absent>' now",
                     "model.anchor_mode='residual' in the checkpoint but '<absent>' now"]


def test_a_config_file_with_removed_options_loads_or_names_them(tiny, tmp_path, capsys, caplog):
    """A stage-1 config written before the removals (a run's config.yaml) trains when they sit at their
    no-op values, with a note; a value that asked for the removed behaviour is one line, exit 2."""
    import yaml

    cfg = yaml.safe_load(Path("configs/stage1_teacher_forcing.yaml").read_text())
    cfg.update(anchor_self=0.0)
    cfg["model"].update(anchor=True, anchor_mode="input")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(cfg))
    with caplog.at_level("WARNING", logger="worldsim.train"):
        assert train("stage1", "x", tmp_path / "ok", tiny, *MODEL, config_path=old).is_file()
    assert "anchor_self=0.0 dropped" in caplog.text and "model.anchor_mode=input dropped" in caplog.text
    for key, value in (("anchor_self", 0.5),):
        old.write_text(yaml.safe_dump({**cfg, key: value}))
        argv = ["train", "stage1", str(old), f"out_dir={tmp_path / key}", f"data.paths=[{tiny}]", *MICRO, *MODEL]
        assert worldsim(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{key}={value} is no longer an option" in err and str(old) in err
        assert not (tmp_path / key).exists()  # refused before anything was written
    old.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "anchor_mode": "residual"}}))
    assert worldsim(["train", "stage1", str(old), f"out_dir={tmp_path / 'r'}", f"data.paths=[{tiny}]", *MICRO]) == 2
    assert "model.anchor_mode=residual is no longer an option" in capsys.readouterr().err


def test_a_checkpoint_of_a_removed_model_form_is_refused_in_one_line(tmp_path):
    """Residual-anchored checkpoints (anchor_mode=residual, or anchored before the option existed) are
    refused naming the file; input-anchored and unanchored ones load as they were."""
    import torch

    from worldsim.checkpoint import load_model, save_checkpoint
    from worldsim.config import to_dict
    from worldsim.errors import CheckpointError
    from worldsim.model import ModelConfig, WorldDiT

    def write(name, **fields):
        m = WorldDiT(ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=3,
                                 anchor=fields.get("anchor", True), anchor_history=1, temporal_every=1))
        mc = {k: v for k, v in to_dict(m.cfg).items() if k not in fields.get("absent", ())}
        mc.update({k: v for k, v in fields.items() if k != "absent"})
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, {f"model.{k}": v for k, v in m.state_dict().items()},
                        {"role": "student", "stage": 1, "model_config": mc})
        return path, m

    for name, fields in (("residual", {"anchor_mode": "residual"}),
                         ("before", {"absent": ("anchor_history",)})):  # anchored, before anchor_mode existed
        path, _ = write(name, **fields)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors: model.anchor_mode=residual is no longer "
                                                  "supported") as e:
            load_model(path)
        assert "\n" not in str(e.value)
    for name, fields in (("input", {"anchor_mode": "input"}), ("now", {}),
                         ("plain", {"anchor": False, "anchor_mode": "residual"}),
                         ("oldest", {"anchor": False, "absent": ("anchor", "anchor_mode", "anchor_history",
                                                                 "temporal_every")})):
        path, m = write(name, **fields)
        loaded, meta = load_model(path)
        assert "anchor_mode" not in meta["model_config"] and loaded.cfg == m.cfg, name
        x, s, a = torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2), torch.zeros(1, 2, dtype=torch.long)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, s, a), m.eval()(x, s, a))


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
