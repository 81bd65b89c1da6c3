"""Stage 1: teacher forcing, the causal (block-causal) student trained as a multi-step diffusion model.

Boundary: real clips (+ optionally the stage-0 teacher to initialise from) in, ``final.safetensors``
(role ``student``, stage 1: a multi-step causal model) out; stage 2 distils it to few steps.

The sequence is ``[clean | noisy]`` (RECIPE.md, Masks): the clean half holds the real frames at
s = 0 (or a small context noise), the noisy half the same frames noised with ONE level per chunk;
both halves sit at the same frame positions (``frame_pos = arange(T).repeat(2)``); the mask
``teacher_forcing_frame_mask(T, C)`` lets noisy chunk i see clean chunks < i and itself, so each
noisy chunk is predicted from exactly the context a KV cache holds at inference (the tests check
the two agree). Only the noisy half is in the loss: the v-loss with a bell-shaped timestep weight.

Chunk sizes: each batch draws its chunk size from ``chunks`` (e.g. [1, 3]), so one student serves
frame-wise and chunk-wise inference.

Initialisation from the teacher "where shapes allow": when the width-defining fields (resolution,
patch, dim, heads, kv_heads, mlp_ratio, num_actions) match and the student is not deeper, every
tensor is copied, blocks taken evenly spaced from the teacher's (the adaLN rows with them); the
bidirectional weights then learn the causal mask. Otherwise the student starts from scratch and the
output metadata says why (``init``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from worldsim.engine import EngineConfig
from worldsim.errors import ConfigError
from worldsim.engine.schedule import add_noise, shift_sigma
from worldsim.model import ModelConfig, WorldDiT
from worldsim.model.dit import ACTION_INIT_STD, anchor_frames, expand_anchor_history, teacher_forcing_frame_mask
from worldsim.train.data import DataConfig
from worldsim.train.stage0_teacher import drop_actions
from worldsim.train.trainer import (OptimConfig, RunConfig, Trainer, bell_weight, check_same_game, load_stage_output,
                                    v_loss)

WIDTH_FIELDS = ("resolution", "channels", "patch", "dim", "heads", "kv_heads", "mlp_ratio", "num_actions")


def student_model_config() -> ModelConfig:
    return ModelConfig(resolution=32, patch=4, dim=64, depth=4, heads=2, kv_heads=2, num_actions=6, causal=True, chunk=1)


def multistep_engine() -> EngineConfig:
    return EngineConfig(chunk=1, steps=16, sampler="euler", shift=3.0, window=8, sink=1)


@dataclass
class Stage1Init:
    teacher: str = ""  # stage-0 final.safetensors to initialise from ('' : from scratch)
    # or a stage-1 output to continue from (final.safetensors, a shipped file, an average): the same model
    # config, except that temporal_every may differ and anchor_history may grow
    student: str = ""
    # with init.student: re-draw the action embedding at ACTION_INIT_STD (seeded by run.seed), for a
    # student that learned to ignore its keys from the old 0.02 start (assets/README.md)
    redraw_actions: bool = False
    # with init.student: accept a student of another frame period (e.g. frameskip 4 continued on frameskip 2
    # data): its drawing carries over and it learns the new game speed; the output records the data's period
    retime: bool = False


@dataclass
class Stage1Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=student_model_config)  # the causal student (causal=true, chunk)
    init: Stage1Init = field(default_factory=Stage1Init)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    chunks: list[int] = field(default_factory=lambda: [1])  # chunk size per batch, drawn from this list
    shift: float = 3.0  # timestep shift of the training levels (the engine's shift)
    context_sigma: float = 0.0  # clean half noised to a level in [0, context_sigma] per sample (0: clean)
    # Anchored students: the anchor frames noised to a level in [0, anchor_noise] per sample (0: clean). In
    # free play the anchors are the student's own outputs, with its errors: noised anchors teach it not to
    # copy them forward (the shipped Boxing student: 0.3).
    anchor_noise: float = 0.0
    # Extra loss weight near the pixels that moved between the two frames before (1 + motion_weight
    # there). Why: an object of a few pixels is a rounding error of the frame's MSE; Pong's ball (about 2
    # of 4,096 pixels at 64x64) is left out of every frame under the plain loss. 0: the plain loss.
    motion_weight: float = 0.0
    # Train only the pixel refiner (model.refine), the rest of a continued student frozen. Why: a refiner
    # added to a trained student learns its few-pixel corrections at a rate of its own (optim.lr ~3e-3),
    # which would throw the trained transformer about, and what the student draws and how it follows the
    # keys stay as they were; a step costs about half as much with no gradients through the transformer.
    refiner_only: bool = False
    action_dropout: float = 0.1  # enables action guidance u + w (c - u) in stage 2
    min_sigma: float = 0.05
    bell_width: float = 0.3
    engine: EngineConfig = field(default_factory=multistep_engine)  # sample videos and the output's engine settings


def tf_inputs(clean: torch.Tensor, clean_sigma: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor,
              acts: torch.Tensor, chunk: int, anchor_src: torch.Tensor | None = None, history: int = 1):
    """The teacher-forcing call: ``[clean | noisy]`` (B, 2T, ...), levels (B, 2T), actions (B, 2T), and the
    keywords ``frame_pos`` (2T,), ``frame_mask`` (2T, 2T) and ``anchor`` (B, 2T, ...): both halves of
    frame i are anchored on the clean frame before i's chunk, as the engine anchors a generated chunk and
    its cache refresh. ``anchor_src``: the clean frames the anchors come from (default ``clean``; give
    the un-noised frames when ``clean`` is lightly noised context). ``history``: the model's
    ``anchor_history``."""
    T = clean.shape[1]
    x = torch.cat([clean, noisy], 1)  # (B, 2T, 3, R, R)
    s = torch.cat([clean_sigma, sigma], 1)  # (B, 2T)
    a = torch.cat([acts, acts], 1)  # (B, 2T)
    anc = anchor_frames(clean if anchor_src is None else anchor_src, chunk, history=history)  # (B, T, 3h, R, R)
    kw = {"frame_pos": torch.arange(T).repeat(2),  # host positions: rotations memoised
          "frame_mask": teacher_forcing_frame_mask(T, chunk, device=x.device),
          "anchor": torch.cat([anc, anc], 1)}
    return x, s, a, kw


def tf_forward(net, clean, clean_sigma, noisy, sigma, acts, chunk: int, anchor_src=None) -> torch.Tensor:
    """x0 prediction of the noisy half (B, T, 3, R, R) given clean context (teacher forcing)."""
    T = clean.shape[1]
    x, s, a, kw = tf_inputs(clean, clean_sigma, noisy, sigma, acts, chunk, anchor_src, net.cfg.anchor_history)
    return net(x, s, a, **kw)[:, T:]


def motion_weights(x0: torch.Tensor, weight: float, threshold: float = 0.1, reach: int = 3) -> torch.Tensor:
    """Per-pixel loss weights (B, T, 1, H, W): 1 + ``weight`` within ``reach`` pixels of where frame t-1
    differs from frame t-2 by more than ``threshold`` in some channel (frames in [-1, 1]); 1 on a clip's
    first two frames. The weight depends on the frames before only, never on the frame predicted, so the
    loss's minimiser stays the conditional mean: it spends the model's effort where things move without
    rewarding it for drawing moving things where none are (a weight on the target's own changes does)."""
    B, T, _, H, W = x0.shape
    near = x0.new_zeros(B, T, 1, H, W, dtype=torch.float32)
    if T > 2:
        moved = (x0[:, 1:-1] - x0[:, :-2]).abs().amax(2, keepdim=True) > threshold  # (B, T-2, 1, H, W)
        near[:, 2:] = F.max_pool2d(moved.flatten(0, 1).float(), 2 * reach + 1, stride=1, padding=reach).view(moved.shape)
    return 1.0 + weight * near


def chunk_levels(levels: torch.Tensor, chunk: int, T: int) -> torch.Tensor:
    """One level per chunk (B, ceil(T/C)) -> per frame (B, T)."""
    return levels.repeat_interleave(chunk, 1)[:, :T]


def init_blockers(student_cfg: ModelConfig, teacher_cfg: ModelConfig) -> list[str]:
    """Why the teacher's weights cannot initialise this student (empty: they can)."""
    diffs = [f"{f} {getattr(teacher_cfg, f)} != {getattr(student_cfg, f)}" for f in WIDTH_FIELDS
             if getattr(teacher_cfg, f) != getattr(student_cfg, f)]
    if student_cfg.depth > teacher_cfg.depth:
        diffs.append(f"student depth {student_cfg.depth} > teacher depth {teacher_cfg.depth}")
    return diffs


def init_from_teacher(student: WorldDiT, teacher_state: dict[str, torch.Tensor], teacher_cfg: ModelConfig) -> dict:
    """Copy the teacher's weights into ``student`` where shapes allow; returns what was done."""
    sc = student.cfg
    diffs = init_blockers(sc, teacher_cfg)
    if diffs:
        return {"from": "scratch", "reason": "teacher shapes differ: " + "; ".join(diffs)}
    Dt, Ds, D = teacher_cfg.depth, sc.depth, sc.dim
    pick = [round(i * (Dt - 1) / max(Ds - 1, 1)) for i in range(Ds)] if Ds > 1 else [Dt - 1]
    new = {}
    for k, v in student.state_dict().items():
        if k.startswith(("anchor_embed.", "refiner.")) and k not in teacher_state:
            new[k] = v  # an anchored student's own input layer or pixel refiner: the teacher has none
        elif k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            new[k] = teacher_state[f"blocks.{pick[int(i)]}.{rest}"]
        elif k.startswith("ada.1."):
            t = teacher_state[k].view(6 * Dt + 2, D, *teacher_state[k].shape[1:])
            rows = [6 * j + r for j in pick for r in range(6)] + [6 * Dt, 6 * Dt + 1]
            new[k] = t[rows].reshape(v.shape)
        else:
            new[k] = teacher_state[k]
    student.load_state_dict(new)
    return {"from": "teacher", "teacher_blocks": pick}


class TeacherForcingTrainer(Trainer):
    stage, stage_name, role = 1, "stage1_teacher_forcing", "student"

    def setup(self) -> None:
        cfg = self.cfg
        if not cfg.model.causal:
            raise ValueError("stage 1 trains the causal student: set model.causal=true")
        if not cfg.chunks or min(cfg.chunks) < 1:
            raise ValueError("chunks must be a non-empty list of sizes >= 1, e.g. [1, 3]")
        torch.manual_seed(cfg.run.seed)
        student = WorldDiT(cfg.model)
        self.init_info = {"from": "scratch", "reason": "no init.teacher given"}
        if cfg.init.redraw_actions and not cfg.init.student:
            raise ConfigError("stage 1: init.redraw_actions=true re-draws a continued student's action rows; "
                              "give init.student too (a fresh student already starts at that scale)")
        if cfg.init.teacher and cfg.init.student:
            raise ConfigError("stage 1: give init.teacher (start from the teacher) or init.student (continue a "
                              "stage-1 student), not both")
        if cfg.anchor_noise < 0 or (cfg.anchor_noise > 0 and not cfg.model.anchor):
            raise ConfigError(f"stage 1: anchor_noise={cfg.anchor_noise} needs model.anchor=true and a level >= 0")
        if cfg.motion_weight < 0:
            raise ConfigError(f"stage 1: motion_weight={cfg.motion_weight} must be >= 0 (0: the plain loss)")
        if cfg.init.student:
            prev, meta = load_stage_output(cfg.init.student, role="student", stages=(1,), what="a stage-1 student",
                                           needed_by="stage 1 (init.student)",
                                           hint="a stage-1 output, e.g. OUT/stage1_teacher_forcing/final.safetensors")
            check_same_game(meta, self.data, cfg.init.student, "stage 1", same_period=not cfg.init.retime)
            # temporal_every may change: the weights are the same shapes, only which blocks attend
            # across frames differs (fewer temporal blocks: a cheaper student fine-tuned from this one);
            # so may anchor_history grow: the added anchor frames' weights start at zero (same function);
            # and a pixel refiner may be added (model.refine): its last layer starts at zero (same function)
            grown = ("temporal_every", "anchor_history", "refine") + (("refine_noisy",) if not prev.cfg.refine else ())
            if dataclasses.replace(prev.cfg, **{k: getattr(cfg.model, k) for k in grown}) != cfg.model or \
                    cfg.model.anchor_history < prev.cfg.anchor_history or \
                    prev.cfg.refine not in (0, cfg.model.refine):
                raise ConfigError(f"stage 1: init.student '{cfg.init.student}' has another model config than "
                                  f"model.* ({prev.cfg} vs {cfg.model}); set model.* to match it (only "
                                  "temporal_every may differ, anchor_history may grow, and a student without a "
                                  "refiner may get one: model.refine)")
            state = prev.state_dict()
            if prev.cfg.anchor_history != cfg.model.anchor_history:
                state = expand_anchor_history(state, cfg.model, prev.cfg.anchor_history)
            if prev.cfg.refine != cfg.model.refine:  # the new refiner's own initial weights
                state.update({k: v for k, v in student.state_dict().items() if k.startswith("refiner.")})
            student.load_state_dict(state)
            self.init_info = {"from": "stage1", "student": meta["_path"], "student_hash": meta["_hash"]}
            for key in grown:
                if getattr(prev.cfg, key) != getattr(cfg.model, key):
                    self.init_info[key] = [getattr(prev.cfg, key), getattr(cfg.model, key)]
            if cfg.init.redraw_actions:
                g = torch.Generator().manual_seed(cfg.run.seed)
                with torch.no_grad():
                    w = student.action_embed.weight
                    w.copy_(torch.randn(w.shape, generator=g) * ACTION_INIT_STD)
                self.init_info["redraw_actions"] = ACTION_INIT_STD
            del prev
        if cfg.init.teacher:
            teacher, meta = load_stage_output(cfg.init.teacher, role="teacher", stages=(0,), what="the stage-0 teacher",
                                              needed_by="stage 1 (init.teacher)",
                                              hint="the stage-0 output, e.g. OUT/stage0_teacher/final.safetensors")
            check_same_game(meta, self.data, cfg.init.teacher, "stage 1")
            self.init_info = init_from_teacher(student, teacher.state_dict(), teacher.cfg)
            self.init_info.update({"teacher": meta["_path"], "teacher_hash": meta["_hash"]})
            del teacher
        if cfg.refiner_only:
            if not cfg.model.refine or not cfg.init.student:
                raise ConfigError("stage 1: refiner_only=true trains a pixel refiner on a continued student: set "
                                  "model.refine (e.g. 24) and init.student")
            student.train_refiner_only()
            self.init_info["refiner_only"] = True
        self.add_net("model", student, ema_decay=cfg.optim.ema_decay)

    def train_step(self, batch):
        cfg = self.cfg
        x0, acts = self.model_inputs(batch)  # (B, T, 3, R, R), (B, T)
        B, T = acts.shape
        C = cfg.chunks[self.randint(len(cfg.chunks))]
        n_chunks = -(-T // C)
        sigma = chunk_levels(shift_sigma(self.rand_b(n_chunks), cfg.shift), C, T)  # (B, T) one level per chunk
        eps = self.randn_b(*x0.shape[1:])  # (B, T, 3, R, R)
        x_t = add_noise(x0, eps, sigma)
        clean, clean_sigma = x0, torch.zeros_like(sigma)
        if cfg.context_sigma > 0:
            clean_sigma = (self.rand_b(1) * cfg.context_sigma).expand(-1, T)  # (B, T)
            clean = add_noise(x0, self.randn_b(*x0.shape[1:]), clean_sigma)
        acts = drop_actions(self, acts, cfg.action_dropout, cfg.model.num_actions)
        anchor_src = x0
        if cfg.anchor_noise > 0:
            level = (self.rand_b(1) * cfg.anchor_noise).expand(-1, T)  # (B, T)
            anchor_src = add_noise(x0, self.randn_b(*x0.shape[1:]), level)
        with self.autocast():
            x0_hat = tf_forward(self.nets["model"], clean, clean_sigma, x_t, sigma, acts, C, anchor_src=anchor_src)
        pixel_w = motion_weights(x0, cfg.motion_weight) if cfg.motion_weight > 0 else None
        loss = (v_loss(x0_hat, x0, sigma, cfg.min_sigma, pixel_w) * bell_weight(sigma, cfg.bell_width)).mean()
        gnorm = self.optimize("model", loss)
        with torch.no_grad():
            x0_mse = (x0_hat.float() - x0).pow(2).mean()
        return {"loss": float(loss.detach()), "x0_mse": float(x0_mse), "grad_norm": gnorm, "chunk": C}

    def sample_frames(self, ctx, prev, actions, seed):
        from worldsim.train.samples import engine_rollout

        return engine_rollout(self.shipped(), self.cfg.engine, ctx, prev, actions, seed, dtype=self.dtype)

    def output_meta(self):
        from worldsim.config import to_dict

        return {"engine": to_dict(self.cfg.engine), "chunks": list(self.cfg.chunks)}
