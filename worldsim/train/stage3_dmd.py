"""Stage 3: asymmetric distribution-matching distillation (DMD) with self-rollout.

Boundary: real clips (their first ``rollout.context`` frames and their recorded actions) + the
stage-2 student + the stage-0 teacher in, ``final.safetensors`` (role ``student``, stage 3: the
generator's EMA, the model we ship) out.

Each step (RECIPE.md, "Stage 3"; Self-Forcing / DMD2):
  1. Self-rollout: the generator continues K real context frames for ``rollout.frames`` frames under
     the clip's recorded actions, from its own KV cache, as the engine does at inference
     (``self_rollout``: a random exit step per chunk, gradient only through that step of each chunk,
     cache refreshes under no_grad). ``rollout.frames`` may exceed ``rollout.window``: the
     rolling cache with sink frames then behaves as in endless play, which is what teaches the
     student to stay stable there.
  2. Scoring window: the teacher saw clips of ``score_len`` frames (default: its training clip);
     a longer rollout is scored on a random window of that length. Real context frames inside the
     window stay clean (s = 0); generated frames are noised to one level per sample,
     ``s = clamp(shift(u), min_level, max_level)``.
  3. Generator (every ``gen_every`` steps): real score = frozen bidirectional teacher with action
     guidance ``x0_real = u + w (c - u)`` (``w = real_guidance``; u: all actions "no action"),
     fake score = the online bidirectional model (conditional). ``g = (x0_fake - x0_real) /
     mean|x - x0_real|`` (per sample, over the generated frames), loss ``0.5 * MSE(x, stopgrad(x - g))``,
     whose gradient w.r.t. x is ``g / numel``: descending it moves samples from where the fake score
     says they are towards where the real score says real data is.
  4. Fake score (every step): flow-matching v-loss (as stage 0) on the detached generated frames,
     context clean, so it keeps tracking the generator's current distribution.
AdamW betas (0, 0.999) for both (``optim.betas``), fake-score lr = ``fake_lr_ratio`` x generator lr,
EMA on the generator (``optim.ema_decay``).

Beside distribution matching (``dmd_weight``; 0 reads no teacher and trains no fake score), the
generator may learn from two more terms, each added to its loss with its weight: DMD2's adversarial
term (``adversarial``: a ``FrameCritic`` tells the game's real next frames from the rollout's and
updates every step, non-saturating loss with R1) and stage 1's teacher forcing on the real clip
(``tf_weight``), an anchor to the recorded game. ``rollout.stream`` makes each rollout continue the
previous one's KV cache (``RolloutState``, part of the checkpoint) for long play. ``refiner_only``
trains only a student's pixel refiner: the terms then shape how the frame is drawn at full resolution,
and cannot move what the transformer decided (where the sprites go under a key).

The generator's architecture is the stage-2 checkpoint's and the scores' the teacher's, so there is
no ``model`` section; the data section's ``clip_len`` is replaced by ``rollout.context + rollout.frames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worldsim.engine import EngineConfig
from worldsim.engine.schedule import add_noise, shift_sigma, student_sigmas
from worldsim.errors import ConfigError
from worldsim.train.data import DataConfig
from worldsim.train.discriminator import FrameCritic, critic_loss, critic_pairs, generator_adv_loss
from worldsim.train.self_rollout import RolloutState, self_rollout
from worldsim.train.stage1_teacher_forcing import tf_forward
from worldsim.train.stage2_consistency import StudentStageMixin, fewstep_engine
from worldsim.train.trainer import (OptimConfig, RunConfig, Trainer, bell_weight, check_same_game, load_stage_output,
                                    masked_mean, v_loss)


def dmd_optim() -> OptimConfig:
    return OptimConfig(lr=2e-5, warmup=0, betas=[0.0, 0.999], weight_decay=0.0, grad_clip=1.0, batch_size=4,
                       steps=500, ema_decay=0.99)


@dataclass
class Stage3Init:
    student: str = ""  # stage-2 final.safetensors (a stage-1 student, or a stage-3 one to continue): the generator
    teacher: str = ""  # stage-0 final.safetensors: the real score, and the fake score's initialisation (dmd_weight > 0)


@dataclass
class AdversarialConfig:
    """DMD2's adversarial term: a critic learns to tell the game's next frames from the student's, and the
    student learns to fool it. It sees real data, so it can take the student past its teacher."""

    weight: float = 0.0  # generator loss weight of the critic's verdict (0: plain DMD)
    width: int = 32  # channels of the critic's first layer
    lr_ratio: float = 1.0  # critic lr = ratio x generator lr
    r1: float = 1.0  # R1 penalty on real frames
    critic_warmup: int = 0  # steps the critic trains alone first, so the generator's first updates follow a verdict


@dataclass
class RolloutConfig:
    context: int = 2  # K real frames every rollout starts from (prefilled into the cache)
    frames: int = 6  # generated frames per rollout (more than window: rolling cache + sinks, as in endless play)
    chunk: int = 1  # frames per chunk (as the engine's chunk)
    steps: int = 2  # few-step list student_sigmas(steps, shift)
    # the engine's sampler the student plays with: "renoise" (a few-step student) or "euler" (a stage-1
    # student, whose steps follow the noise it implies)
    sampler: str = "renoise"
    shift: float = 3.0
    window: int = 8  # KV cache window (frames)
    sink: int = 1  # sink frames
    context_sigma: float = 0.0  # level of the cache-refresh forward (the engine's context_sigma)
    # > 0: each rollout continues the previous step's (same KV cache, its own last frames as context, the
    # next clip's recorded keys) until the stream has played this many frames, then starts again from
    # real frames: the student trains on the states of long play, where drift shows, at the cost of short
    # rollouts. 0: every rollout starts from real frames.
    stream: int = 0


@dataclass
class Stage3Config:
    data: DataConfig = field(default_factory=DataConfig)
    init: Stage3Init = field(default_factory=Stage3Init)
    optim: OptimConfig = field(default_factory=dmd_optim)  # the generator's; AdamW betas (0, 0.999)
    run: RunConfig = field(default_factory=RunConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    dmd_weight: float = 1.0  # 0: no distribution matching (no teacher, no fake score): the critic alone
    # > 0: the generator also keeps stage 1's teacher forcing on the real clip, at the levels its few-step
    # sampler decides at (x0 L2): an anchor to the recorded game that the adversarial term alone lacks
    tf_weight: float = 0.0
    # true: the generator trains only its pixel refiner (model.refine, from stage 1's refiner_only); the
    # transformer, and with it what moves where under which key, stays as it was
    refiner_only: bool = False
    gen_every: int = 5  # generator update every N steps; the fake score and the critic update every step
    fake_lr_ratio: float = 5.0  # fake-score lr = ratio x generator lr
    real_guidance: float = 3.0  # action guidance w of the real score, u + w (c - u)
    shift: float = 3.0  # shift of the DMD noise level
    min_level: float = 0.02
    max_level: float = 0.98
    score_len: int = 0  # frames the score models see at once (0: the teacher's training clip length)
    min_sigma: float = 0.05  # fake-score v-loss (as stage 0)
    bell_width: float = 0.3
    engine: EngineConfig = field(default_factory=fewstep_engine)  # sample videos and output engine settings


def guided(net, x, sigma, acts, w: float, no_action: int) -> torch.Tensor:
    c = net(x, sigma, acts).float()
    if w == 1.0:
        return c
    u = net(x, sigma, torch.full_like(acts, no_action)).float()
    return u + w * (c - u)


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, gen_mask: torch.Tensor) -> torch.Tensor:
    """``(x0_fake - x0_real) / mean|x - x0_real|`` with the mean per sample over the generated frames
    (``gen_mask`` (B, L) bool); NaN/inf -> 0."""
    m = gen_mask[:, :, None, None, None].float()  # (B, L, 1, 1, 1)
    per_frame = x[0, 0].numel()
    norm = ((x - x0_real).abs() * m).sum((1, 2, 3, 4)) / (m.sum((1, 2, 3, 4)) * per_frame).clamp_min(1)  # (B,)
    g = (x0_fake - x0_real) / norm.clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return torch.nan_to_num(g)


class DMDTrainer(StudentStageMixin, Trainer):
    stage, stage_name, role = 3, "stage3_dmd", "student"

    @property
    def clip_len(self) -> int:
        return self.cfg.rollout.context + self.cfg.rollout.frames

    def setup(self) -> None:
        cfg = self.cfg
        r, adv = cfg.rollout, cfg.adversarial
        if r.context < 1 or r.frames < 1:
            raise ValueError("rollout.context and rollout.frames must be >= 1")
        if r.stream and (r.stream < r.frames or r.frames < r.context):
            raise ValueError(f"rollout.stream {r.stream} needs rollout.stream >= rollout.frames >= rollout.context "
                             f"(got frames {r.frames}, context {r.context}); or rollout.stream=0")
        if min(cfg.dmd_weight, adv.weight, cfg.tf_weight) < 0 or not (cfg.dmd_weight > 0 or adv.weight > 0):
            raise ValueError(f"stage 3 needs dmd_weight > 0 or adversarial.weight > 0, and no negative weight (got "
                             f"dmd_weight {cfg.dmd_weight}, adversarial.weight {adv.weight}, tf_weight {cfg.tf_weight})")
        # A stage-1 student starts the generator directly (its few-step sampling is then the renoise sampler's);
        # a stage-3 student is accepted too: DMD continued with another rollout (e.g. longer than the cache).
        gen, gmeta = load_stage_output(cfg.init.student, role="student", stages=(1, 2, 3),
                                       what="the stage-2 few-step student (or a stage-1 or stage-3 one)",
                                       needed_by="stage 3 (init.student)",
                                       hint="the stage-2 output, e.g. OUT/stage2_consistency/final.safetensors")
        check_same_game(gmeta, self.data, cfg.init.student, "stage 3")
        if not gen.cfg.causal:
            raise ValueError("stage 3 needs a causal student")
        if cfg.refiner_only:
            if not gen.cfg.refine:
                raise ConfigError(f"stage 3: refiner_only=true needs a student with a pixel refiner, and "
                                  f"{cfg.init.student} has none: add one with stage 1 (model.refine, refiner_only=true)")
            gen.train_refiner_only()
        if r.window < r.chunk:
            raise ValueError(f"rollout.window {r.window} must be >= rollout.chunk {r.chunk}")
        if r.sampler not in ("renoise", "euler"):
            raise ConfigError(f"stage 3: rollout.sampler '{r.sampler}' is not 'renoise' or 'euler'")
        self.init_info = {"from": f"stage{int(gmeta.get('stage', 2))}", "student": gmeta["_path"],
                          "student_hash": gmeta["_hash"]}
        if cfg.refiner_only:
            self.init_info["refiner_only"] = True
        self.score_len = cfg.score_len or self.clip_len
        if cfg.dmd_weight > 0:
            real, tmeta = load_stage_output(cfg.init.teacher, role="teacher", stages=(0,), what="the stage-0 teacher",
                                            needed_by="stage 3 (init.teacher)",
                                            hint="the stage-0 output, e.g. OUT/stage0_teacher/final.safetensors")
            check_same_game(tmeta, self.data, cfg.init.teacher, "stage 3")
            if real.cfg.causal:
                raise ValueError("stage 3 needs a bidirectional teacher (the real score)")
            fake = type(real)(real.cfg)
            fake.load_state_dict(real.state_dict())
            self.score_len = cfg.score_len or int(tmeta.get("train_config", {}).get("data", {}).get("clip_len", 0)) \
                or self.clip_len
            self.add_net("real", real, trainable=False)
            self.init_info.update(teacher=tmeta["_path"], teacher_hash=tmeta["_hash"])
        self.add_net("model", gen, ema_decay=cfg.optim.ema_decay)
        if cfg.dmd_weight > 0:
            self.add_net("fake", fake, lr=cfg.optim.lr * cfg.fake_lr_ratio)
        if adv.weight > 0:
            critic = FrameCritic(gen.cfg.num_actions, adv.width, gen.cfg.resolution)
            self.add_net("critic", critic, lr=cfg.optim.lr * adv.lr_ratio)

    # -- pieces (the tests call them one by one) ---------------------------------------------
    def rollout(self, ctx, prev, gen_acts, grad: bool, exit_step, state=None, keep_state: bool = False):
        r = self.cfg.rollout
        H = gen_acts.shape[1]
        noise = self.randn_b(H, *ctx.shape[2:])  # (B, H, 3, R, R)
        # (B, steps, H, 3, R, R); the Euler sampler's steps follow the model's own noise instead
        renoise = None if r.sampler == "euler" else self.randn_b(r.steps, H, *ctx.shape[2:])
        return self_rollout(self.nets["model"], ctx, prev, gen_acts, chunk=r.chunk, steps=r.steps, shift=r.shift,
                            window=r.window, sink=r.sink, exit_step=exit_step, noise=noise, renoise=renoise,
                            grad=grad, context_sigma=r.context_sigma, autocast=self.autocast, state=state,
                            keep_state=keep_state, sampler=r.sampler)

    # -- streams: rollouts that go on where the last one stopped -------------------------------
    stream: RolloutState | None = None
    stream_frames = 0  # frames the current stream has played
    stream_ctx: torch.Tensor | None = None  # its last K frames (B, K, 3, R, R) and their actions (B, K)
    stream_acts: torch.Tensor | None = None

    def rollout_context(self, x0, acts):
        """The context of this step's rollout: the real clip's first K frames, or the running stream's last
        K frames. Returns (context frames, their actions, the stream state or None)."""
        r = self.cfg.rollout
        K = r.context
        if r.stream > 0 and self.stream is not None and self.stream_frames + r.frames <= r.stream:
            return self.stream_ctx, self.stream_acts, self.stream
        self.stream, self.stream_frames = None, 0
        return x0[:, :K], acts[:, :K], None

    def extra_state(self):
        if self.stream is None:
            return {"stream": None}
        return {"stream": {**self.stream.meta(), "played": self.stream_frames}}

    def extra_tensors(self):
        if self.stream is None:
            return {}
        return {**self.stream.tensors("stream."), "stream.ctx": self.stream_ctx, "stream.acts": self.stream_acts}

    def load_extra(self, meta, tensors):
        st = meta.get("extra_state", {}).get("stream")
        if not st:
            return
        r = self.cfg.rollout
        self.stream = RolloutState.restore(self.nets["model"], st, tensors, "stream.", chunk=r.chunk, window=r.window,
                                           sink=r.sink, device=self.device)
        self.stream_frames = int(st["played"])
        self.stream_ctx = tensors["stream.ctx"].to(self.device).clone()
        self.stream_acts = tensors["stream.acts"].to(self.device).clone()

    def score_window(self, full: torch.Tensor, acts: torch.Tensor):
        """A window of ``score_len`` frames of the clip (B, L, ...) and its generated-frame mask (B, L)."""
        K = self.cfg.rollout.context
        L = full.shape[1]
        gen = torch.arange(L, device=full.device) >= K  # (L,)
        if L > self.score_len:
            w = self.randint(L - self.score_len + 1)
            full, acts, gen = full[:, w:w + self.score_len], acts[:, w:w + self.score_len], gen[w:w + self.score_len]
        return full, acts, gen[None].expand(full.shape[0], -1)

    def levels(self, gen_mask) -> torch.Tensor:
        c = self.cfg
        s = shift_sigma(self.rand_b(), c.shift).clamp(c.min_level, c.max_level)  # (B,)
        return torch.where(gen_mask, s[:, None], torch.zeros_like(s)[:, None])  # (B, L): context clean

    def generator_loss(self, full, acts, gen_mask):
        """DMD loss of the clip ``full`` (B, L, ...) (generated frames carry the generator's graph)."""
        c = self.cfg
        sigma = self.levels(gen_mask)
        eps = self.randn_b(*full.shape[1:])
        no_action = self.nets["real"].cfg.num_actions
        with torch.no_grad():
            x_t = add_noise(full.detach(), eps, sigma)
            with self.autocast():
                x0_real = guided(self.nets["real"], x_t, sigma, acts, c.real_guidance, no_action)
                x0_fake = self.nets["fake"](x_t, sigma, acts).float()
            g = dmd_gradient(full.detach().float(), x0_real, x0_fake, gen_mask)
        self.cost["teacher_nfe"] += c.optim.batch_size * (1 if c.real_guidance == 1.0 else 2)
        m = gen_mask[:, :, None, None, None].float()
        target = (full - g).detach()
        per = 0.5 * (full.float() - target).pow(2) * m  # only generated frames
        loss = per.sum() / (m.sum() * full[0, 0].numel()).clamp_min(1)
        return loss, {"dmd_grad_abs": float(g.abs().mean())}

    def fake_loss(self, full, acts, gen_mask):
        c = self.cfg
        x = full.detach()
        s = shift_sigma(self.rand_b(), c.shift)  # (B,)
        sigma = torch.where(gen_mask, s[:, None], torch.zeros_like(s)[:, None])
        eps = self.randn_b(*x.shape[1:])
        with self.autocast():
            x0_hat = self.nets["fake"](add_noise(x, eps, sigma), sigma, acts)
        per = v_loss(x0_hat, x, sigma, c.min_sigma) * bell_weight(sigma, c.bell_width)  # (B, L)
        return masked_mean(per, gen_mask.float())

    def teacher_forcing_loss(self, x0, acts):
        """x0 L2 of teacher forcing (stage 1's forward, chunk 1, real context) on the real clip, each frame at
        one of the student's step levels."""
        r = self.cfg.rollout
        levels = torch.tensor(student_sigmas(r.steps, r.shift), device=x0.device)
        sigma = levels[(self.rand_b(x0.shape[1]) * len(levels)).long().clamp_max(len(levels) - 1)]  # (B, L)
        x_t = add_noise(x0, self.randn_b(*x0.shape[1:]), sigma)
        with self.autocast():
            x0_hat = tf_forward(self.nets["model"], x0, torch.zeros_like(sigma), x_t, sigma, acts, 1, anchor_src=x0)
        return (x0_hat.float() - x0).pow(2).mean()

    def train_step(self, batch):
        c, r = self.cfg, self.cfg.rollout
        x0, acts = self.model_inputs(batch)  # (B, K+H, 3, R, R), (B, K+H) actions that produced each frame
        K = r.context
        gen_step = self.step % c.gen_every == 0 and self.step >= c.adversarial.critic_warmup
        n_chunks = -(-r.frames // r.chunk)
        exits = [self.randint(r.steps) for _ in range(n_chunks)]  # one exit step per chunk (same on every rank)
        ctx, ctx_acts, state = self.rollout_context(x0, acts)
        fresh = state is None
        gen, state = self.rollout(ctx, ctx_acts, acts[:, K:], grad=gen_step, exit_step=exits, state=state,
                                  keep_state=True)  # (B, H, ...)
        run_acts = torch.cat([ctx_acts, acts[:, K:]], 1)  # the actions of the rolled-out clip
        if r.stream > 0:
            self.stream, self.stream_frames = state, self.stream_frames + r.frames
            self.stream_ctx, self.stream_acts = gen[:, -K:].detach().clamp(-1, 1), run_acts[:, -K:]
        # forwards per chunk: exit + 1 denoising, 1 cache refresh (each over the chunk's frames)
        self.cost["student_nfe"] += c.optim.batch_size * sum(
            min(r.chunk, r.frames - j * r.chunk) * (e + 2) for j, e in enumerate(exits))
        full = torch.cat([ctx, gen], 1)  # (B, K+H, 3, R, R)
        metrics = {}
        dmd = c.dmd_weight > 0
        if dmd:
            full_w, acts_w, gen_mask = self.score_window(full, run_acts)
        if gen_step:
            loss_g = torch.zeros((), device=full.device)
            if dmd:
                loss_dmd, extra = self.generator_loss(full_w, acts_w, gen_mask)
                loss_g = loss_g + c.dmd_weight * loss_dmd
                metrics.update(extra, dmd_loss=float(loss_dmd.detach()))
            if c.tf_weight > 0:
                loss_tf = self.teacher_forcing_loss(x0, acts)
                loss_g = loss_g + c.tf_weight * loss_tf
                metrics["tf_loss"] = float(loss_tf.detach())
            if c.adversarial.weight > 0:
                with self.autocast():
                    loss_adv = generator_adv_loss(self.nets["critic"], critic_pairs(full, run_acts, K))
                loss_g = loss_g + c.adversarial.weight * loss_adv.float()
                metrics["adv_loss"] = float(loss_adv.detach())
            metrics.update(gen_loss=float(loss_g.detach()), gen_grad_norm=self.optimize("model", loss_g))
        if dmd:
            loss_f = self.fake_loss(full_w, acts_w, gen_mask)
            metrics.update(loss=float(loss_f.detach()), fake_grad_norm=self.optimize("fake", loss_f))
        if c.adversarial.weight > 0:
            # the critic in float32: the R1 penalty's double backward is where bf16 loses it
            loss_c, extra = critic_loss(self.nets["critic"], critic_pairs(x0, acts, K),
                                        critic_pairs(full.detach(), run_acts, K), c.adversarial.r1)
            metrics.update(extra, critic_loss=float(loss_c.detach()), critic_grad_norm=self.optimize("critic", loss_c))
            metrics.setdefault("loss", float(loss_c.detach()))
        if fresh:
            with torch.no_grad():  # how far a rollout from real frames drifts from the recorded ones (health figure)
                metrics["rollout_mse_real"] = float((gen.detach() - x0[:, K:]).pow(2).mean())
        return metrics

    def output_meta(self):
        meta = super().output_meta()
        meta["rollout"] = {"context": self.cfg.rollout.context, "frames": self.cfg.rollout.frames,
                           "window": self.cfg.rollout.window, "sink": self.cfg.rollout.sink}
        return meta
