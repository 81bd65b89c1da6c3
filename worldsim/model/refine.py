"""PixelRefiner: a small convolutional net at full resolution after WorldDiT's token head.

The transformer draws each ``patch x patch`` square of the frame from one token through a linear head.
Whatever the token width cannot carry is lost, and the first thing lost is a sprite of a pixel or two
whose place changes every frame: Pong's ball. The refiner sees, per pixel, the head's frame, the noisy
input frame and the anchors (the clean frames just before), and adds a correction:

    x0 = head + refine([head, x_t, anchors], conditioning)

Its receptive field (dilations 1, 2, 4, then 1: 17 px across) covers a fast sprite's move between two
frames, so it can carry the anchors' sprite forward where the head blurred it. It is local and small,
so a frame costs a few convolutions at 64x64. The last convolution starts at zero: a refiner added to a
trained student starts as that student. The noise level and the action enter as a per-channel bias
from the model's conditioning vector (a noisy input is worth less than the anchors at high noise).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PixelRefiner(nn.Module):
    def __init__(self, in_channels: int, hidden: int, cond_dim: int, out_channels: int = 3):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.film = nn.Linear(cond_dim, hidden)
        self.mid = nn.ModuleList([nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d) for d in (2, 4)])
        self.outp = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.outp.weight)
        nn.init.zeros_(self.outp.bias)

    def forward(self, head: torch.Tensor, inputs: list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """head: (B, T, C, H, W) the token head's frames; inputs: more (B, T, *, H, W) planes (noisy frame,
        anchors); cond: (B, T, cond_dim) the conditioning vector. Returns head + correction."""
        B, T, C, H, W = head.shape
        dt = self.inp.weight.dtype
        h = torch.cat([head.to(dt)] + [t.to(dt) for t in inputs], 2).flatten(0, 1)  # (B*T, in, H, W)
        bias = self.film(F.silu(cond.to(dt))).flatten(0, 1)  # (B*T, hidden)
        h = F.silu(self.inp(h) + bias[:, :, None, None])
        for conv in self.mid:
            h = h + F.silu(conv(h))
        return head + self.outp(h).view(B, T, C, H, W).to(head.dtype)
