"""Training computes what inference runs, and data parallel computes what one process computes.

* Teacher forcing (the ``[clean | noisy]`` sequence with its mask) gives each noisy chunk the same x0
  as the KV-cached forward the engine and the self-rollout use, frame-wise and chunk-wise.
* The self-rollout under the Euler sampler draws the frames the engine draws from the same noise.
* Two gloo processes with global batch B reach the same weights as one process with batch B.
* The pipeline runs a subset of stages, then skips finished ones.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from worldsim.checkpoint import load_checkpoint, read_meta
from worldsim.model import ModelConfig, WorldDiT
from worldsim.model.dit import chunk_anchor, keep_recent
from worldsim.engine import Engine, EngineConfig
from worldsim.train.self_rollout import make_cache, self_rollout
from worldsim.train.stage1_teacher_forcing import TeacherForcingTrainer, tf_forward

from test_train_stages import clips, stage1_cfg


@pytest.mark.parametrize("anchor", [False, "input", "input2"], ids=["plain", "anchor-input", "anchor-input-2"])
@pytest.mark.parametrize("chunk", [1, 2])
def test_teacher_forcing_equals_kv_cache(chunk, anchor):
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=5, causal=True,
                      chunk=chunk, temporal_every=1, anchor=bool(anchor), anchor_history=2 if anchor == "input2" else 1)
    model = WorldDiT(cfg).eval()
    for p in model.parameters():  # perturb every weight so no path is an identity or zero at init
        p.data.add_(0.02 * torch.randn_like(p))
    B, T = 2, 6
    clean = torch.rand(B, T, 3, 16, 16) * 2 - 1
    noisy = torch.randn(B, T, 3, 16, 16)
    sigma = torch.rand(B, (T + chunk - 1) // chunk).repeat_interleave(chunk, 1)[:, :T]  # one level per chunk
    acts = torch.randint(0, 6, (B, T))
    with torch.no_grad():
        want = tf_forward(model, clean, torch.zeros(B, T), noisy, sigma, acts, chunk)  # (B, T, 3, 16, 16)
        cache = make_cache(model, B, chunk=chunk, window=T, sink=0, device="cpu")
        got = []
        recent = None  # as the engine: the latest clean frame(s) anchor the next chunk
        for t in range(0, T, chunk):
            pos = cache.next_positions(chunk, "cpu")
            anc = None if recent is None else chunk_anchor(recent, chunk, cfg.anchor_history)
            got.append(model(noisy[:, t:t + chunk], sigma[:, t:t + chunk], acts[:, t:t + chunk], frame_pos=pos,
                             chunk=chunk, cache=cache, anchor=anc))
            model(clean[:, t:t + chunk], torch.zeros(B, chunk), acts[:, t:t + chunk], frame_pos=pos, chunk=chunk,
                  cache=cache, anchor=anc)  # the clean chunk's keys/values become context
            recent = keep_recent(recent, clean[:, t:t + chunk], cfg.anchor_history)
            cache.commit(chunk)
    torch.testing.assert_close(torch.cat(got, 1), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("steps", [2, 4])
def test_self_rollout_euler_equals_the_engine(steps):
    """Stage 1's own-frame anchors come from ``self_rollout(sampler="euler")``: frame for frame what the
    engine plays with ``sampler=euler`` past the cache's wrap, given the engine's own initial noise."""
    torch.manual_seed(0)
    cfg = ModelConfig(resolution=16, patch=4, dim=32, depth=2, heads=2, kv_heads=1, num_actions=5, causal=True,
                      chunk=1, temporal_every=1, anchor=True, anchor_history=2, refine=4)
    model = WorldDiT(cfg).eval()
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    B, K, H = 2, 3, 6
    ctx, prev, acts = torch.rand(B, K, 3, 16, 16) * 2 - 1, torch.randint(0, 6, (B, K)), torch.randint(0, 6, (B, H))
    ecfg = EngineConfig(chunk=1, steps=steps, sampler="euler", shift=3.0, window=3, sink=1, fuse_cache_write=False)
    eng = Engine(model, ecfg, device="cpu")
    eng.reset(B, seed=5)
    eng.prefill(ctx, prev)
    want = torch.cat([eng.step(acts[:, j]) for j in range(H)], 1)
    g = torch.Generator().manual_seed(5)  # the engine's draws: each frame's noise, then a seed per inner step
    noise = []
    for _ in range(H):
        noise.append(torch.randn(B, 1, 3, 16, 16, generator=g))
        for _ in range(steps - 1):
            torch.randint(0, 2**31 - 1, (1,), generator=g)
    with torch.no_grad():
        got = self_rollout(model, ctx, prev, acts, chunk=1, steps=steps, shift=3.0, window=3, sink=1,
                           exit_step=steps - 1, noise=torch.cat(noise, 1), renoise=None, grad=False, sampler="euler")
    torch.testing.assert_close(got.clamp(-1, 1), want, atol=1e-5, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        TeacherForcingTrainer(stage1_cfg(Path(out), "", steps=4), data=clips(), heldout=clips()).fit()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    single = TeacherForcingTrainer(stage1_cfg(tmp_path / "one", "", steps=4), data=clips(), heldout=clips()).fit()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True,
                       start_method="spawn")
    a = load_checkpoint(single, "model.")[0]
    b = load_checkpoint(tmp_path / "two" / "final.safetensors", "model.")[0]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    # and the ranks really split the batch: a run with half the batch on one process differs
    half = TeacherForcingTrainer(stage1_cfg(tmp_path / "half", "", steps=4), data=clips(), heldout=clips())
    half.cfg.optim.batch_size = 2
    c = load_checkpoint(half.fit(), "model.")[0]
    assert any(not torch.allclose(c[k], a[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_pipeline_runs_a_subset_then_skips_finished_stages(tmp_path, capsys):
    from worldsim.config import load_config
    from worldsim.errors import ConfigError
    from worldsim.train.pipeline import PipelineConfig, run_pipeline

    over = [f"out_dir={tmp_path}", "progress=false", "collect.steps=600", "collect.heldout_episodes=1",
            "collect.max_episode_steps=100", "data.resolution=16", "data.clip_len=4",
            "teacher.resolution=16", "teacher.dim=32", "teacher.depth=2", "teacher.patch=4",
            "student.resolution=16", "student.dim=32", "student.depth=2", "student.patch=4",
            "stage0.optim.steps=3", "stage1.optim.steps=3", "stage2.optim.steps=2", "stage2.num_levels=8",
            "stage3.optim.steps=2", "stage3.rollout.frames=2", "stage3.rollout.window=3",
            "ship.context_frames=2", "ship.eval.context=2", "ship.eval.horizon=2", "ship.eval.starts=1",
            "ship.eval.steps=[1]"]
    for stage in ("stage0", "stage1", "stage2", "stage3"):
        over += [f"{stage}.run.bf16=false", f"{stage}.run.sample_every=-1"]
    cfg = load_config(PipelineConfig, "configs/smoke.yaml", over + ["stages=[stage0]"])
    rep = run_pipeline(cfg)
    assert list(rep["stages"]) == ["stage0_teacher"] and "playable" not in rep
    assert (tmp_path / "stage0_teacher" / "final.safetensors").is_file()
    assert not (tmp_path / "stage1_teacher_forcing").exists()
    rep = run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml", over))
    assert rep["stages"]["stage0_teacher"]["skipped"] and not rep["stages"]["stage3_dmd"]["skipped"]
    assert Path(rep["playable"]).is_file() and "copy_last" in rep["eval"]
    assert read_meta(rep["playable"])["stage"] == 3 and rep["shipped_stage"] == "stage3"
    # ship.stage=stage2: every stage done (skipped), the CCD student shipped, the stage-3 one still evaluated
    rep2 = run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml", over + ["ship.stage=stage2"]))
    assert all(r["skipped"] for r in rep2["stages"].values())
    assert read_meta(rep2["playable"])["stage"] == 2 and list(rep2["eval_passed_over"]) == ["stage3"]
    assert "copy_last" in rep2["eval_passed_over"]["stage3"]
    # ship.stage=stage1 (the teacher-forcing student, few-step Euler): both later students evaluated beside it
    rep1 = run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml",
                                    over + ["ship.stage=stage1", "ship.engine.sampler=euler", "stages=[stage1]"]))
    assert read_meta(rep1["playable"])["stage"] == 1 and rep1["shipped_stage"] == "stage1"
    assert list(rep1["eval_passed_over"]) == ["stage2", "stage3"]
    with pytest.raises(ConfigError, match="ship.stage"):
        run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml", over + ["ship.stage=stage0"]))
    # a finished stage trained with another config is refused, not silently reused
    from worldsim.errors import CheckpointError

    with pytest.raises(CheckpointError, match="another config"):
        run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml", over + ["stage0.optim.lr=0.5"]))
    with pytest.raises(ConfigError, match="stages"):
        run_pipeline(load_config(PipelineConfig, "configs/smoke.yaml", over + ["stages=[stage9]"]))
    # worldsim train ship: the playable file from an existing student, no training (a stage-1 student
    # continued by hand and put where the ship stage's output goes)
    from worldsim.cli import main as worldsim

    Path(rep1["playable"]).unlink()
    assert worldsim(["train", "ship", "configs/smoke.yaml", *over, "ship.stage=stage1", "ship.engine.sampler=euler",
                     "--json", str(tmp_path / "ship.json")]) == 0
    shipped = json.loads((tmp_path / "ship.json").read_text())
    assert shipped["stages"] == {} and shipped["shipped_stage"] == "stage1" and "copy_last" in shipped["eval"]
    assert read_meta(shipped["playable"])["shipped_from"] == str(tmp_path / "stage1_teacher_forcing" / "final.safetensors")
    capsys.readouterr()
    assert worldsim(["train", "ship", "configs/smoke.yaml", *over, f"out_dir={tmp_path / 'empty'}", "ship.stage=stage1"]) != 0
    assert "no stage1 output" in capsys.readouterr().err
