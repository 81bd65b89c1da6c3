"""Realism: a classifier two-sample test. Can a small conv net tell the model's frames from real ones?

Boundary: two sets of uint8 frames in, a test accuracy out. Nothing here touches a world model.

The test (Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests"): take equal numbers of
frames from sample A (real) and sample B (the model's free play), split each into a train and a test
half, train a small convolutional classifier to say which sample a frame came from, and score it on
the test halves. Accuracy 0.5 means the classifier cannot tell the samples apart; 1.0 means every
held-out frame gives itself away. The split is by time, not at random: each sequence's first half of
the chosen frames trains, its second half tests, so no test frame has a near-duplicate neighbour
(the frame before or after it) among the training frames. Two sets of real frames (other episodes of
the same game, same play) give the calibration: the accuracy that counts as indistinguishable with
this many frames, this net and this budget.

``degrade`` is the second view: 2x2 average pooling, then 16 grey levels per channel. Pixel noise a
player does not see (a background a level or two off, soft edges) no longer separates the samples
there; wrong shapes, places and colours still do.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.data.frames import to_model
from worldsim.errors import WorldsimError


@dataclass
class RealismConfig:
    """The classifier two-sample test's budget; the defaults take a couple of CPU-minutes at 64x64."""

    frames: int = 2000  # frames per sample (equal numbers; fewer if a sample has fewer), half train, half test
    train_steps: int = 400  # optimiser steps: a fixed budget, independent of the number of frames
    batch: int = 64  # frames per step, half from each sample
    lr: float = 2e-3  # Adam
    width: int = 16  # channels of the first conv layer (doubled at each of the next two)
    seed: int = 0  # frame choice, initial weights and batch order: the same inputs give the same accuracy
    # Classifiers trained on the same split (seeds seed, seed+1, ...), their accuracies averaged: at 400
    # steps one classifier does not always find what gives a sample away (docs/evaluation.md)
    classifiers: int = 1
    min_frames: int = 8  # per sample; below this the test says nothing and is refused
    # torch threads while the classifier trains and tests: the net is small, and on a shared 2-core CPU
    # two OpenMP threads took 6x the wall time of one (each op waits at a barrier for a busy core)
    threads: int = 1

    def validate(self) -> None:
        if self.frames < self.min_frames:
            raise WorldsimError(f"realism needs at least {self.min_frames} frames per sample (got --realism-frames "
                                f"{self.frames})")
        if self.train_steps < 1 or self.batch < 2 or self.width < 1 or self.threads < 1 or not self.lr > 0:
            raise WorldsimError(f"realism: train_steps, batch >= 2, width, threads and lr must be positive (got "
                                f"{self.train_steps}, {self.batch}, {self.width}, {self.threads}, {self.lr})")
        if self.classifiers < 1:
            raise WorldsimError(f"realism needs at least 1 classifier (got --realism-classifiers {self.classifiers})")


@dataclass
class RealismResult:
    """One two-sample test: ``accuracy`` on the held-out halves (0.5 = indistinguishable) and its
    binomial standard error; ``view`` is 'full' or 'degraded'."""

    accuracy: float
    stderr: float
    train_frames: int  # per sample
    test_frames: int  # per sample
    view: str
    seconds: float
    runs: list[float] | None = None  # each classifier's accuracy when several were trained (``accuracy``: their mean)

    def to_dict(self) -> dict:
        return asdict(self)


def degrade(frames: np.ndarray, levels: int = 16) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, H/2, W/2, 3): 2x2 average pooling, then ``levels`` levels per
    channel (each level drawn at the centre of its bin). Odd sizes drop the last row / column."""
    f = np.asarray(frames)
    N, H, W, C = f.shape
    x = f[:, :H // 2 * 2, :W // 2 * 2].astype(np.float32).reshape(N, H // 2, 2, W // 2, 2, C).mean((2, 4))
    step = 256.0 / levels
    q = np.minimum(np.floor(x / step), levels - 1)  # bin index 0 .. levels-1
    return (q * step + step / 2).round().astype(np.uint8)


class FrameClassifier(nn.Module):
    """Three stride-2 3x3 convolutions (width, 2 width, 4 width channels), pooled to 4x4 so the
    layout of the screen (where things are) still counts, and one logit: "from sample B"."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.convs = nn.ModuleList([nn.Conv2d(3, w, 3, 2, 1), nn.Conv2d(w, 2 * w, 3, 2, 1),
                                    nn.Conv2d(2 * w, 4 * w, 3, 2, 1)])
        self.head = nn.Linear(4 * w * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W) in [-1, 1]
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        x = F.adaptive_avg_pool2d(x, 4)  # (N, 4w, 4, 4)
        return self.head(x.flatten(1)).squeeze(1)  # (N,)


def _as_sequences(sample) -> list[np.ndarray]:
    """One uint8 (T, H, W, 3) array or a list of them (episodes) -> a list of arrays."""
    if isinstance(sample, np.ndarray):
        return [sample] if sample.ndim == 4 else []
    return [np.asarray(s) for s in sample if len(s)]


def split_sample(sample, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` frames spread evenly over a sample (one array or several sequences, in proportion to
    their lengths) and split them by time: each sequence's earlier half trains, its later half tests.
    Returns (train, test) uint8 arrays of about n / 2 frames each, in random order."""
    seqs = _as_sequences(sample)
    total = sum(len(s) for s in seqs)
    lengths = np.array([len(s) for s in seqs], np.float64)
    quota = np.floor(lengths / max(total, 1) * n).astype(int)
    for i in np.argsort(-(lengths / max(total, 1) * n - quota))[:n - quota.sum()]:  # largest remainders
        quota[i] += 1
    train, test = [], []
    for s, q in zip(seqs, quota):
        if q == 0:
            continue
        idx = np.unique(np.linspace(0, len(s) - 1, q).round().astype(int))
        half = len(idx) // 2
        train.append(s[idx[:half]])
        test.append(s[idx[half:]])
    tr, te = np.concatenate(train), np.concatenate(test)
    return tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]


def _to_input(frames: np.ndarray) -> torch.Tensor:
    return to_model(frames)  # (N, 3, H, W) in [-1, 1], as the model sees frames


def two_sample_accuracy(real, other, cfg: RealismConfig | None = None, view: str = "full") -> RealismResult:
    """Train a ``FrameClassifier`` to tell ``other`` from ``real`` and return its accuracy on held-out
    frames. Each sample is a uint8 (T, H, W, 3) array or a list of them (episodes, kept in time
    order); ``view`` 'degraded' runs the test on ``degrade``-d frames."""
    cfg = cfg or RealismConfig()
    cfg.validate()
    if view not in ("full", "degraded"):
        raise WorldsimError(f"realism view must be 'full' or 'degraded' (got {view!r})")
    sizes = [sum(len(s) for s in _as_sequences(x)) for x in (real, other)]
    n = min(cfg.frames, *sizes)
    if n < cfg.min_frames:
        raise WorldsimError(f"realism needs at least {cfg.min_frames} frames in each sample (got {sizes[0]} real "
                            f"and {sizes[1]} other); generate more free play (--free-play)")
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    (a_tr, a_te), (b_tr, b_te) = split_sample(real, n, rng), split_sample(other, n, rng)
    m_tr, m_te = min(len(a_tr), len(b_tr)), min(len(a_te), len(b_te))  # equal numbers from both samples
    a_tr, b_tr, a_te, b_te = a_tr[:m_tr], b_tr[:m_tr], a_te[:m_te], b_te[:m_te]
    if a_tr.shape[1:] != b_tr.shape[1:]:
        raise WorldsimError(f"realism: the two samples' frames differ in size ({a_tr.shape[1:]} and "
                            f"{b_tr.shape[1:]}); resize them to the model's resolution first")
    if view == "degraded":
        a_tr, a_te, b_tr, b_te = (degrade(x) for x in (a_tr, a_te, b_tr, b_te))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        runs = [_train_and_test(a_tr, a_te, b_tr, b_te, cfg.seed + k, cfg) for k in range(cfg.classifiers)]
    finally:
        torch.set_num_threads(threads)
    acc = float(np.mean(runs))
    return RealismResult(accuracy=acc, stderr=math.sqrt(max(acc * (1 - acc), 1e-12) / (2 * len(a_te))),
                         train_frames=len(a_tr), test_frames=len(a_te), view=view,
                         seconds=time.perf_counter() - t0, runs=runs if len(runs) > 1 else None)


def _train_and_test(a_tr, a_te, b_tr, b_te, seed: int, cfg: RealismConfig) -> float:
    """Accuracy on (a_te, b_te) of a ``FrameClassifier`` trained on (a_tr, b_tr), weights and batch order
    drawn from ``seed``."""
    x_tr = _to_input(np.concatenate([a_tr, b_tr]))  # (2m, 3, H, W)
    y_tr = torch.cat([torch.zeros(len(a_tr)), torch.ones(len(b_tr))])
    x_te = _to_input(np.concatenate([a_te, b_te]))
    y_te = torch.cat([torch.zeros(len(a_te)), torch.ones(len(b_te))])
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FrameClassifier(cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batch = min(cfg.batch, len(x_tr))
    net.train()
    for _ in range(cfg.train_steps):
        idx = torch.randint(len(x_tr), (batch,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(x_tr[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x_te[i:i + 256]) for i in range(0, len(x_te), 256)]) > 0
    return float((pred.float() == y_te).float().mean())


def split_real(episodes: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two disjoint real samples for the calibration row: alternate episodes (0, 2, 4, ... and 1, 3,
    5, ...), so each holds whole episodes and both spread over the collection."""
    if len(episodes) < 2:
        raise WorldsimError(f"the real-versus-real calibration needs at least 2 evaluation episodes (got "
                            f"{len(episodes)}); pass more --episodes")
    return list(episodes[0::2]), list(episodes[1::2])
