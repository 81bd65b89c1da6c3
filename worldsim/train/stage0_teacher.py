"""Stage 0: the bidirectional, action-conditioned flow-matching teacher over clips.

Boundary: real clips in, ``final.safetensors`` (role ``teacher``, stage 0) out. It is the "real
score" of stage 3 and the initialisation of stage 1 where shapes allow.

Noise levels (diffusion-forcing style, so the teacher can score clips with any mix of levels):
per sample one of
  * independent levels per frame (probability ``1 - p_uniform - p_prefix``),
  * one level for the whole clip (``p_uniform``: how stage 3 noises a rollout),
  * a clean prefix of 1..L-1 real frames at s = 0 and one level for the rest (``p_prefix``: how the
    teacher generates and scores a continuation of real context); the prefix is not in the loss.
Levels are uniform then shifted (``shift``, the engine's shift).

Loss: the network predicts x0; the velocity loss ``|v_hat - v|^2`` equals ``|x0_hat - x0|^2 / s^2``,
computed with ``max(s, min_sigma)`` (``trainer.v_loss``), times a bell-shaped timestep weight.

Action dropout: with probability ``action_dropout`` a sample's actions all become "no action", so
the teacher also models ``p(x)``; action guidance is then ``x0 = u + w (c - u)`` with ``u`` the
no-action and ``c`` the action-conditioned prediction (``w = 1``: plain conditional).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldsim.engine.schedule import add_noise, shift_sigma
from worldsim.model import ModelConfig, WorldDiT
from worldsim.train.data import DataConfig
from worldsim.train.trainer import OptimConfig, RunConfig, Trainer, bell_weight, masked_mean, v_loss


def teacher_model_config() -> ModelConfig:
    # bidirectional over the clip: no anchors, every block attends across frames (the student defaults are not its)
    return ModelConfig(resolution=32, patch=4, dim=96, depth=6, heads=2, kv_heads=2, num_actions=6, causal=False,
                       temporal_every=1, anchor=False, anchor_history=1)


@dataclass
class Stage0Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=teacher_model_config)  # bidirectional (causal=False), larger than the student
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    shift: float = 3.0  # timestep shift of the training levels (the engine's shift)
    p_uniform: float = 0.3  # one level for the whole clip
    p_prefix: float = 0.3  # clean real prefix + one level for the rest
    action_dropout: float = 0.1  # all actions of a sample -> "no action" (enables action guidance)
    min_sigma: float = 0.05  # v-loss divides by max(s, min_sigma)
    bell_width: float = 0.3  # width of the bell-shaped timestep weight
    sample_steps: int = 24  # Euler steps of the sample videos
    sample_guidance: float = 1.0  # action guidance w of the sample videos


def sample_levels(tr: Trainer, T: int, shift: float, p_uniform: float, p_prefix: float):
    """Per-frame noise levels (B, T) and the clean-context mask (B, T) for a batch of clips."""
    u_mode = tr.rand_b()  # (B,)
    s_frame = shift_sigma(tr.rand_b(T), shift)  # (B, T) independent per frame
    s_clip = shift_sigma(tr.rand_b(1), shift)  # (B, 1) one per clip
    k = 1 + (tr.rand_b() * max(T - 1, 1)).long().clamp_max(max(T - 2, 0))  # (B,) prefix length 1..T-1
    uniform = u_mode < p_uniform
    prefix = (u_mode >= p_uniform) & (u_mode < p_uniform + p_prefix) & (T > 1)
    independent = ~(uniform | prefix)
    sigma = torch.where(independent[:, None], s_frame, s_clip.expand(-1, T))  # (B, T)
    ctx = prefix[:, None] & (torch.arange(T, device=sigma.device)[None, :] < k[:, None])  # (B, T)
    sigma = sigma.masked_fill(ctx, 0.0)
    return sigma, ctx


def drop_actions(tr: Trainer, acts: torch.Tensor, p: float, no_action: int) -> torch.Tensor:
    """Replace all actions of a sample by "no action" with probability ``p`` (B, T)."""
    drop = tr.rand_b() < p  # (B,)
    return torch.where(drop[:, None], torch.full_like(acts, no_action), acts)


class TeacherTrainer(Trainer):
    stage, stage_name, role = 0, "stage0_teacher", "teacher"

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.model.causal:
            raise ValueError("stage 0 trains the bidirectional teacher: set model.causal=false")
        torch.manual_seed(cfg.run.seed)
        self.add_net("model", WorldDiT(cfg.model), ema_decay=cfg.optim.ema_decay)
        self.init_info = {"from": "scratch"}

    def train_step(self, batch):
        cfg = self.cfg
        x0, acts = self.model_inputs(batch)  # (B, T, 3, R, R), (B, T)
        B, T = acts.shape
        sigma, ctx = sample_levels(self, T, cfg.shift, cfg.p_uniform, cfg.p_prefix)
        eps = self.randn_b(*x0.shape[1:])  # (B, T, 3, R, R)
        x_t = add_noise(x0, eps, sigma)
        acts = drop_actions(self, acts, cfg.action_dropout, cfg.model.num_actions)
        net = self.nets["model"]
        with self.autocast():
            x0_hat = net(x_t, sigma, acts)  # (B, T, 3, R, R)
        per_frame = v_loss(x0_hat, x0, sigma, cfg.min_sigma) * bell_weight(sigma, cfg.bell_width)  # (B, T)
        loss = masked_mean(per_frame, (~ctx).float())
        gnorm = self.optimize("model", loss)
        with torch.no_grad():
            x0_mse = masked_mean((x0_hat.float() - x0).pow(2).mean((2, 3, 4)), (~ctx).float())
        return {"loss": float(loss.detach()), "x0_mse": float(x0_mse), "grad_norm": gnorm}

    def sample_frames(self, ctx, prev, actions, seed):
        from worldsim.engine.teacher import teacher_rollout

        return teacher_rollout(self.shipped(), ctx, prev, actions, seed, steps=self.cfg.sample_steps,
                               shift=self.cfg.shift, guidance=self.cfg.sample_guidance, dtype=self.dtype)

    def output_meta(self):
        return {"sampler": {"kind": "bidirectional-euler", "steps": self.cfg.sample_steps, "shift": self.cfg.shift}}
