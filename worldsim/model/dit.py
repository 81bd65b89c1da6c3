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
from worldsim.model.rope import AxialRope, apply_rope


@dataclass
class ModelConfig:
    resolution: int = 64  # frames are resolution x resolution RGB
    channels: int = 3
    patch: int = 8  # patch side: 64x64 frames -> 64 tokens per frame
    dim: int = 256  # token width
    depth: int = 6  # transformer blocks
    heads: int = 4  # query heads (head_dim = dim / heads)
    kv_heads: int = 4  # < heads: grouped KV heads, a smaller cache
    mlp_ratio: float = 4.0
    num_actions: int = 18  # the game's action set; index num_actions is "no action"
    causal: bool = True  # False: bidirectional over the whole clip (teacher / score models)
    chunk: int = 1  # frames per causal chunk (1: frame-wise); the training mask uses it
    rope_theta_time: float = 1000.0
    rope_theta_space: float = 100.0

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
        if self.num_actions < 1 or self.chunk < 1:
            raise ConfigError("model.num_actions and model.chunk must be >= 1")

    @property
    def tokens_per_frame(self) -> int:
        return (self.resolution // self.patch) ** 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


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


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h, self.hkv, self.d = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (cfg.heads + 2 * cfg.kv_heads) * self.d)
        self.q_norm = RMSNorm(self.d)  # qk-norm keeps logits bounded: stable in bf16 and long rollouts
        self.k_norm = RMSNorm(self.d)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, cos, sin, *, mask=None, chunk_tokens=None, cache=None, layer=0):
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, self.h + 2 * self.hkv, self.d)
        q, k, v = qkv.split([self.h, self.hkv, self.hkv], dim=2)
        q = apply_rope(self.q_norm(q).transpose(1, 2), cos, sin)  # (B, h, L, d)
        k = apply_rope(self.k_norm(k).transpose(1, 2), cos, sin)  # (B, hkv, L, d)
        v = v.transpose(1, 2).to(k.dtype)  # (B, hkv, L, d)
        if cache is not None:
            kbuf, vbuf, kv_len = cache.write_scratch(layer, k, v)
            out = block_causal_attention(q, kbuf, vbuf, kv_len, chunk_tokens)
        elif mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.h != self.hkv)
        elif torch.is_grad_enabled():  # training: autograd through the torch path
            out = block_causal_attention_torch(q, k, v, L, chunk_tokens)
        else:
            out = block_causal_attention(q, k, v, L, chunk_tokens)
        return self.proj(out.transpose(1, 2).reshape(B, L, self.h * self.d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, cfg.dim))
        self.ada = nn.Linear(cfg.dim, 6 * cfg.dim)  # per-frame shift/scale/gate for attn and mlp

    def forward(self, x, c, cos, sin, **attn_kw):
        # x: (B, T, N, dim) tokens grouped by frame; c: (B, T, 1, dim) per-frame conditioning.
        B, T, N, D = x.shape
        sa, ca, ga, sm, cm, gm = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), sa, ca).reshape(B, T * N, D)
        x = x + ga * self.attn(h, cos, sin, **attn_kw).view(B, T, N, D)
        x = x + gm * self.mlp(modulate(self.norm2(x), sm, cm))
        return x


class WorldDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        p, ch = cfg.patch, cfg.channels
        self.grid = cfg.resolution // p
        self.patch_embed = nn.Linear(p * p * ch, cfg.dim)
        self.action_embed = nn.Embedding(cfg.num_actions + 1, cfg.dim)
        self.sigma_embed = SigmaEmbedding(cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.out = nn.Linear(cfg.dim, p * p * ch)
        self.rope = AxialRope(cfg.head_dim, self.grid, cfg.rope_theta_time, cfg.rope_theta_space)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada.weight)
            nn.init.zeros_(blk.ada.bias)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _apply(self, fn, recurse=True):  # keep the rope tables on the module's device
        out = super()._apply(fn, recurse)
        self.rope.to(self.patch_embed.weight.device)
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
    def forward(self, x, sigma, actions, *, frame_pos=None, frame_mask=None, chunk=None, cache=None):
        """Predict x0 for every frame of ``x``.

        x: (B, T, 3, H, W); sigma: (B, T) or (B,); actions: (B, T) long.
        frame_pos: (T,) integer frame positions (default 0..T-1; with a cache, absolute positions).
        frame_mask: optional (T, T) bool frame-level mask (overrides the pattern).
        chunk: frames per causal chunk for this call (default cfg.chunk; ignored if not causal).
        cache: a KV cache; the frames then attend to the cache plus themselves.
        """
        B, T = x.shape[:2]
        N = self.grid * self.grid
        if sigma.dim() == 1:
            sigma = sigma[:, None].expand(B, T)
        if frame_pos is None:
            frame_pos = frame_positions(T, x.device)
        cos, sin = self.rope.tables(frame_pos)
        tokens = self.patch_embed(self.patchify(x.to(self.patch_embed.weight.dtype)))  # (B, T, N, dim)
        c = (self.action_embed(actions) + self.sigma_embed(sigma))[:, :, None]  # (B, T, 1, dim)
        attn_kw: dict = {}
        if frame_mask is not None:
            attn_kw["mask"] = frame_mask.repeat_interleave(N, 0).repeat_interleave(N, 1)
        else:
            frames_per_chunk = (chunk or self.cfg.chunk) if self.cfg.causal else T
            attn_kw["chunk_tokens"] = frames_per_chunk * N
        if cache is not None:
            attn_kw["cache"] = cache
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, c, cos, sin, layer=i, **attn_kw)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        out = self.out(modulate(self.norm_out(tokens), shift, scale))
        return self.unpatchify(out)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
