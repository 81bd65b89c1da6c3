"""Stage 2a: causal ODE distillation, the baseline that consistency distillation (stage 2b) replaces.

Boundary: real clips + the stage-1 model in, ``trajectories.safetensors`` (stored teacher ODE
trajectories; their size is part of the cost) and ``final.safetensors`` (role ``student``, stage 2,
``method: ode``) out.

1. Precompute (RECIPE.md, "Stage 2a"): for ``num_trajectories`` real training clips, integrate the
   stage-1 model's flow ODE from noise with ``num_levels`` Euler steps on the shifted grid, every
   noisy frame at the same level, conditioned on the clean GROUND-TRUTH history through the
   teacher-forcing mask (not on its own outputs), with action guidance ``u + w (c - u)``. Store the
   states at the student's step points (``student_sigmas(steps, shift)`` for ``student_steps``, all on
   the same grid) and the endpoint, in ``storage_dtype``.
2. Train: regress the student's x0 at a stored state and its level onto the endpoint, with the same
   clean ground-truth context: ``MSE(f_student(x_k, s_k), x_endpoint)``.

One chunk size (``chunk``) for the whole run: a causal trajectory depends on the chunking, and
storing one per chunk size would multiply the storage. The precompute runs on rank 0 (the others
wait and read the file); the trajectory file is reused on resume when its settings match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from worldsim.checkpoint import load_checkpoint, read_meta, save_checkpoint
from worldsim.engine import EngineConfig
from worldsim.train.data import DataConfig, collate, draw_indices
from worldsim.train.stage1_teacher_forcing import tf_forward
from worldsim.train.stage2_consistency import (Stage2Init, StudentStageMixin, fewstep_engine, guided_x0, level_grid,
                                               load_stage1, student_indices)
from worldsim.train.trainer import OptimConfig, RunConfig, Trainer, check_same_game

TRAJECTORIES = "trajectories.safetensors"
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Stage2ODEConfig:
    data: DataConfig = field(default_factory=DataConfig)
    init: Stage2Init = field(default_factory=Stage2Init)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    num_levels: int = 48  # Euler steps per trajectory
    shift: float = 3.0
    guidance: float = 3.0  # action guidance w of every teacher step
    chunk: int = 1  # chunk size of the trajectories and the training
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])  # step lists whose points are stored
    num_trajectories: int = 0  # clips integrated (0: steps * batch_size / stored points, each pair used ~once)
    storage_dtype: str = "fp16"
    engine: EngineConfig = field(default_factory=fewstep_engine)


class ODETrainer(StudentStageMixin, Trainer):
    stage, stage_name, role = 2, "stage2_ode", "student"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES)}, got {cfg.storage_dtype!r}")
        teacher, meta = load_stage1(cfg.init.teacher, "stage 2 ODE (init.teacher)")
        check_same_game(meta, self.data, cfg.init.teacher, "stage 2 ODE")
        self.grid = level_grid(cfg.num_levels, cfg.shift)
        self.points = student_indices(cfg.num_levels, cfg.shift, cfg.student_steps)  # grid indices stored
        student = type(teacher)(teacher.cfg)
        student.load_state_dict(teacher.state_dict())
        self.add_net("teacher", teacher, trainable=False)
        self.add_net("model", student, ema_decay=cfg.optim.ema_decay)
        self.init_info = {"from": "stage1", "teacher": meta["_path"], "teacher_hash": meta["_hash"]}
        self._teacher_hash = meta["_hash"]
        self.traj = self.load_or_build_trajectories()

    @property
    def M(self) -> int:
        o = self.cfg.optim
        return self.cfg.num_trajectories or max(1, o.steps * o.batch_size // len(self.points))

    def _traj_meta(self) -> dict:
        c = self.cfg
        return {"num_trajectories": self.M, "num_levels": c.num_levels, "shift": c.shift, "guidance": c.guidance,
                "chunk": c.chunk, "points": self.points, "storage_dtype": c.storage_dtype, "seed": c.run.seed,
                "teacher_hash": self._teacher_hash, "clip_len": c.data.clip_len}

    def load_or_build_trajectories(self) -> dict[str, torch.Tensor]:
        path = self.out / TRAJECTORIES
        want = self._traj_meta()
        if self.rank == 0:
            ok = path.is_file() and {k: read_meta(path).get(k) for k in want} == want
            if not ok:
                self.build_trajectories(path)
        if self.world > 1:
            dist.barrier()
        tensors, meta = load_checkpoint(path)
        self.traj_cost = meta["cost"]
        self.cost["storage_bytes"] = path.stat().st_size
        if self.step == 0 and self.cost["teacher_nfe"] == 0:  # precompute cost counts once (not again on resume)
            self.cost["teacher_nfe"] = int(self.traj_cost["teacher_nfe"])
            self.cost["precompute_s"] = float(self.traj_cost["wall_s"])
            self.cost["wall_s"] += float(self.traj_cost["wall_s"])
        return tensors

    @torch.no_grad()
    def build_trajectories(self, path) -> None:
        """Integrate the teacher ODE on ``M`` training clips and store the states at the student points."""
        from tqdm import tqdm

        c = self.cfg
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(c.run.seed + 7_919)  # its own stream: precompute never shifts training draws
        M, B, P = self.M, c.optim.batch_size, len(self.points)
        clip_idx = torch.randint(len(self.data), (M,), generator=g)  # (M,)
        sdt = STORAGE_DTYPES[c.storage_dtype]
        teacher = self.nets["teacher"]
        no_action = teacher.cfg.num_actions
        states, ends = [], []
        nfe = 0
        bar = tqdm(total=M, desc="ODE trajectories", unit="clip", disable=not c.run.progress, dynamic_ncols=True)
        for lo in range(0, M, B):
            batch = collate([self.data[int(i)] for i in clip_idx[lo:lo + B]])
            x0, acts = self.model_inputs(batch)  # (b, T, 3, R, R)
            b, T = acts.shape
            x = torch.randn(x0.shape, generator=g).to(self.device)  # s = 1: pure noise
            kept = {}
            for k in range(c.num_levels):
                s, s_next = float(self.grid[k]), float(self.grid[k + 1])
                if k in self.points:
                    kept[k] = x.to(sdt).cpu()
                sig = torch.full((b, T), s, device=self.device)
                with self.autocast():
                    x0_g = guided_x0(teacher, x0, x, sig, acts, c.chunk, c.guidance, no_action)
                x = x + (s_next - s) * (x - x0_g) / s
                nfe += b * (1 if c.guidance == 1.0 else 2)
            states.append(torch.stack([kept[k] for k in self.points], 1))  # (b, P, T, 3, R, R)
            ends.append(x.to(sdt).cpu())  # (b, T, 3, R, R)
            bar.update(b)
        bar.close()
        wall = time.perf_counter() - t0
        save_checkpoint(path, {"states": torch.cat(states), "endpoint": torch.cat(ends), "clip_index": clip_idx},
                        {**self._traj_meta(), "cost": {"teacher_nfe": nfe, "wall_s": wall}, "points_count": P})

    def next_batch(self):
        idx = draw_indices(self.M, self.cfg.optim.batch_size, self.gen_data, self.rank, self.world)
        self.batches_drawn += 1
        batch = collate([self.data[int(self.traj["clip_index"][i])] for i in idx])
        batch["traj"] = torch.tensor(idx)
        return batch

    def train_step(self, batch):
        c = self.cfg
        x0, acts = self.model_inputs(batch)  # clean ground-truth context (B, T, ...)
        B, T = acts.shape
        p = (self.rand_b() * len(self.points)).long().clamp_max(len(self.points) - 1)  # (B,) which stored point
        idx = batch["traj"]
        x_k = self.traj["states"][idx, p.cpu()].float().to(self.device)  # (B, T, 3, R, R)
        target = self.traj["endpoint"][idx].float().to(self.device)
        s = self.grid.to(self.device)[torch.tensor(self.points, device=self.device)[p]]  # (B,)
        sig = s[:, None].expand(-1, T)
        with self.autocast():
            x0_hat = tf_forward(self.nets["model"], x0, torch.zeros_like(sig), x_k, sig, acts, c.chunk)
        loss = (x0_hat.float() - target).pow(2).mean()
        gnorm = self.optimize("model", loss)
        self.cost["student_nfe"] += c.optim.batch_size
        return {"loss": float(loss.detach()), "grad_norm": gnorm, "s": float(s.mean())}

    def output_meta(self):
        meta = super().output_meta()
        meta["method"] = "ode"
        meta["trajectories"] = {"path": str(self.out / TRAJECTORIES), "bytes": self.cost["storage_bytes"],
                                "count": self.M, "points": self.points}
        return meta
