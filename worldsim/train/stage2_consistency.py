"""Stage 2 (Causal Forcing++): causal consistency distillation, the few-step initialisation of the student.

Boundary: real clips + the stage-1 model (frozen teacher and initialisation) in, ``final.safetensors``
(role ``student``, stage 2: a few-step causal model for the engine's ``renoise`` sampler) out.
Nothing is precomputed or stored: every teacher evaluation happens online on the current batch.

Per sample (RECIPE.md, "Stage 2b"; one level for every frame of the sample):
  * levels on an ``N = num_levels`` grid, uniform then shifted: ``s_n = shift(1 - n/N)``, n = 0..N;
    pick adjacent ``s = s_n > s' = s_{n+1}``. With the engine's shift, every point of
    ``student_sigmas(steps, shift)`` for steps 1, 2, 4 lies on the grid (N a multiple of 4); with
    probability ``student_point_prob`` n is drawn among those points so they are well covered;
  * ``x_s = (1 - s) x0 + s eps`` on the real frames;
  * one Euler step of the frozen stage-1 model, clean real context (teacher forcing):
    ``x_s' = x_s + (s' - s) v_g`` with ``v_g = (x_s - x0_g) / s`` and action guidance
    ``x0_g = u + w (c - u)`` (``u``: all actions "no action", ``c``: real actions; ``w = guidance``,
    w = 1 is the plain conditional model; guidance on x0 equals guidance on v at fixed x_s, s);
  * target ``f_target(x_s', s')``: the x0 prediction of the EMA student (decay ``target_decay``, updated
    every step) under no_grad, same clean context. At the boundary s' = 0 the consistency function is
    the identity, so the target is the teacher's Euler endpoint ``x_0 = x0_g`` itself (not the real x0:
    the student learns the teacher's flow map, and the real frame is only reached through it);
  * loss ``MSE(f_student(x_s, s), target)`` on x0, plain L2.

The student's architecture is the stage-1 checkpoint's (it is initialised from it), so this stage
has no ``model`` section; the output's engine settings are ``engine`` (few-step ``renoise``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldsim.engine import EngineConfig
from worldsim.engine.schedule import add_noise, shift_sigma, student_sigmas
from worldsim.train.data import DataConfig
from worldsim.train.stage1_teacher_forcing import tf_forward
from worldsim.train.trainer import EMA, OptimConfig, RunConfig, Trainer, check_same_game, load_stage_output


def fewstep_engine() -> EngineConfig:
    return EngineConfig(chunk=1, steps=2, sampler="renoise", shift=3.0, window=8, sink=1)


@dataclass
class Stage2Init:
    teacher: str = ""  # the stage-1 final.safetensors: the frozen teacher AND the student's initialisation


@dataclass
class Stage2Config:
    data: DataConfig = field(default_factory=DataConfig)
    init: Stage2Init = field(default_factory=Stage2Init)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    num_levels: int = 48  # N: the discretisation of [0, 1] (adjacent levels = one teacher Euler step)
    shift: float = 3.0  # must equal the engine's shift so the student's step points lie on the grid
    guidance: float = 3.0  # action guidance w of the teacher step, u + w (c - u)
    target_decay: float = 0.99  # EMA decay of the consistency target, updated every step
    chunks: list[int] = field(default_factory=lambda: [1])  # chunk size per batch (as in stage 1)
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])  # few-step lists the student must serve
    student_point_prob: float = 0.25  # draw n among those lists' points with this probability
    engine: EngineConfig = field(default_factory=fewstep_engine)  # sample videos and output engine settings


def level_grid(num_levels: int, shift: float) -> torch.Tensor:
    """(N+1,) levels 1 = s_0 > s_1 > ... > s_N = 0 on the shifted grid."""
    base = torch.linspace(1.0, 0.0, num_levels + 1, dtype=torch.float64)
    return shift_sigma(base, shift).float()


def student_indices(num_levels: int, shift: float, steps_list) -> list[int]:
    """Grid indices of every point of ``student_sigmas(steps, shift)``; refuses a grid that misses one."""
    grid = level_grid(num_levels, shift).double()
    idx = set()
    for steps in steps_list:
        for s in student_sigmas(steps, shift):
            j = int(torch.argmin((grid - s).abs()))
            if abs(float(grid[j]) - s) > 1e-6:
                raise ValueError(f"the {steps}-step student level {s:.4f} is not on the {num_levels}-level grid; "
                                 f"make num_levels a multiple of {steps}")
            idx.add(j)
    return sorted(idx)


def guided_x0(teacher, clean, noisy, sigma, acts, chunk: int, guidance: float, no_action: int) -> torch.Tensor:
    """Teacher-forcing x0 of the frozen model with action guidance ``u + w (c - u)`` (B, T, 3, R, R)."""
    zeros = torch.zeros_like(sigma)
    c = tf_forward(teacher, clean, zeros, noisy, sigma, acts, chunk).float()
    if guidance == 1.0:
        return c
    u = tf_forward(teacher, clean, zeros, noisy, sigma, torch.full_like(acts, no_action), chunk).float()
    return u + guidance * (c - u)


@torch.no_grad()
def consistency_target(teacher, target_net, clean, acts, x_s, s, s_next, chunk: int, guidance: float,
                       no_action: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target x0, x_s') for noisy frames ``x_s`` (B, T, ...) at per-sample levels ``s`` > ``s_next`` (B,).

    One Euler step of the frozen teacher from s to s' with clean real context, then the EMA student's
    x0 at (x_s', s'), or x_s' itself where s' = 0 (the consistency boundary)."""
    T = x_s.shape[1]
    sig = s[:, None].expand(-1, T)  # (B, T) one level per sample
    sig_next = s_next[:, None].expand(-1, T)
    x0_g = guided_x0(teacher, clean, x_s, sig, acts, chunk, guidance, no_action)
    v = (x_s - x0_g) / s.view(-1, 1, 1, 1, 1)  # (B, T, 3, R, R); s >= s_1 > 0
    x_next = x_s + (s_next - s).view(-1, 1, 1, 1, 1) * v
    f_next = tf_forward(target_net, clean, torch.zeros_like(sig_next), x_next, sig_next, acts, chunk).float()
    boundary = (s_next == 0).view(-1, 1, 1, 1, 1)
    return torch.where(boundary, x_next, f_next), x_next


def load_stage1(path: str, needed_by: str):
    return load_stage_output(path, role="student", stages=(1,), what="the stage-1 teacher-forcing model",
                             needed_by=needed_by,
                             hint="the stage-1 output, e.g. OUT/stage1_teacher_forcing/final.safetensors")


class StudentStageMixin:
    """Shared by the student stages: few-step sample videos and engine settings in the output."""

    def sample_frames(self, ctx, prev, actions, seed):
        from worldsim.train.samples import engine_rollout

        return engine_rollout(self.shipped(), self.cfg.engine, ctx, prev, actions, seed, dtype=self.dtype)

    def output_meta(self):
        from worldsim.config import to_dict

        return {"engine": to_dict(self.cfg.engine)}


class ConsistencyTrainer(StudentStageMixin, Trainer):
    stage, stage_name, role = 2, "stage2_consistency", "student"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.engine.shift != cfg.shift:
            raise ValueError(f"engine.shift {cfg.engine.shift} != shift {cfg.shift}: the student's step points "
                             f"must lie on the training grid")
        self.grid = level_grid(cfg.num_levels, cfg.shift)  # (N+1,)
        self.points = student_indices(cfg.num_levels, cfg.shift, cfg.student_steps)
        teacher, meta = load_stage1(cfg.init.teacher, "stage 2 (init.teacher)")
        check_same_game(meta, self.data, cfg.init.teacher, "stage 2")
        student = type(teacher)(teacher.cfg)
        student.load_state_dict(teacher.state_dict())
        self.add_net("teacher", teacher, trainable=False)
        self.add_net("model", student, ema_decay=cfg.optim.ema_decay)
        # The consistency target: an EMA of the student at ``target_decay``, no warm-up (RECIPE.md).
        self.target = EMA(student, cfg.target_decay, warmup=False)
        self.init_info = {"from": "stage1", "teacher": meta["_path"], "teacher_hash": meta["_hash"]}

    def draw_levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        N = self.cfg.num_levels
        n_uniform = (self.rand_b() * N).long().clamp_max(N - 1)  # (B,) in [0, N)
        pts = torch.tensor(self.points, device=n_uniform.device)
        n_point = pts[(self.rand_b() * len(pts)).long().clamp_max(len(pts) - 1)]  # (B,) a student step point
        n = torch.where(self.rand_b() < self.cfg.student_point_prob, n_point, n_uniform)
        grid = self.grid.to(n.device)
        return grid[n], grid[n + 1]

    def train_step(self, batch):
        cfg = self.cfg
        x0, acts = self.model_inputs(batch)  # (B, T, 3, R, R), (B, T)
        B, T = acts.shape
        C = cfg.chunks[self.randint(len(cfg.chunks))]
        s, s_next = self.draw_levels()  # (B,), (B,)
        eps = self.randn_b(*x0.shape[1:])
        x_s = add_noise(x0, eps, s[:, None].expand(-1, T))  # (B, T, 3, R, R)
        no_action = self.nets["model"].cfg.num_actions
        with self.autocast():
            target, _ = consistency_target(self.nets["teacher"], self.target.model, x0, acts, x_s, s, s_next, C,
                                           cfg.guidance, no_action)
            x0_hat = tf_forward(self.nets["model"], x0, torch.zeros_like(acts, dtype=torch.float32), x_s,
                                s[:, None].expand(-1, T), acts, C)
        loss = (x0_hat.float() - target).pow(2).mean()
        gnorm = self.optimize("model", loss)
        self.target.update(self.nets["model"])
        self.cost["teacher_nfe"] += cfg.optim.batch_size * (1 if cfg.guidance == 1.0 else 2)
        self.cost["student_nfe"] += cfg.optim.batch_size * 2  # student + target
        with torch.no_grad():
            real_mse = (x0_hat.float() - x0).pow(2).mean()
        return {"loss": float(loss.detach()), "x0_mse_real": float(real_mse), "grad_norm": gnorm, "s": float(s.mean())}

    def output_meta(self):
        return {**super().output_meta(), "method": "consistency"}

    # the consistency target is part of the training state
    def extra_tensors(self):
        return {f"target.{k}": v for k, v in self.target.model.state_dict().items()}

    def extra_state(self):
        return {"target_updates": self.target.updates}

    def load_extra(self, meta, tensors):
        self.target.model.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")})
        self.target.updates = int(meta["extra_state"]["target_updates"])
