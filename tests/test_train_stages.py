"""The training stages at micro size: losses fall, the consistency target is the teacher's ODE step under
no_grad, stage 3 updates each network only from its own loss, runs resume exactly, FINISH ends a stage with
its output, and wrong or mismatched checkpoints are refused with a one-line message."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from worldsim.checkpoint import load_checkpoint, load_model, read_meta
from worldsim.errors import CheckpointError, WorldsimError
from worldsim.model import ModelConfig
from worldsim.model.dit import ACTION_INIT_STD
from worldsim.data.palette import palette_of
from worldsim.train.data import SYNTHETIC_ACTIONS, DataConfig, InMemoryClips, synthetic_episodes
from worldsim.train.stage0_teacher import Stage0Config, TeacherTrainer
from worldsim.train.stage1_teacher_forcing import Stage1Config, TeacherForcingTrainer, tf_forward
from worldsim.train.stage2_consistency import ConsistencyTrainer, Stage2Config, consistency_target
from worldsim.train.stage2_ode import ODETrainer, Stage2ODEConfig
from worldsim.train.stage3_dmd import DMDTrainer, RolloutConfig, Stage3Config
from worldsim.train.trainer import FINAL, FINISH, METRICS, OptimConfig, RunConfig

R, CLIP = 16, 6
EPISODES = synthetic_episodes(n=6, T=40, resolution=R, seed=0)


def clips(clip_len: int = CLIP) -> InMemoryClips:
    return InMemoryClips(EPISODES, clip_len, SYNTHETIC_ACTIONS)


def model_cfg(causal: bool, dim: int = 32, depth: int = 2) -> ModelConfig:
    return ModelConfig(resolution=R, patch=4, dim=dim, depth=depth, heads=2, kv_heads=2,
                       num_actions=len(SYNTHETIC_ACTIONS), causal=causal, chunk=1, temporal_every=1, anchor=False,
                       anchor_history=1)


def run_cfg(out: Path, **kw) -> RunConfig:
    base = dict(out_dir=str(out), bf16=False, device="cpu", log_every=1, ckpt_every=1000, sample_every=-1,
                progress=False)
    base.update(kw)
    return RunConfig(**base)


def optim(steps: int, lr: float = 3e-3, batch: int = 4, **kw) -> OptimConfig:
    return OptimConfig(lr=lr, warmup=2, batch_size=batch, steps=steps, ema_decay=0.9, **kw)


def data_cfg() -> DataConfig:
    return DataConfig(paths=["(in memory)"], clip_len=CLIP, resolution=R)


def losses(out: Path, key: str = "loss") -> list[float]:
    import json

    rows = [json.loads(ln) for ln in (out / METRICS).read_text().splitlines() if ln.strip()]
    return [r[key] for r in rows if key in r]


def fell(values: list[float], n: int = 5) -> bool:
    return sum(values[-n:]) / n < 0.8 * sum(values[:n]) / n


def stage0(out: Path, steps: int = 40, **run) -> Path:
    cfg = Stage0Config(data=data_cfg(), model=model_cfg(False), optim=optim(steps), run=run_cfg(out, **run))
    t = TeacherTrainer(cfg, data=clips(), heldout=clips())
    return t.fit()


def stage1_cfg(out: Path, teacher: str = "", steps: int = 40, **run) -> Stage1Config:
    cfg = Stage1Config(data=data_cfg(), model=model_cfg(True), optim=optim(steps), run=run_cfg(out, **run))
    cfg.init.teacher = teacher
    cfg.chunks = [1, 2]
    return cfg


def stage3_cfg(out: Path, student: str, teacher: str, steps: int = 30, **run) -> Stage3Config:
    cfg = Stage3Config(data=data_cfg(), optim=optim(steps, lr=1e-3, betas=[0.0, 0.999]), run=run_cfg(out, **run),
                       rollout=RolloutConfig(context=2, frames=4, window=3, sink=1, steps=2), gen_every=2,
                       real_guidance=1.5)
    cfg.init.student, cfg.init.teacher = student, teacher
    return cfg


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Stage outputs 0 -> 1 -> 2 at micro size (shared by the tests below)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chain")
    s0 = stage0(root / "s0", steps=60)
    s1 = TeacherForcingTrainer(stage1_cfg(root / "s1", str(s0), steps=60), data=clips(), heldout=clips()).fit()
    cfg2 = Stage2Config(data=data_cfg(), optim=optim(40, lr=1e-3), run=run_cfg(root / "s2"), num_levels=8,
                        guidance=1.5)
    cfg2.init.teacher = str(s1)
    s2 = ConsistencyTrainer(cfg2, data=clips(), heldout=clips()).fit()
    return {"root": root, "s0": s0, "s1": s1, "s2": s2}


def test_stage0_1_2_losses_fall(chain):
    root = chain["root"]
    assert fell(losses(root / "s0")), losses(root / "s0")
    assert fell(losses(root / "s1")), losses(root / "s1")
    # consistency: the x0 error against the real frames falls as the student learns the teacher's flow map
    assert fell(losses(root / "s2", "loss"), 8) or fell(losses(root / "s2", "x0_mse_real"), 8)
    meta = read_meta(chain["s2"])
    assert meta["stage"] == 2 and meta["role"] == "student" and meta["cost"]["teacher_nfe"] == 40 * 4 * 2
    assert meta["cost"]["storage_bytes"] == 0  # nothing stored
    # stage 1 started from the teacher (same width, not deeper)
    assert read_meta(chain["s1"])["init"]["from"] == "teacher"
    # every stage writes the colours of its training frames; the engine snaps to them
    assert meta["palette"] == read_meta(chain["s1"])["palette"] == palette_of(clips()).to_meta()
    assert load_model(chain["s2"])[0].palette is not None


def test_ode_baseline_stores_trajectories_and_learns(chain, tmp_path):
    cfg = Stage2ODEConfig(data=data_cfg(), optim=optim(30, lr=1e-3), run=run_cfg(tmp_path / "ode"), num_levels=8,
                          guidance=1.5, num_trajectories=12)
    cfg.init.teacher = str(chain["s1"])
    out = ODETrainer(cfg, data=clips(), heldout=clips()).fit()
    meta = read_meta(out)
    assert meta["method"] == "ode" and meta["cost"]["storage_bytes"] > 0
    # every stored trajectory costs num_levels guided teacher steps (2 evaluations each)
    assert meta["cost"]["teacher_nfe"] >= 12 * 8 * 2
    assert fell(losses(tmp_path / "ode"), 5)


def test_consistency_target_is_the_teachers_ode_step_without_grad(chain):
    from worldsim.checkpoint import load_model

    teacher, _ = load_model(chain["s1"], device="cpu", dtype=torch.float32)
    student, _ = load_model(chain["s1"], device="cpu", dtype=torch.float32)
    student.train().requires_grad_(True)
    torch.manual_seed(0)
    x0 = torch.rand(2, CLIP, 3, R, R) * 2 - 1
    acts = torch.randint(0, 5, (2, CLIP))
    s, s_next = torch.tensor([0.8, 0.3]), torch.tensor([0.6, 0.0])
    eps = torch.randn_like(x0)
    x_s = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * eps
    target, x_next = consistency_target(teacher, student, x0, acts, x_s, s, s_next, 1, 1.0, 5)
    assert not target.requires_grad and not x_next.requires_grad
    with torch.no_grad():  # the Euler step by hand from the teacher's own x0 (w = 1)
        x0_t = tf_forward(teacher, x0, torch.zeros(2, CLIP), x_s, s[:, None].expand(-1, CLIP), acts, 1)
        v = (x_s - x0_t) / s.view(-1, 1, 1, 1, 1)
        want_next = x_s + (s_next - s).view(-1, 1, 1, 1, 1) * v
        f = tf_forward(student, x0, torch.zeros(2, CLIP), want_next, s_next[:, None].expand(-1, CLIP), acts, 1)
    torch.testing.assert_close(x_next, want_next, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target[0], f[0], atol=1e-5, rtol=1e-5)  # interior: the target net's x0
    torch.testing.assert_close(target[1], want_next[1], atol=1e-5, rtol=1e-5)  # s' = 0: the Euler endpoint


def test_stage3_each_loss_moves_only_its_network(chain, tmp_path):
    cfg = stage3_cfg(tmp_path / "s3", str(chain["s2"]), str(chain["s0"]))
    t = DMDTrainer(cfg, data=clips(6), heldout=clips(6))
    t.setup()
    batch = t.next_batch()
    x0, acts = t.model_inputs(batch)
    gen = t.rollout(x0[:, :2], acts[:, :2], acts[:, 2:], grad=True, exit_step=[1, 0, 1, 0])
    full = torch.cat([x0[:, :2], gen], 1)
    fw, aw, mask = t.score_window(full, acts)
    loss_g, _ = t.generator_loss(fw, aw, mask)
    for net in t.nets.values():
        net.zero_grad(set_to_none=True)
    loss_g.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.nets["model"].parameters())
    assert all(p.grad is None for p in t.nets["fake"].parameters())
    assert all(p.grad is None for p in t.nets["real"].parameters())
    for net in t.nets.values():
        net.zero_grad(set_to_none=True)
    t.fake_loss(fw, aw, mask).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.nets["fake"].parameters())
    assert all(p.grad is None for p in t.nets["model"].parameters())
    assert all(p.grad is None for p in t.nets["real"].parameters())


def test_stage3_trains_and_leaves_the_teacher_alone(chain, tmp_path):
    cfg = stage3_cfg(tmp_path / "s3", str(chain["s2"]), str(chain["s0"]), steps=30)
    t = DMDTrainer(cfg, data=clips(6), heldout=clips(6))
    out = t.fit()
    real_before, _ = load_checkpoint(chain["s0"], "model.")
    assert all(torch.equal(v, real_before[k]) for k, v in t.nets["real"].state_dict().items())
    assert fell(losses(tmp_path / "s3"), 5)  # the fake score tracks the generator's samples
    meta = read_meta(out)
    assert meta["stage"] == 3 and meta["cost"]["teacher_nfe"] == 15 * 4 * 2  # generator steps x batch x guidance


def test_stage3_continues_from_a_stage3_student_with_a_longer_rollout(chain, tmp_path):
    """DMD continued on a stage-3 student (init.student: a stage-3 output, not only a stage-2 one)."""
    first = DMDTrainer(stage3_cfg(tmp_path / "a", str(chain["s2"]), str(chain["s0"]), steps=4),
                       data=clips(6), heldout=clips(6)).fit()
    cfg = stage3_cfg(tmp_path / "b", str(first), str(chain["s0"]), steps=4)
    cfg.rollout = dataclasses.replace(cfg.rollout, frames=8)  # twice the window + sink
    t = DMDTrainer(cfg, data=clips(10), heldout=clips(10))
    assert t.clip_len == 10
    out = t.fit()
    meta = read_meta(out)
    assert meta["stage"] == 3 and meta["init"]["from"] == "stage3" and meta["init"]["student"] == str(first)
    # the teacher is no generator
    with pytest.raises(CheckpointError, match="stage 1 or 2 or 3"):
        DMDTrainer(stage3_cfg(tmp_path / "c", str(chain["s0"]), str(chain["s0"]), steps=2),
                   data=clips(6), heldout=clips(6)).fit()


def adversarial_cfg(out: Path, student: str, dmd_weight: float = 0.0, steps: int = 6, **run) -> Stage3Config:
    cfg = stage3_cfg(out, student, "", steps=steps, **run)
    cfg.dmd_weight, cfg.gen_every = dmd_weight, 1
    cfg.adversarial = dataclasses.replace(cfg.adversarial, weight=1.0, width=8)
    return cfg


def test_stage3_adversarial_alone_needs_no_teacher_and_moves_each_net_by_its_own_loss(chain, tmp_path):
    """The critic's loss reaches only the critic, the generator's adversarial loss the generator (through
    its self-rollout); with dmd_weight 0 a stage-1 student trains without any teacher."""
    from worldsim.train.discriminator import critic_loss, critic_pairs, generator_adv_loss

    t = DMDTrainer(adversarial_cfg(tmp_path / "adv", str(chain["s1"])), data=clips(6), heldout=clips(6))
    t.setup()
    assert set(t.nets) == {"model", "critic"}
    x0, acts = t.model_inputs(t.next_batch())
    gen = t.rollout(x0[:, :2], acts[:, :2], acts[:, 2:], grad=True, exit_step=1)
    full = torch.cat([x0[:, :2], gen], 1)
    fake = critic_pairs(full, acts, 2)
    assert fake[0].shape[0] == x0.shape[0] * 4 and torch.equal(fake[0][0], x0[0, 1])  # frame 2's previous: real
    generator_adv_loss(t.nets["critic"], fake).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.nets["model"].parameters())
    for net in t.nets.values():
        net.zero_grad(set_to_none=True)
    loss, m = critic_loss(t.nets["critic"], critic_pairs(x0, acts, 2), fake, r1=1.0)
    loss.backward()
    assert m["critic_r1"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.nets["critic"].parameters())
    assert all(p.grad is None for p in t.nets["model"].parameters())
    t.cfg.tf_weight = 1.0  # with the teacher-forcing anchor: it reaches the generator too
    for net in t.nets.values():
        net.zero_grad(set_to_none=True)
    t.teacher_forcing_loss(x0, acts).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.nets["model"].parameters())
    assert all(p.grad is None for p in t.nets["critic"].parameters())
    out = t.fit()
    meta = read_meta(out)
    assert meta["stage"] == 3 and meta["init"]["from"] == "stage1" and "teacher" not in meta["init"]
    assert "tf_loss" in json.loads((tmp_path / "adv" / METRICS).read_text().splitlines()[-1])


def test_stage3_rolls_a_stage1_student_out_with_its_euler_sampler(chain, tmp_path, monkeypatch):
    """rollout.sampler=euler reaches every self-rollout (which then draws what the engine plays:
    tests/test_train_equivalence.py), and the stage-1 student trains on them; an unknown sampler is refused
    by name."""
    import worldsim.train.stage3_dmd as stage3

    seen, rollout = [], stage3.self_rollout
    monkeypatch.setattr(stage3, "self_rollout", lambda *a, **kw: seen.append(kw["sampler"]) or rollout(*a, **kw))
    cfg = adversarial_cfg(tmp_path / "eu", str(chain["s1"]), steps=2)
    cfg.rollout = dataclasses.replace(cfg.rollout, sampler="euler")
    assert DMDTrainer(cfg, data=clips(6), heldout=clips(6)).fit() is not None
    assert seen and set(seen) == {"euler"}
    cfg.rollout = dataclasses.replace(cfg.rollout, sampler="heun")
    with pytest.raises(WorldsimError, match="rollout.sampler"):
        DMDTrainer(cfg, data=clips(6), heldout=clips(6)).fit()


def test_stage3_adversarial_critic_learns_to_tell_frames_apart(chain, tmp_path):
    """With the generator nearly still (one update) the critic's loss falls below chance (2 log 2)."""
    cfg = adversarial_cfg(tmp_path / "crit", str(chain["s1"]), steps=40)
    cfg.gen_every = 10_000
    cfg.adversarial = dataclasses.replace(cfg.adversarial, lr_ratio=3.0)
    DMDTrainer(cfg, data=clips(6), heldout=clips(6)).fit()
    crit = losses(tmp_path / "crit", "critic_loss")
    assert sum(crit[-5:]) / 5 < 0.9 * 2 * math.log(2)


def test_stage3_adversarial_with_dmd_and_streams_resumes_exactly(chain, tmp_path):
    """Streams of 12 frames (three 4-frame rollouts each); the stop falls inside a stream, whose KV cache
    and last frames are part of the checkpoint."""
    def cfg_of(name, **run):
        cfg = adversarial_cfg(tmp_path / name, str(chain["s2"]), dmd_weight=1.0, steps=7, **run)
        cfg.init.teacher = str(chain["s0"])
        cfg.rollout = dataclasses.replace(cfg.rollout, stream=12)
        return cfg

    for name, run in (("whole", {}), ("cut", {"stop_after": 4})):
        out = DMDTrainer(cfg_of(name, **run), data=clips(6), heldout=clips(6)).fit()
    assert out is None
    t = DMDTrainer(cfg_of("cut"), data=clips(6), heldout=clips(6))
    resumed = t.fit()
    rows = [json.loads(ln) for ln in (tmp_path / "whole" / METRICS).read_text().splitlines() if ln.strip()]
    fresh = [r["step"] for r in rows if "rollout_mse_real" in r]
    assert fresh == [1, 4, 7]  # a stream starts from real frames every third rollout (steps logged from 1)
    a, b = _weights(tmp_path / "whole" / FINAL), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, "model.")[0]


@pytest.mark.parametrize("stage", ["stage1", "stage3"])
def test_resume_is_exact(chain, tmp_path, stage):
    def make(out, **run):
        if stage == "stage1":
            return TeacherForcingTrainer(stage1_cfg(out, "", steps=12, **run), data=clips(), heldout=clips())
        return DMDTrainer(stage3_cfg(out, str(chain["s2"]), str(chain["s0"]), steps=8, **run), data=clips(6),
                          heldout=clips(6))

    whole = make(tmp_path / "whole").fit()
    assert make(tmp_path / "cut", stop_after=5).fit() is None  # stopped with a checkpoint, no output
    assert not (tmp_path / "cut" / FINAL).exists()
    resumed = make(tmp_path / "cut").fit()
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")


def test_cost_after_a_run_counts_its_time_once(tmp_path):
    """The summary ``worldsim train`` prints after a run (``cost_now()``) equals the output's recorded cost."""
    cfg = Stage0Config(data=data_cfg(), model=model_cfg(False), optim=optim(20), run=run_cfg(tmp_path / "s0"))
    t = TeacherTrainer(cfg, data=clips(), heldout=clips())
    wall = read_meta(t.fit())["cost"]["wall_s"]
    assert wall > 0 and t.cost_now()["wall_s"] < 1.2 * wall + 0.05


def test_finish_file_ends_a_stage_with_its_output(tmp_path):
    out = tmp_path / "s0"
    out.mkdir()
    (out / FINISH).touch()
    path = stage0(out, steps=500)
    meta = read_meta(path)
    assert meta["finished_early"] == 0 and meta["step"] == 0
    assert not (out / FINISH).exists()  # consumed


def test_wrong_stage_and_mismatched_config_are_refused(chain, tmp_path):
    # stage 2 given the stage-0 teacher instead of the stage-1 model
    cfg2 = Stage2Config(data=data_cfg(), optim=optim(2), run=run_cfg(tmp_path / "s2"), num_levels=8)
    cfg2.init.teacher = str(chain["s0"])
    with pytest.raises(CheckpointError) as e:
        ConsistencyTrainer(cfg2, data=clips(), heldout=clips()).fit()
    msg = str(e.value)
    assert "\n" not in msg and str(chain["s0"]) in msg and "stage1" in msg.replace("-", "").replace(" ", "")
    # resume with a changed model config
    TeacherForcingTrainer(stage1_cfg(tmp_path / "r", steps=4, stop_after=2), data=clips(), heldout=clips()).fit()
    cfg = stage1_cfg(tmp_path / "r", steps=4)
    cfg.model = dataclasses.replace(cfg.model, depth=3)
    with pytest.raises(CheckpointError) as e:
        TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    assert "\n" not in str(e.value) and "model.depth" in str(e.value) and "fresh out_dir" in str(e.value)
    # a truncated checkpoint
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(Path(chain["s1"]).read_bytes()[:300])
    cfg2.init.teacher = str(bad)
    with pytest.raises(WorldsimError) as e:
        ConsistencyTrainer(cfg2, data=clips(), heldout=clips()).fit()
    assert "\n" not in str(e.value) and "bad.safetensors" in str(e.value)


def test_stage1_continues_an_anchored_student_with_noised_anchors(tmp_path):
    """init.student + anchor_noise: the anchored student fine-tuned on wrong anchors (its own, in free play)."""
    cfg = stage1_cfg(tmp_path / "a", steps=6)
    cfg.model = dataclasses.replace(cfg.model, anchor=True)
    first = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    cont = stage1_cfg(tmp_path / "b", steps=6)
    cont.model, cont.anchor_noise = cfg.model, 0.3
    cont.init.student = str(first)
    t = TeacherForcingTrainer(cont, data=clips(), heldout=clips())
    before = {k: v.clone() for k, v in load_checkpoint(first, "model.")[0].items()}
    out = t.fit()
    meta = read_meta(out)
    assert meta["init"]["from"] == "stage1" and meta["init"]["student"] == str(first)
    after = load_checkpoint(out, "model.")[0]
    assert any(not torch.equal(after[k].float(), before[k].float()) for k in before)  # it trained
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    # refused: both inits, noise without anchors, another model config
    both = stage1_cfg(tmp_path / "c", teacher="x.safetensors", steps=2)
    both.init.student = str(first)
    with pytest.raises(WorldsimError, match="not both"):
        TeacherForcingTrainer(both, data=clips(), heldout=clips()).fit()
    plain = stage1_cfg(tmp_path / "d", steps=2)
    plain.anchor_noise = 0.2
    with pytest.raises(WorldsimError, match="model.anchor=true"):
        TeacherForcingTrainer(plain, data=clips(), heldout=clips()).fit()
    other = stage1_cfg(tmp_path / "e", steps=2)
    other.init.student = str(first)  # model.anchor=false here
    with pytest.raises(WorldsimError, match="another model config"):
        TeacherForcingTrainer(other, data=clips(), heldout=clips()).fit()


def continue_student(tmp_path, steps: int, first_model: dict, **changes):
    """A stage-1 student trained ``steps`` steps with ``first_model`` changes, then continued as many with
    ``changes`` more: (its model config, first output, continued output)."""
    cfg = stage1_cfg(tmp_path / "a", steps=steps)
    cfg.model = dataclasses.replace(cfg.model, **first_model)
    first = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    cont = stage1_cfg(tmp_path / "b", steps=steps)
    cont.model = dataclasses.replace(cfg.model, **changes)
    cont.init.student = str(first)
    return cfg.model, first, TeacherForcingTrainer(cont, data=clips(), heldout=clips()).fit()


def test_stage1_continues_a_student_with_a_second_anchor_frame(tmp_path):
    """model.anchor_history may grow on init.student: the continued student starts as the same model
    (the new frame's anchor weights at zero) and trains them; it may not shrink."""
    model, first, out = continue_student(tmp_path, 3, dict(anchor=True), anchor_history=2)
    meta = read_meta(out)
    assert meta["init"]["anchor_history"] == [1, 2] and meta["model_config"]["anchor_history"] == 2
    w = load_checkpoint(out, "model.")[0]["anchor_embed.weight"].float()
    assert w.shape[1] == 2 * load_checkpoint(first, "model.")[0]["anchor_embed.weight"].shape[1]
    older = w.view(w.shape[0], -1, 6)[:, :, 3:]  # the second frame's channels: trained away from zero
    assert older.abs().max() > 0 and torch.isfinite(w).all()
    back = stage1_cfg(tmp_path / "c", steps=1)
    back.model, back.init.student = model, str(out)
    with pytest.raises(WorldsimError, match="anchor_history may grow"):
        TeacherForcingTrainer(back, data=clips(), heldout=clips()).fit()


def test_stage1_adds_a_pixel_refiner_and_trains_only_it(tmp_path):
    """model.refine on init.student adds a pixel refiner (its last layer at zero: the same model at the
    start); refiner_only=true trains it and leaves every other weight as it was; without a refiner or a
    continued student it is refused by name, and a refiner cannot be taken away."""
    cfg = stage1_cfg(tmp_path / "a", steps=3)
    cfg.model = dataclasses.replace(cfg.model, anchor=True)
    first = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    cont = stage1_cfg(tmp_path / "b", steps=3)
    cont.model, cont.init.student = dataclasses.replace(cfg.model, refine=4), str(first)
    cont.refiner_only, cont.motion_weight = True, 5.0
    out = TeacherForcingTrainer(cont, data=clips(), heldout=clips()).fit()
    before, after = load_checkpoint(first, "model.")[0], load_checkpoint(out, "model.")[0]
    assert all(torch.equal(after[k], before[k]) for k in before)  # the transformer untouched
    assert after["refiner.outp.weight"].abs().max() > 0  # the refiner trained from its zero start
    assert read_meta(out)["init"]["refiner_only"] is True
    # a refined student may also start from a teacher (which has no refiner): its refiner keeps its own start
    from worldsim.model import WorldDiT
    from worldsim.train.stage1_teacher_forcing import init_from_teacher
    student = WorldDiT(dataclasses.replace(model_cfg(True), anchor=True, refine=4))
    assert init_from_teacher(student, WorldDiT(model_cfg(False)).state_dict(), model_cfg(False))["from"] == "teacher"
    assert student.refiner.outp.weight.abs().max() == 0
    for model, init, match in ((cfg.model, str(first), "model.refine"), (cont.model, "", "init.student"),
                               (cfg.model, str(out), "refiner may get one")):
        bad = stage1_cfg(tmp_path / "c", steps=1)
        bad.model, bad.init.student, bad.refiner_only = model, init, match != "refiner may get one"
        with pytest.raises(WorldsimError, match=match):
            TeacherForcingTrainer(bad, data=clips(), heldout=clips()).fit()


def test_stage1_refiner_without_the_noisy_frame(tmp_path):
    """model.refine_noisy=false: the refiner reads the head's frame and the anchors only (fewer input
    channels, and its output does not move with the noisy frame beyond what the head draws of it); a
    student without a refiner may get one of either kind, one with a refiner keeps its kind."""
    from worldsim.model import WorldDiT

    cfg = stage1_cfg(tmp_path / "a", steps=2)
    cfg.model = dataclasses.replace(cfg.model, anchor=True)
    first = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    cont = stage1_cfg(tmp_path / "b", steps=2)
    cont.model = dataclasses.replace(cfg.model, refine=4, refine_noisy=False)
    cont.init.student, cont.refiner_only = str(first), True
    out = TeacherForcingTrainer(cont, data=clips(), heldout=clips()).fit()
    assert load_checkpoint(out, "model.")[0]["refiner.inp.weight"].shape[1] == 3 * (1 + cont.model.anchor_history)
    assert read_meta(out)["model_config"]["refine_noisy"] is False
    # in the model's forward the refiner gets the anchors beside the head's frame, and no noisy frame
    seen = {}
    for noisy in (True, False):
        net = WorldDiT(dataclasses.replace(cont.model, refine_noisy=noisy)).eval()
        inner = net.refiner.forward
        net.refiner.forward = lambda head, inputs, cond, inner=inner, noisy=noisy: (
            seen.__setitem__(noisy, [t.shape[2] for t in inputs]) or inner(head, inputs, cond))
        T = 3
        x = torch.randn(1, T, 3, R, R)
        sigma = torch.full((1, T), 0.75)
        with torch.no_grad():
            tf_forward(net, x, torch.zeros_like(sigma), torch.randn_like(x), sigma, torch.zeros(1, T, dtype=torch.long), 1,
                       anchor_src=x)
    assert seen == {True: [3, 3 * cont.model.anchor_history], False: [3 * cont.model.anchor_history]}
    flip = stage1_cfg(tmp_path / "c", steps=1)
    flip.model = dataclasses.replace(cont.model, refine_noisy=True)
    flip.init.student, flip.refiner_only = str(out), True
    with pytest.raises(WorldsimError, match="another model config"):
        TeacherForcingTrainer(flip, data=clips(), heldout=clips()).fit()


def test_stage3_refiner_only_trains_the_refiner_and_nothing_else(chain, tmp_path):
    """refiner_only=true in stage 3: the adversarial and teacher-forcing terms reach the student's pixel
    refiner and leave the transformer as it was (the keys move what they moved); a student without a
    refiner is refused by name."""
    cfg = stage1_cfg(tmp_path / "a", steps=2)
    cfg.model = dataclasses.replace(cfg.model, anchor=True)
    first = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    ref = stage1_cfg(tmp_path / "b", steps=2)
    ref.model, ref.init.student, ref.refiner_only = dataclasses.replace(cfg.model, refine=4), str(first), True
    refined = TeacherForcingTrainer(ref, data=clips(), heldout=clips()).fit()
    adv = adversarial_cfg(tmp_path / "c", str(refined), steps=3)
    adv.tf_weight, adv.refiner_only = 1.0, True
    out = DMDTrainer(adv, data=clips(6), heldout=clips(6)).fit()
    before, after = load_checkpoint(refined, "model.")[0], load_checkpoint(out, "model.")[0]
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("refiner."))
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("refiner."))
    assert read_meta(out)["init"]["refiner_only"] is True
    bad = adversarial_cfg(tmp_path / "d", str(first), steps=1)
    bad.refiner_only = True
    with pytest.raises(WorldsimError, match="refiner_only=true needs a student with a pixel refiner"):
        DMDTrainer(bad, data=clips(6), heldout=clips(6)).fit()


def test_stage1_continues_a_student_with_fewer_temporal_blocks(tmp_path):
    """temporal_every may change on init.student (same weights, fewer blocks attend across frames):
    the cheaper student starts from the trained one's weights and trains on."""
    model, first, out = continue_student(tmp_path, 4, dict(depth=2), temporal_every=2)
    meta = read_meta(out)
    assert meta["init"]["temporal_every"] == [1, 2] and meta["model_config"]["temporal_every"] == 2
    assert all(torch.isfinite(v.float()).all() for v in load_checkpoint(out, "model.")[0].values())
    # init.redraw_actions: the continued student's action rows re-drawn at ACTION_INIT_STD, the rest kept
    redraw = stage1_cfg(tmp_path / "r", steps=1)
    redraw.model, redraw.init.student, redraw.init.redraw_actions = model, str(first), True
    redraw.optim.lr = 0.0  # (no update: what is left is the initialisation)
    t = TeacherForcingTrainer(redraw, data=clips(), heldout=clips())
    t.setup()
    old, new = load_checkpoint(first, "model.")[0], t.nets["model"].state_dict()
    assert t.init_info["redraw_actions"] == ACTION_INIT_STD
    assert not torch.equal(new["action_embed.weight"], old["action_embed.weight"].float())
    assert abs(new["action_embed.weight"].std().item() - ACTION_INIT_STD) < 0.1
    assert all(torch.equal(new[k], old[k].float()) for k in old if k != "action_embed.weight")
    alone = stage1_cfg(tmp_path / "s", steps=1)
    alone.init.redraw_actions = True
    with pytest.raises(WorldsimError, match="init.student"):
        TeacherForcingTrainer(alone, data=clips(), heldout=clips()).fit()
    wider = stage1_cfg(tmp_path / "c", steps=2)
    wider.model = dataclasses.replace(model, temporal_every=2, dim=model.dim * 2)
    wider.init.student = str(first)
    with pytest.raises(WorldsimError, match="another model config"):  # any other field still refused
        TeacherForcingTrainer(wider, data=clips(), heldout=clips()).fit()


def test_average_students_writes_the_mean_and_names_its_sources(tmp_path, capsys):
    """worldsim train average: the mean of two stage-1 legs from one parent, loadable as a stage-1
    student, naming both sources; other model configs, one input, or the output among the inputs: one line."""
    from worldsim.checkpoint import load_checkpoint
    from worldsim.cli import main as worldsim
    from worldsim.train.average import average_students

    model, first, a = continue_student(tmp_path / "1", 2, {})
    cfg = stage1_cfg(tmp_path / "2", steps=3)
    cfg.model, cfg.init.student, cfg.run.seed = model, str(first), 7
    b = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    out = tmp_path / "soup.safetensors"
    assert worldsim(["train", "average", str(a), str(b), "--out", str(out)]) == 0
    assert "the mean of 2 checkpoints" in capsys.readouterr().out
    ta, tb, to = (load_checkpoint(p)[0] for p in (a, b, out))
    k = "model.blocks.0.mlp.0.weight"
    assert not torch.equal(ta[k], tb[k])
    torch.testing.assert_close(to[k].float(), (ta[k].float() + tb[k].float()) / 2, atol=1e-2, rtol=1e-2)
    meta = read_meta(out)
    assert meta["init"]["from"] == "average" and meta["init"]["students"] == [str(a), str(b)]
    assert meta["role"] == read_meta(a)["role"] and meta["stage"] == read_meta(a)["stage"]
    cont = stage1_cfg(tmp_path / "3", steps=1)  # it continues like any stage-1 student
    cont.model, cont.init.student = model, str(out)
    assert TeacherForcingTrainer(cont, data=clips(), heldout=clips()).fit().is_file()
    other = continue_student(tmp_path / "4", 1, dict(depth=1))[2]
    with pytest.raises(WorldsimError, match="another model_config"):
        average_students([a, other], tmp_path / "x.safetensors")
    assert worldsim(["train", "average", str(a), "--out", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "two or more" in err and len(err.strip().splitlines()) == 1
    assert worldsim(["train", "average", str(a), str(b), "--out", str(a)]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert worldsim(["train", "--threads", "1", "average", str(a), str(b)]) == 2  # options first: a config expected
    assert "average takes checkpoints" in capsys.readouterr().err


def test_motion_weights_look_only_at_the_frames_before():
    """1 + weight within ``reach`` of where frame t-1 differs from frame t-2, 1 elsewhere and on a clip's
    first two frames; the frame predicted plays no part (so the loss's minimiser is still the mean)."""
    from worldsim.train.stage1_teacher_forcing import motion_weights
    from worldsim.train.trainer import v_loss

    x0 = -torch.ones(1, 4, 3, 12, 12)
    x0[0, 0, :, 5, 2] = x0[0, 1, :, 5, 3] = 1.0  # a one-pixel "ball" moving right, then gone
    w = motion_weights(x0, 9.0, reach=1)
    assert w.shape == (1, 4, 1, 12, 12)
    assert (w[0, :2] == 1).all()
    near = (w[0, 2, 0] == 10.0).nonzero().tolist()
    assert near == [[r, c] for r in (4, 5, 6) for c in (1, 2, 3, 4)]  # 1 px around the old and the new place
    assert (w[0, 3, 0] == 10.0).nonzero().tolist() == [[r, c] for r in (4, 5, 6) for c in (2, 3, 4)]  # it left
    other = x0.clone()
    other[0, 2:] = torch.randn_like(other[0, 2:])  # frames at and after the target's: same weights
    assert torch.equal(motion_weights(other, 9.0, reach=1)[:, 2], w[:, 2])
    sigma = torch.full((1, 4), 0.5)
    hat = torch.zeros_like(x0)
    assert torch.equal(v_loss(hat, x0, sigma, pixel_weight=motion_weights(x0, 0.0)), v_loss(hat, x0, sigma))
    assert torch.equal(motion_weights(x0[:, :2], 9.0), torch.ones(1, 2, 1, 12, 12))


def test_stage1_motion_weight_trains_and_refuses_a_negative_weight(tmp_path):
    cfg = stage1_cfg(tmp_path / "a", steps=3)
    cfg.motion_weight = 20.0
    out = TeacherForcingTrainer(cfg, data=clips(), heldout=clips()).fit()
    assert read_meta(out)["train_config"]["motion_weight"] == 20.0
    assert all(math.isfinite(v) for v in losses(tmp_path / "a"))
    bad = stage1_cfg(tmp_path / "b", steps=1)
    bad.motion_weight = -1.0
    with pytest.raises(WorldsimError, match="motion_weight=-1.0 must be >= 0"):
        TeacherForcingTrainer(bad, data=clips(), heldout=clips()).fit()
