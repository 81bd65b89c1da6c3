"""The adversarial critic of stage 3: tells a real next frame from the student's, given the frame before it
and the action between them.

Boundary: (previous frame, frame, action) in, one logit per frame out (positive: "real"). Training-only;
nothing in play or evaluation loads it.

Why a separate small conv net and not a head on the fake score (DMD2's choice): on a 2-core CPU a
critic of a few hundred thousand parameters costs a fraction of a score-network forward, and it sees
the frame at full resolution, where the things that give the model away live (exact console colours,
the bar at the left edge, the digits). Conditioning on the previous frame and the action (a projection
term, Miyato & Koyama 2018) makes "real" mean "what the game draws next under this key", so the
generator cannot trade control for texture.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FrameCritic(nn.Module):
    def __init__(self, num_actions: int, width: int = 32, resolution: int = 64):
        super().__init__()
        if resolution % 16:
            raise ValueError(f"the critic needs a resolution divisible by 16 (got {resolution})")
        w = width
        chans = [6, w, 2 * w, 4 * w, 4 * w]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        # The last 4x4 map is read position by position, not pooled: the console draws things at fixed places
        # (the bar at the left edge, the digits, the ring), and a pooled critic would accept them anywhere.
        cells = chans[-1] * (resolution // 16) ** 2
        self.out = nn.Linear(cells, 1)
        self.embed = nn.Embedding(num_actions + 1, cells)  # + "no action" (the trainer's dropout token)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, prev: torch.Tensor, frame: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """prev, frame (N, 3, R, R) in [-1, 1]; action (N,) long -> (N,) logits."""
        h = torch.cat([prev, frame - prev], 1)  # the change is what the action decides; give it directly
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        h = h.flatten(1)  # (N, C * 4 * 4)
        return self.out(h)[:, 0] + (self.embed(action) * h).sum(1)


def critic_pairs(full: torch.Tensor, acts: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (previous frame, frame, action) of a clip from frame ``first`` on, flattened.

    full (B, L, 3, R, R); acts (B, L) the action that produced each frame (model alignment). Returns
    (N, 3, R, R), (N, 3, R, R), (N,) with N = B * (L - first)."""
    if first < 1:
        raise ValueError("critic pairs need a frame before the first one scored (first >= 1)")
    prev, cur, a = full[:, first - 1:-1], full[:, first:], acts[:, first:]
    return prev.flatten(0, 1), cur.flatten(0, 1), a.flatten(0, 1)


def critic_loss(critic: FrameCritic, real, fake, r1: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Non-saturating loss of the critic on real and (detached) fake pairs, plus the R1 penalty
    ``r1 / 2 * E|grad_x D(real)|^2`` on the real frames (keeps the critic smooth, so its gradient
    stays useful to the generator)."""
    rp, rf, ra = real
    fp, ff, fa = fake
    rf = rf.detach().requires_grad_(r1 > 0)
    d_real = critic(rp.detach(), rf, ra)
    d_fake = critic(fp.detach(), ff.detach(), fa)
    loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    metrics = {"critic_real": float(d_real.detach().mean()), "critic_fake": float(d_fake.detach().mean()),
               "critic_acc": float(((d_real > 0).float().mean() + (d_fake < 0).float().mean()) / 2)}
    if r1 > 0:
        (g,) = torch.autograd.grad(d_real.sum(), rf, create_graph=True)
        pen = g.pow(2).flatten(1).sum(1).mean()
        loss = loss + 0.5 * r1 * pen
        metrics["critic_r1"] = float(pen.detach())
    return loss, metrics


def generator_adv_loss(critic: FrameCritic, fake) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-D(fake))``; the gradient reaches the generated frames
    (both the frame and, where generated, the frame before it)."""
    fp, ff, fa = fake
    return F.softplus(-critic(fp, ff, fa)).mean()
