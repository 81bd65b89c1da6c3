"""The bidirectional teacher's sampler: offline, the whole clip at once (no cache, no speed limit).

Boundary: a bidirectional network, real context frames and the actions of every frame in; the clip's
generated frames out. Used for the teacher's sample videos and for its own realism (``worldsim eval
clips``): in the recipe the teacher is the real score, so its samples bound what the student can learn.
"""

from __future__ import annotations

import torch

from worldsim.engine.schedule import euler_sigmas


@torch.no_grad()
def teacher_rollout(model, ctx: torch.Tensor, prev: torch.Tensor, actions: torch.Tensor, seed: int, steps: int = 24,
                    shift: float = 3.0, guidance: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """Bidirectional teacher: the whole clip at once, context frames clean (s = 0), the rest from
    noise by Euler steps of the flow ODE; action guidance ``u + w (c - u)``: (B, H, 3, R, R)."""
    from worldsim.device import autocast

    B, K = prev.shape
    H = actions.shape[1]
    no_action = model.cfg.num_actions
    acts = torch.cat([prev, actions], 1)  # (B, K+H): frame K+h was produced by actions[:, h]
    null = torch.full_like(acts, no_action)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, H) + ctx.shape[2:], generator=g).to(ctx.device)
    levels = euler_sigmas(steps, shift)
    for s, s_next in zip(levels[:-1], levels[1:]):
        sig = torch.cat([torch.zeros(B, K), torch.full((B, H), s)], 1).to(ctx.device)
        seq = torch.cat([ctx, x], 1)
        with autocast(ctx.device, dtype):
            x0 = model(seq, sig, acts).float()[:, K:]
            if guidance != 1.0:
                u = model(seq, sig, null).float()[:, K:]
                x0 = u + guidance * (x0 - u)
        v = (x - x0) / s
        x = x + (s_next - s) * v
    return x.clamp(-1, 1)
