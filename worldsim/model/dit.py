"""WorldDiT: a diffusion transformer over frame patches, conditioned per frame on action and noise.

Every frame carries its own noise level ``sigma`` and the action that produced it, so clean context
frames and a noisy frame can sit side by side (teacher forcing, diffusion forcing, self-rollout).
The same weights run three attention patterns:

* bidirectional over a clip (the teacher; ``causal=False``),
* block-causal with chunks of ``chunk`` frames (the student; a frame sees its own chunk and every
  earlier one),
* an explicit frame-level mask (teacher forcing's ``[clean | noisy]`` sequence).

With a ``cache`` (see ``worldsim.engine.kv_cache``) the current frames' keys and values go into
the cache's scratch area and attention runs through ``kernels.block_causal_attention``.

Anchored students (``anchor=True``): every frame also gets an *anchor*, the clean frame just before
its chunk (``anchor_frames``), embedded into its tokens. A game frame mostly repeats the previous one;
without the anchor a small student must redraw the static ring, floor and score from its cache every
frame, and that is where it loses sharpness and, in long play, the sprites. The anchor only enters the
tokens and the network draws the whole frame (as DIAMOND's frame-stacked denoiser does): nothing is
added back to the output, so the student's own small errors, which come back as its next anchor in
free play, are not integrated frame after frame. Trained with noised anchors (``anchor_noise``).

Callers always pass anchors; models without ``anchor`` ignore them (the bidirectional teacher and
score models).

With ``refine`` a ``PixelRefiner`` (``worldsim.model.refine``) corrects the head's frame at full
resolution from the noisy frame and the anchors: what one token per 8x8 patch cannot carry.

The network predicts ``x0`` (pixel-space x-prediction: the clean frame is low-dimensional next to
the noise, so predicting it directly works at large patch sizes); callers derive ``v`` from it.
Frames are (B, T, 3, H, W) floats in [-1, 1]; sigma is (B, T) in [0, 1]; actions are (B, T) ints,
``num_actions`` meaning "no action" (the first frame of an episode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import block_causal_attention
from kernels.attention import block_causal_attention_torch
from worldsim.model.refine import PixelRefiner
from worldsim.model.rope import AxialRope, rotate


@dataclass
class ModelConfig:
    resolution: int = 64  # frames are resolution x resolution RGB
    channels: int = 3
    patch: int = 8  # patch side: 64x64 frames -> 64 tokens per frame
    # Defaults are the shipped student: sized so frame-wise 2-step runs at ~60 FPS on a 2-core CPU.
    dim: int = 128  # token width
    depth: int = 6  # transformer blocks
    heads: int = 2  # query heads (head_dim = dim / heads = 64)
    kv_heads: int = 2  # < heads: grouped KV heads, a smaller cache
    mlp_ratio: float = 4.0
    num_actions: int = 18  # the game's action set; index num_actions is "no action"
    causal: bool = True  # False: bidirectional over the whole clip (teacher / score models)
    chunk: int = 1  # frames per causal chunk (1: frame-wise); the training mask uses it
    # Every k-th block attends across frames (and keeps a KV cache); the others only within their frame.
    # 2 (the shipped student): a quarter less work per frame than 1 at the same width.
    temporal_every: int = 2
    rope_theta_time: float = 1000.0
    rope_theta_space: float = 100.0
    anchor: bool = True  # students: the clean frame(s) before the chunk go into every token (anchor_frames)
    # Clean frames before the chunk that go into every token, newest first, stacked on the channels:
    # 1 the last one; 2 also the one before it, so each token sees its patch's motion at sub-patch
    # precision. Why: the player's next move depends on its last one (Boxing: from the sprite track, an
    # MLP on the key and position places it 0.82 px off one frame ahead, with the last move and key 0.58),
    # and a 128-wide student comparing 8x8 patches across frames through attention places it ~0.9 px off.
    anchor_history: int = 2
    # Hidden channels of the pixel refiner (``PixelRefiner``; 0: none): a small convolutional net at full
    # resolution that corrects the token head's frame from the noisy frame and the anchors, pixel by pixel.
    # Why: the head draws each 8x8 patch from one token, and a sprite of a pixel or two (Pong's ball, the
    # thin paddles) does not survive the token width: the student erased it even when its input showed it.
    refine: int = 0
    # Whether the refiner also sees the noisy input frame. A few-step sampler asks for the frame only at
    # high noise (2 Euler steps: levels 1 and 0.75), where the noisy frame carries little of the picture
    # and the anchors carry the sprites. false: head and anchors only (docs/training.md compares both).
    refine_noisy: bool = True

    def validate(self) -> None:
        from worldsim.errors import ConfigError

        if self.resolution % self.patch:
            raise ConfigError(f"model.resolution {self.resolution} is not a multiple of model.patch {self.patch}")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim {self.dim} is not a multiple of model.heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model.heads {self.heads} is not a multiple of model.kv_heads {self.kv_heads}")
        if (self.dim // self.heads) % 8:
            raise ConfigError(f"head dim {self.dim // self.heads} must be a multiple of 8; change model.dim or model.heads")
        if self.temporal_every < 1 or self.temporal_every > self.depth:
            raise ConfigError(f"model.temporal_every must be in [1, depth={self.depth}], got {self.temporal_every}")
        if self.anchor_history < 1 or (self.anchor_history > 1 and not self.anchor):
            raise ConfigError(f"model.anchor_history={self.anchor_history} must be >= 1, and above 1 only with "
                              "model.anchor=true (set model.anchor_history=1 for a model without anchors)")
        if self.num_actions < 1 or self.chunk < 1:
            raise ConfigError("model.num_actions and model.chunk must be >= 1")
        if self.refine < 0:
            raise ConfigError(f"model.refine={self.refine} must be >= 0 (hidden channels of the pixel refiner; 0: none)")

    @property
    def tokens_per_frame(self) -> int:
        return (self.resolution // self.patch) ** 2

    @property
    def cond_rows(self) -> int:
        """Rows of ``WorldDiT.conditioning``: 6 adaLN terms per block, 2 for the output layer, and with
        a refiner the conditioning vector itself (the refiner's per-channel bias comes from it)."""
        return 6 * self.depth + 2 + (self.refine > 0)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def is_temporal(self, block: int) -> bool:
        """Whether block ``block`` attends across frames (and so keeps a KV cache)."""
        return block % self.temporal_every == self.temporal_every - 1

    @property
    def cache_layers(self) -> int:
        return sum(self.is_temporal(i) for i in range(self.depth))


# Fields a saved model config may lack (written before they existed), with the value such a model has.
ADDED_FIELDS = {"temporal_every": 1, "anchor": False, "anchor_history": 1, "refine": 0, "refine_noisy": True}


def upgrade_model_config(saved: dict, where: str) -> dict:
    """A checkpoint's saved ``model_config`` in today's fields: absent fields get the value the model was
    built with (``ADDED_FIELDS``), and ``anchor_mode`` (removed: an anchored student has one form, the
    anchor an input only) is dropped where it changes nothing; a residual-anchored model is refused with
    the fix. ``where`` names the file in the message."""
    from worldsim.errors import CheckpointError

    cfg = {**{k: v for k, v in ADDED_FIELDS.items() if k not in saved}, **saved}
    # Without the key: written after its removal (input), or before it existed, when anchored models were
    # residual (those predate anchor_history too).
    mode = cfg.pop("anchor_mode", "input" if "anchor_history" in saved else "residual")
    if cfg["anchor"] and mode != "input":
        raise CheckpointError(f"{where}: model.anchor_mode={mode} is no longer supported (an anchored student "
                              "takes its anchor as an input only; the residual form, x0 = anchor + correction, "
                              "diverged in free play); retrain it with this version (model.anchor=true)")
    return cfg


# Initial scale of the action embedding. Measured on Boxing (2026-11-26): at DiT's usual 0.02 the
# action's share of the conditioning stayed ~0.5% through 1,800 stage-1 steps and every stage ignored
# the keys (`worldsim eval --action-response` 0.00); the same student continued with its action rows
# re-drawn at 0.5 began to move the player the pressed way within 1,300 steps (model card).
ACTION_INIT_STD = 0.5


def frame_positions(T: int, device=None) -> torch.Tensor:
    return torch.arange(T, device=device)


def block_causal_frame_mask(T: int, chunk: int, device=None) -> torch.Tensor:
    """(T, T) bool: frame i sees frame j iff chunk(j) <= chunk(i)."""
    c = torch.arange(T, device=device) // chunk
    return c[None, :] <= c[:, None]


def teacher_forcing_frame_mask(T: int, chunk: int, device=None) -> torch.Tensor:
    """(2T, 2T) bool mask over ``[clean | noisy]``: clean is block-causal among itself; noisy
    chunk i sees clean chunks < i and itself (RECIPE.md, Masks)."""
    c = torch.arange(T, device=device) // chunk
    cc = c[None, :] <= c[:, None]  # clean -> clean
    nc = c[None, :] < c[:, None]  # noisy -> clean
    nn_ = c[None, :] == c[:, None]  # noisy -> noisy
    top = torch.cat([cc, torch.zeros_like(cc)], 1)
    bottom = torch.cat([nc, nn_], 1)
    return torch.cat([top, bottom], 0)


def anchor_frames(clean: torch.Tensor, chunk: int, first: torch.Tensor | None = None, history: int = 1) -> torch.Tensor:
    """Anchors of a clip: frame i's anchor is the clean frame just before i's chunk (and, for
    ``history`` > 1, the ``history - 1`` frames before that, newest first, stacked on the channels).

    clean (B, T, C, H, W); chunks of ``chunk`` frames counted from the clip's first frame; ``first`` the
    frames before the clip, (B, C, H, W) for one or (B, k, C, H, W) oldest first; frames before those
    are zeros (nothing came before). Returns (B, T, history * C, H, W). Inference (the engine,
    self-rollout) and training (teacher forcing) both build anchors here, so a frame sees the same
    anchor whether it was generated or read from a dataset."""
    B, T = clean.shape[:2]
    pad = torch.zeros_like(clean[:, :1]).expand(-1, history, -1, -1, -1)
    if first is not None:
        first = (first[:, None] if first.dim() == 4 else first).to(clean.dtype)
        pad = torch.cat([pad, first], 1)[:, -history:]
    prev = torch.cat([pad, clean], 1)  # (B, history + T, ...): index j + history holds clean frame j
    start = (torch.arange(T, device=clean.device) // chunk) * chunk  # chunk start; anchors: start-1, start-2, ...
    if history == 1:
        return prev[:, start + history - 1]
    return torch.cat([prev[:, start + history - 1 - k] for k in range(history)], 2)


def chunk_anchor(recent: torch.Tensor, n: int, history: int) -> torch.Tensor:
    """The anchor of each of the next chunk's ``n`` frames, (B, n, history * C, H, W), from ``recent``
    (B, k, C, H, W), the clean frames just before the chunk, oldest first (``keep_recent``); where
    fewer than ``history`` came before, zeros. The same as ``anchor_frames`` gives a clip's frames."""
    k = recent.shape[1]
    frames = [recent[:, k - 1 - j] if j < k else torch.zeros_like(recent[:, 0]) for j in range(history)]
    return (frames[0] if history == 1 else torch.cat(frames, 1))[:, None].expand(-1, n, -1, -1, -1)


def keep_recent(recent: torch.Tensor | None, frames: torch.Tensor, history: int) -> torch.Tensor:
    """The last ``history`` clean frames, oldest first, after ``frames`` (B, T, C, H, W) came."""
    if recent is None or frames.shape[1] >= history:  # every frame step of a one-anchor model: no copy
        return frames[:, -history:]
    return torch.cat([recent, frames.to(recent.dtype)], 1)[:, -history:]


def expand_anchor_history(state: dict, cfg: "ModelConfig", old_history: int) -> dict:
    """A state dict of a student with ``old_history`` anchor frames, made loadable into one with
    ``cfg.anchor_history`` more: the added frames' weights in ``anchor_embed`` start at zero, so the
    model computes exactly what it did and learns to use them from there."""
    w = state["anchor_embed.weight"]  # (dim, p*p*C*old): features ordered (pixel, channel), channels last
    pp, c = cfg.patch * cfg.patch, cfg.channels
    if w.shape[1] != pp * c * old_history or cfg.anchor_history < old_history:
        raise ValueError(f"anchor_embed.weight {tuple(w.shape)} is not {old_history} frame(s) of {c}x{cfg.patch}x"
                         f"{cfg.patch}, or {cfg.anchor_history} < {old_history}")
    new = w.new_zeros(w.shape[0], pp, c * cfg.anchor_history)
    new[:, :, :c * old_history] = w.view(w.shape[0], pp, c * old_history)
    return {**state, "anchor_embed.weight": new.view(w.shape[0], -1)}


def param_slots(*modules: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, name) of every parameter under ``modules``: read through these, a parameter replaced by
    assignment is seen as well as one changed in place, at a fraction of ``parameters()``'s cost."""
    return [(m, n) for mod in modules for m in mod.modules() for n, p in m._parameters.items() if p is not None]


def weights_stamp(slots: list[tuple[nn.Module, str]]) -> tuple:
    """Identity and version of each parameter: changes with any load, optimiser step, cast or move
    (~25 us for the default model, against ~130 us through ``parameters()``: it runs every forward)."""
    return tuple((m._parameters[n].data_ptr(), m._parameters[n]._version) for m, n in slots)


def modulate(x, shift, mult):
    """adaLN: ``x * mult + shift`` in one op (``mult`` is DiT's ``1 + scale``)."""
    return torch.addcmul(shift, x, mult)


def norm_modulate(x, shift, mult):
    """adaLN after a LayerNorm: ``modulate(layer_norm(x), shift, mult)``, x (B, T, N, D), the terms
    (B, T, 1, D). With one frame in all (play: B = T = 1) the terms are the LayerNorm's own weight and
    bias, one op instead of two (computed in fp32 and rounded once)."""
    D = x.shape[-1]
    if shift.numel() == D:
        return F.layer_norm(x, (D,), mult.reshape(D), shift.reshape(D), eps=1e-6)
    return modulate(F.layer_norm(x, (D,), eps=1e-6), shift, mult)


class SigmaEmbedding(nn.Module):
    """Sinusoidal features of 1000*sigma -> MLP (DiT's timestep embedder)."""

    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma):  # (B, T) -> (B, T, dim)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = (sigma.float() * 1000.0)[..., None] * freqs
        return self.mlp(torch.cat([args.cos(), args.sin()], -1).to(self.mlp[0].weight.dtype))


def _cached_attention(cache, layer: int, q, k, v, chunk_tokens: int):
    """Write this call's k, v into the cache scratch and attend over cache + self."""
    kbuf, vbuf, kv_len = cache.write_scratch(layer, k, v)
    if torch.is_grad_enabled() and (q.requires_grad or kbuf.requires_grad):
        # Training through the cache (stage 3 self-rollout): the Triton kernel has no backward.
        return block_causal_attention_torch(q, kbuf, vbuf, kv_len, chunk_tokens)
    return block_causal_attention(q, kbuf, vbuf, kv_len, chunk_tokens)


# Kept out of ``torch.compile`` graphs: it mutates the cache and its key count changes as the cache
# fills, while everything around it has static shapes and compiles once. A cache with a fixed layout
# (``worldsim.engine.aot.SteadyCache``: ``exportable``) is traced through instead, into one graph.
cached_attention = torch.compiler.disable(_cached_attention)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, temporal: bool = True):
        super().__init__()
        self.temporal = temporal  # False: attend only within the token's own frame (no cache)
        self.N = cfg.tokens_per_frame
        self.h, self.hkv, self.d = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (cfg.heads + 2 * cfg.kv_heads) * self.d)
        # qk-norm (RMS, one weight per head) keeps logits bounded: stable in bf16 and in long rollouts.
        self.qk_norm = nn.Parameter(torch.ones(cfg.heads + cfg.kv_heads, self.d))
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, rot, *, mask=None, chunk_tokens=None, cache=None, cache_layer=0, q_from=0):
        # x: (B, L, dim); rot: (L, 1, d/2) rotations for these tokens (rope.rotate: complex or real pairs). q_from: the first token
        # whose output is wanted (the earlier ones only give keys and values; cache or frame-local).
        B, L, _ = x.shape
        h, hkv, d = self.h, self.hkv, self.d
        if q_from and not self.temporal:  # frame-local: the skipped frames' keys are never read
            x, rot, L, q_from = x[:, q_from:], rot[q_from:], L - q_from, 0
        qkv = self.qkv(x).view(B, L, h + 2 * hkv, d)
        # qk-norm and rotary embedding in fp32, rounded once: (B, L, h+hkv, d)
        qk = rotate(F.rms_norm(qkv[:, :, :h + hkv].float(), (d,), eps=1e-6) * self.qk_norm.float(), rot).to(qkv.dtype)
        q = qk[:, :, :h].transpose(1, 2)  # (B, h, L, d)
        k = qk[:, :, h:].transpose(1, 2)  # (B, hkv, L, d)
        v = qkv[:, :, h + hkv:].transpose(1, 2).to(k.dtype)  # (B, hkv, L, d)
        if not self.temporal:  # frame-local: every frame is its own batch row, no mask, no cache
            T, N = L // self.N, self.N
            per_frame = lambda t: t.unflatten(2, (T, N)).transpose(1, 2).flatten(0, 1)  # (B*T, heads, N, d)
            out = F.scaled_dot_product_attention(per_frame(q), per_frame(k), per_frame(v), enable_gqa=h != hkv)
            out = out.unflatten(0, (B, T)).transpose(1, 2).flatten(2, 3)  # (B, h, L, d)
        elif cache is not None:
            # The queries are the last L - q_from tokens; the attention takes queries as the newest tokens.
            attend = _cached_attention if getattr(cache, "exportable", False) else cached_attention
            out = attend(cache, cache_layer, q[:, :, q_from:], k, v, chunk_tokens)
        elif q_from:
            raise ValueError("q_from needs a cache (or a frame-local block): skipped tokens must still be kept somewhere")
        elif mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h != hkv)
        elif torch.is_grad_enabled():  # training: autograd through the torch path
            out = block_causal_attention_torch(q, k, v, L, chunk_tokens)
        else:
            out = block_causal_attention(q, k, v, L, chunk_tokens)
        return self.proj(out.transpose(1, 2).reshape(B, L - q_from, h * d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, temporal: bool = True):
        super().__init__()
        self.attn = Attention(cfg, temporal)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))

    def forward(self, x, mod, rot, skip: int = 0, **attn_kw):
        # x: (B, T, N, dim) tokens grouped by frame; mod: 6 x (B, T, 1, dim) per-frame adaLN terms.
        # skip: the first frames only give keys and values (the caller drops their outputs): the
        # block returns (B, T - skip, N, dim).
        B, T, N, D = x.shape
        h = norm_modulate(x, mod[0], mod[1]).view(B, T * N, D)
        a = self.attn(h, rot, q_from=skip * N, **attn_kw).view(B, T - skip, N, D)
        if skip:
            x, mod = x[:, skip:], [m[:, skip:] for m in mod]
        _, _, gate_a, shift_m, mult_m, gate_m = mod
        x = torch.addcmul(x, gate_a, a)
        h = self.mlp(norm_modulate(x, shift_m, mult_m))
        return torch.addcmul(x, gate_m, h)


class WorldDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # The game's colours (worldsim.data.palette.Palette), which the engine snaps drawn frames to: set
        # from a checkpoint's metadata when it is loaded; not a weight, and None for a fresh model.
        self.palette = None
        p, ch = cfg.patch, cfg.channels
        self.grid = cfg.resolution // p
        self.patch_embed = nn.Linear(p * p * ch, cfg.dim)
        self.anchor_embed = nn.Linear(p * p * ch * cfg.anchor_history, cfg.dim) if cfg.anchor else None
        self.action_embed = nn.Embedding(cfg.num_actions + 1, cfg.dim)
        self.sigma_embed = SigmaEmbedding(cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg, cfg.is_temporal(i)) for i in range(cfg.depth)])
        # Every block's adaLN terms (and the output layer's) from one linear: one op per forward.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, (6 * cfg.depth + 2) * cfg.dim))
        self.out = nn.Linear(cfg.dim, p * p * ch)
        # in: the head's frame, the noisy frame (refine_noisy) and the anchors
        self.refiner = (PixelRefiner(ch * (1 + cfg.refine_noisy + cfg.anchor_history * cfg.anchor), cfg.refine,
                                     cfg.dim, ch)
                        if cfg.refine else None)
        self.rope = AxialRope(cfg.head_dim, self.grid, cfg.rope_theta_time, cfg.rope_theta_space)
        self._cond_memo: dict = {}  # (action, sigma) -> adaLN terms (conditioning())
        self._cond_stamp = None
        self._cond_slots = None  # where the conditioning's weights live (param_slots), found once
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.action_embed.weight, std=ACTION_INIT_STD)
        # adaLN-Zero: shifts and gates start at 0, multipliers at 1, so every block starts as the identity.
        ada = self.ada[1]
        nn.init.zeros_(ada.weight)
        with torch.no_grad():
            terms = ada.bias.view(6 * self.cfg.depth + 2, self.cfg.dim)
            terms.zero_()
            terms[[6 * i + j for i in range(self.cfg.depth) for j in (1, 4)]] = 1.0
            terms[6 * self.cfg.depth + 1] = 1.0
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _apply(self, fn, recurse=True):  # keep the rope tables on the module's device
        out = super()._apply(fn, recurse)
        self.rope.to(self.patch_embed.weight.device)  # (and drops its memo)
        self._cond_memo, self._cond_stamp = {}, None  # new weight tensors: nothing memoised stays
        return out

    # -- patches ---------------------------------------------------------------------------
    def patchify(self, x):  # (B, T, C, H, W) -> (B, T, N, p*p*C)
        B, T, C, H, W = x.shape
        p, g = self.cfg.patch, self.grid
        x = x.reshape(B, T, C, g, p, g, p).permute(0, 1, 3, 5, 4, 6, 2)
        return x.reshape(B, T, g * g, p * p * C)

    def unpatchify(self, x):  # (B, T, N, p*p*C) -> (B, T, C, H, W)
        B, T = x.shape[:2]
        p, g, C = self.cfg.patch, self.grid, self.cfg.channels
        x = x.reshape(B, T, g, g, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, T, C, g * p, g * p)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x, sigma, actions, *, frame_pos=None, frame_mask=None, chunk=None, cache=None, anchor=None,
                drop_first: int = 0, cond=None, rot=None):
        """Predict x0 for every frame of ``x``.

        x: (B, T, 3, H, W); sigma: (B, T) or (B,); actions: (B, T) long.
        frame_pos: (T,) integer frame positions (default 0..T-1; with a cache, absolute positions).
        frame_mask: optional (T, T) bool frame-level mask (overrides the pattern).
        chunk: frames per causal chunk for this call (default cfg.chunk; ignored if not causal).
        cache: a KV cache; the frames then attend to the cache plus themselves.
        anchor: (B, T, 3 * anchor_history, H, W) clean frame(s) before each frame's chunk (``anchor_frames``), used when
        ``cfg.anchor`` (zeros if None: a session started from nothing).
        drop_first: with a cache, the first frames are there only for their keys and values (the
        engine's fused cache write): the last block computes nothing else for them, and the result
        holds the other T - drop_first frames. Their rows are the same as without it.
        cond, rot: the adaLN terms (``conditioning(actions, sigma)``) and the rotations of ``frame_pos``
        (``rope.rotations`` or ``rope.real_rotations``), when the caller has them (an exported graph
        takes them as inputs: ``worldsim.engine.aot``); sigma and actions are then not read.
        """
        B, T = x.shape[:2]
        N = self.grid * self.grid
        if drop_first and (cache is None or not 0 <= drop_first < T):
            raise ValueError(f"drop_first={drop_first} needs a cache and fewer than the {T} frames given")
        if cond is None and sigma.dim() == 1:
            sigma = sigma[:, None].expand(B, T)
        if rot is None:
            if frame_pos is None:
                frame_pos = frame_positions(T)  # on the host: rotations are memoised per position
            rot = self.rope.rotations(frame_pos)  # (T*N, 1, d/2) complex
        wdtype = self.patch_embed.weight.dtype
        tokens = self.patch_embed(self.patchify(x.to(wdtype)))  # (B, T, N, dim)
        if self.anchor_embed is not None:
            h = self.cfg.anchor_history
            anc = x.new_zeros(B, T, h * x.shape[2], *x.shape[3:]) if anchor is None else anchor
            if anc.shape[2] != h * x.shape[2]:
                raise ValueError(f"anchor has {anc.shape[2]} channels; this model takes {h} frame(s) of "
                                 f"{x.shape[2]} (model.anchor_history={h}): build it with anchor_frames(..., history={h})")
            anchor = anc
            tokens = tokens + self.anchor_embed(self.patchify(anc.to(wdtype)))  # (B, T, N, p*p*C*h) -> (B, T, N, dim)
        # memoised only with a cache (the engine, self-rollout): a few discrete noise levels there,
        # continuous random ones in training batches
        if cond is None:
            cond = self.conditioning(actions, sigma) if cache is not None else self._conditioning(actions, sigma)
        mods = cond[:, :, None].unbind(3)  # each (B, T, 1, dim)
        attn_kw: dict = {}
        if frame_mask is not None:
            attn_kw["mask"] = frame_mask.repeat_interleave(N, 0).repeat_interleave(N, 1)
        else:
            frames_per_chunk = (chunk or self.cfg.chunk) if self.cfg.causal else T
            attn_kw["chunk_tokens"] = frames_per_chunk * N
        if cache is not None:
            attn_kw["cache"] = cache
        cache_layer = 0
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, mods[6 * i:6 * i + 6], rot, skip=drop_first if i == last else 0,
                         cache_layer=cache_layer, **attn_kw)
            cache_layer += blk.attn.temporal
        D = self.cfg.depth
        shift, mult = (m[:, drop_first:] for m in mods[6 * D:6 * D + 2])
        frames = self.unpatchify(self.out(norm_modulate(tokens, shift, mult)))
        if self.refiner is None:
            return frames
        inputs = ([x[:, drop_first:]] if self.cfg.refine_noisy else []) + \
            ([anchor[:, drop_first:]] if self.anchor_embed is not None else [])
        return self.refiner(frames, inputs, cond[:, drop_first:, 6 * D + 2])

    def train_refiner_only(self) -> None:
        """Freeze everything but the pixel refiner (what moves where under a key stays as it is)."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("refiner."))

    def conditioning(self, actions, sigma) -> torch.Tensor:
        """Every block's adaLN terms for each frame, (B, T, cfg.cond_rows, dim), from its action and
        noise level. At inference on the CPU they are memoised per (action, sigma): play asks for
        the same few pairs every frame (a held key, the 2-3 noise levels of the step list), and the
        sinusoids, two MLPs and one wide linear were ~4% of a frame. The memo is keyed on the
        weights' identity and version counters (an optimizer step or a load bumps them) and on the
        autocast state, so it never serves terms computed from other weights or another precision."""
        if torch.is_grad_enabled() or actions.device.type != "cpu" or sigma.device.type != "cpu":
            return self._conditioning(actions, sigma)
        if self._cond_slots is None:
            self._cond_slots = param_slots(self.action_embed, self.sigma_embed, self.ada)
        stamp = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), weights_stamp(self._cond_slots))
        memo = self._cond_memo  # one dict throughout (a restarted play worker may share this model)
        keys = list(zip(actions.reshape(-1).tolist(), sigma.reshape(-1).tolist()))
        if stamp != self._cond_stamp or len(memo) > 512:  # other weights; or random pairs: stay bounded
            memo = {}
            self._cond_memo, self._cond_stamp = memo, stamp
        for k in set(keys) - memo.keys():
            # one pair per call: a row must not depend on what it was batched with (replays are bit-exact)
            a = torch.tensor([[k[0]]], dtype=actions.dtype)
            s = torch.tensor([[k[1]]], dtype=sigma.dtype)
            memo[k] = self._conditioning(a, s)[0, 0]
        return torch.stack([memo[k] for k in keys]).view(*actions.shape, -1, self.cfg.dim)

    def _conditioning(self, actions, sigma) -> torch.Tensor:
        B, T = actions.shape
        c = self.action_embed(actions) + self.sigma_embed(sigma)  # (B, T, dim)
        terms = self.ada(c).view(B, T, 6 * self.cfg.depth + 2, self.cfg.dim)
        return torch.cat([terms, c[:, :, None].to(terms.dtype)], 2) if self.refiner is not None else terms

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
