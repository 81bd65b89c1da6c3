"""How predictable the player's motion is from the tracks and the actions alone: a yardstick for the sprite target.

The sprite metric asks a world model to place the player within 1.5 px after 8 open-loop frames.
This module asks the same of predictors that see no pixels at all: from the sprites' positions in
the real frames (``find_sprites``) they learn the next move from the action that produces it, the
last ``history`` moves and actions, and the position (walls). A linear fit and a small MLP, trained
on the training episodes and rolled out open-loop on held-out ones under the recorded actions, say
how much of the motion the actions and the track explain, and how fast the errors compound.

With a second body (``sprite_tracks(..., other=)``, the script's ``--opponent``) the track is the player's and the opponent's together: each
predictor sees both positions and both past moves and predicts both next moves (rolling both
forward), since the opponent's punches push the player and no track of the player alone foresees
them. The error is always the player's (columns 0-1); the opponent's is reported beside it.

Measured on the Boxing collections (session 10, ``python scripts/sprite_predictability.py``): one frame
ahead copy-last 1.01 px, linear 0.75, MLP 0.47; 8 frames open-loop copy-last 4.89, linear 3.77, MLP 3.06
px (2,140 held-out starts). The shipped world model: 3.61 against copy-last's 4.23 on its own 80 starts.
With the opponent (session 13, ``--opponent``): the player at h8 3.16 px with 6 past moves, 2.88 with 12
(copy-last 4.94-4.96); the opponent 4.18-4.70 against copy-last's 5.06-5.15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from worldsim.eval.sprites import SpriteSpec, find_sprites


@dataclass
class Track:
    pos: np.ndarray  # (T, 2 * bodies) float (y, x) px per body, the player first; NaN where not found
    found: np.ndarray  # (T,) bool: every body found
    actions: np.ndarray  # (T,) int, DESIGN alignment: actions[t] is chosen after frame t, moves it to t+1


def sprite_tracks(paths: Sequence[str], split: str | None, resolution: int, sprite: SpriteSpec,
                  other: SpriteSpec | None = None) -> list[Track]:
    """The player's track (and ``other``'s after it) in every episode under ``paths`` at ``resolution``."""
    from worldsim.data.dataset import ClipDataset

    out = []
    for p in paths:
        ds = ClipDataset(p, clip_len=1, resolution=resolution, split=split)
        for e in range(len(ds.episodes)):
            frames, actions = ds.episode(e)
            f = np.asarray(frames).transpose(0, 2, 3, 1)  # (T, H, W, 3)
            pos, found = find_sprites(f, sprite)
            if other is not None:
                pos2, found2 = find_sprites(f, other)
                pos, found = np.concatenate([pos, pos2], 1), found & found2
            out.append(Track(pos, found, actions.astype(np.int64)))
    return out


def features(moves: Sequence[np.ndarray], action: int, past_actions: Sequence[int], pos: np.ndarray,
             num_actions: int, resolution: int) -> np.ndarray:
    """One predictor input: one-hot action, then each past move (newest first) with its action, position."""
    eye = np.eye(num_actions)
    parts = [eye[action]]
    for m, a in zip(moves, past_actions):
        parts += [np.asarray(m, np.float64), eye[a]]
    parts += [np.asarray(pos, np.float64) / resolution, [1.0]]
    return np.concatenate(parts)


def motion_rows(tracks: Sequence[Track], history: int, num_actions: int, resolution: int):
    """(X (n, f), Y (n, 2)): every frame t whose sprite is found in frames t-history-1 .. t+1; Y the move to t+1."""
    X, Y = [], []
    for tr in tracks:
        p, f, a = tr.pos, tr.found, tr.actions
        for t in range(history + 1, len(p) - 1):
            if not f[t - history - 1:t + 2].all():
                continue
            moves = [p[t - k] - p[t - k - 1] for k in range(history)]
            X.append(features(moves, a[t], a[t - history:t][::-1], p[t], num_actions, resolution))
            Y.append(p[t + 1] - p[t])
    if not X:
        raise ValueError(f"no frame has the sprite found over {history + 3} frames in a row; lower --history")
    return np.asarray(X), np.asarray(Y)


def fit_linear(X: np.ndarray, Y: np.ndarray, ridge: float = 1e-2) -> Callable[[np.ndarray], np.ndarray]:
    W = np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ Y)
    return lambda x: np.asarray(x) @ W


def fit_mlp(X: np.ndarray, Y: np.ndarray, epochs: int = 30, width: int = 256, seed: int = 0,
            batch: int = 512) -> Callable[[np.ndarray], np.ndarray]:
    """A two-layer MLP under the Euclidean error of each body's move (the metric's), seeded."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], width), torch.nn.GELU(), torch.nn.Linear(width, width),
                              torch.nn.GELU(), torch.nn.Linear(width, Y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    Xt, Yt = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for i in range(0, len(Xt), batch):
            idx = perm[i:i + batch]
            d = net(Xt[idx]) - Yt[idx]  # Euclidean per body (the metric's), summed over bodies
            loss = d.view(len(d), -1, 2).norm(dim=2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def predict(x):
        with torch.no_grad():
            return net(torch.as_tensor(np.asarray(x), dtype=torch.float32)).double().numpy()
    return predict


def open_loop_errors(tracks: Sequence[Track], predict, history: int, num_actions: int, resolution: int,
                     horizons: Sequence[int] = (1, 8, 16), every: int = 8, context: int = 8) -> dict:
    """{h: {"model": px, "copy_last": px, "starts": n}}: from every ``every``-th frame (after ``context``),
    the predictor rolls its own moves forward under the recorded actions for h frames."""
    start = max(context, history + 1)
    out = {}
    for H in horizons:
        err, copy, other, other_copy = [], [], [], []
        for tr in tracks:
            p, f, a = tr.pos, tr.found, tr.actions
            starts = [t0 for t0 in range(start, len(p) - H, every) if f[t0 - history - 1:t0 + 1].all() and f[t0 + H]]
            if not starts:
                continue
            cur = np.stack([p[t0] for t0 in starts])  # (S, 2): all starts of the episode rolled together
            moves = [np.stack([p[t0 - k] - p[t0 - k - 1] for t0 in starts]) for k in range(history)]
            for h in range(H):
                x = np.stack([features([m[i] for m in moves], a[t0 + h], a[t0 + h - history:t0 + h][::-1], cur[i],
                                       num_actions, resolution) for i, t0 in enumerate(starts)])
                d = predict(x)  # (S, 2 * bodies)
                cur = cur + d
                moves = [d] + moves[:-1]
            real = np.stack([p[t0 + H] for t0 in starts])
            err += list(np.linalg.norm(cur[:, :2] - real[:, :2], axis=1))  # the player's (the metric's)
            copy += list(np.linalg.norm(np.stack([p[t0, :2] for t0 in starts]) - real[:, :2], axis=1))
            if cur.shape[1] > 2:
                other += list(np.linalg.norm(cur[:, 2:4] - real[:, 2:4], axis=1))
                other_copy += list(np.linalg.norm(np.stack([p[t0, 2:4] for t0 in starts]) - real[:, 2:4], axis=1))
        out[H] = {"model": float(np.mean(err)) if err else None,
                  "copy_last": float(np.mean(copy)) if copy else None, "starts": len(err)}
        if other:
            out[H].update(other_model=float(np.mean(other)), other_copy_last=float(np.mean(other_copy)))
    return out
