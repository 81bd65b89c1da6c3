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

Measured on the Boxing collections (``python -m research.sprite_predictability``): one frame ahead
copy-last 1.01 px, linear 0.75, MLP 0.47; 8 frames open-loop copy-last 4.89, linear 3.77, MLP 3.06 px
(2,140 held-out starts); a one-anchor student of the default model's lineage, 3.61 against copy-last's
4.23 on its own 80 starts. With the opponent (``--opponent``): the player at h8 3.16 px with 6 past
moves, 2.88 with 12 (copy-last 4.94-4.96); the opponent 4.18-4.70 against copy-last's 5.06-5.15.

The full game state (``emulator_tracks``, ``direct_rows``; ``python -m research.state_predictability``):
the emulator is deterministic, so its RAM and the keys decide the frame 8 steps on exactly; what frames
show of that state is less. A predictor given the whole RAM at t and the next 8 keys, regressing the
player's place at t+8 directly, against one given the tracks and the keys the same way, says how much
the unseen state (the opponent's plans, punch timers) matters and how fast a learner's error falls with
data. Measured (40 training episodes, 66k rows; 1,233 held-out starts; copy-last 4.74 px at h8): tracks
4.43 / 4.12 / 3.48 px on a quarter / half / all of the rows, the whole RAM 3.29 / 3.09 / 2.77.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from worldsim.envs.atari import AtariEnv
from worldsim.eval.sprites import SpriteSpec, find_sprites


@dataclass
class Track:
    pos: np.ndarray  # (T, 2 * bodies) float (y, x) px per body, the player first; NaN where not found
    found: np.ndarray  # (T,) bool: every body found
    actions: np.ndarray  # (T,) int, step alignment: actions[t] is chosen after frame t, moves it to t+1


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


class RamAtariEnv(AtariEnv):
    """An ALE game whose console RAM can be read: 128 bytes, the whole game state (analysis, not play)."""

    def ram(self) -> np.ndarray:
        return np.asarray(self._env.unwrapped.ale.getRAM(), dtype=np.uint8).copy()


def emulator_tracks(env_id: str, seeds: Sequence[int], steps: int, repeat_prob: float, resolution: int,
                    sprite: SpriteSpec, other: SpriteSpec) -> tuple[list[tuple[Track, np.ndarray]], int]:
    """(episodes, the game's action count). Sticky-random play in the real emulator (deterministic,
    ``repeat_action_probability`` 0, as the collections), one episode per seed, at most ``steps`` long:
    each the player's and the opponent's track at ``resolution`` (the metric's sprites) and the RAM
    before every action, (T, 128) uint8."""
    from worldsim.data.frames import resize_frames
    from worldsim.envs.base import EnvConfig
    from worldsim.envs.policies import StickyPolicy

    env = RamAtariEnv(EnvConfig(env_id=env_id, repeat_action_probability=0.0))
    out = []
    try:
        for seed in seeds:
            policy = StickyPolicy(env.action_meanings, seed=seed, repeat_prob=repeat_prob)
            obs = env.reset(seed=seed)
            frames, ram, actions = [], [], []
            for _ in range(steps):
                frames.append(obs)
                ram.append(env.ram())
                actions.append(policy(obs))
                obs, _, terminated, truncated = env.step(actions[-1])
                if terminated or truncated:
                    break
            f = resize_frames(np.stack(frames), resolution)  # (T, R, R, 3)
            (p1, f1), (p2, f2) = find_sprites(f, sprite), find_sprites(f, other)
            out.append((Track(np.concatenate([p1, p2], 1), f1 & f2, np.asarray(actions, np.int64)), np.stack(ram)))
    finally:
        env.close()
    return out, len(env.action_meanings)


def direct_rows(episodes: Sequence[tuple[Track, np.ndarray]], horizon: int, history: int, num_actions: int,
                resolution: int, every: int = 1):
    """(X_track, X_state, Y) for a direct regression of the player's move over ``horizon`` steps, from
    every ``every``-th frame t where both bodies are found over the history and at t + horizon.
    X_track: both positions, the last ``history`` moves of both, their actions and the next ``horizon``
    keys (one-hot); X_state: the RAM at t as bits and bytes, both positions and the same keys; Y: (n, 2)."""
    eye = np.eye(num_actions)
    xt, xs, y = [], [], []
    for tr, ram in episodes:
        p, f, a = tr.pos, tr.found, tr.actions
        for t in range(history + 1, len(a) - horizon, every):
            if not (f[t - history - 1:t + 1].all() and f[t + horizon]):
                continue
            keys = eye[a[t:t + horizon]].ravel()
            moves = np.concatenate([p[t - k] - p[t - k - 1] for k in range(history)])
            xt.append(np.concatenate([p[t] / resolution, moves, eye[a[t - history:t]].ravel(), keys, [1.0]]))
            xs.append(np.concatenate([np.unpackbits(ram[t]), ram[t] / 255.0, p[t] / resolution, keys, [1.0]]))
            y.append(p[t + horizon, :2] - p[t, :2])
    if not y:
        raise ValueError(f"no frame has both bodies found over {history + 2} frames and {horizon} on; "
                         "play longer episodes or lower the history")
    return np.asarray(xt), np.asarray(xs, np.float64), np.asarray(y)
