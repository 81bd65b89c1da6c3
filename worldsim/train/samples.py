"""Sample rollouts for a person to look at: generated frames under real recorded actions beside the truth.

Boundary: networks + real clips in, frames out (``engine_rollout``; the teacher's sampler is
``worldsim.engine.teacher``); frames in, ``.png`` grid and ``.mp4`` out (``write_media``). Nothing here
touches the training generators, so writing samples never changes what a run trains on.

Layout of a sample: per clip two rows (real on top, generated below), columns are time; the first
``K`` columns are the real context, shared by both rows and framed in grey in the video.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from worldsim.engine import Engine, EngineConfig

log = logging.getLogger("worldsim.train")


def fixed_clips(ds, n: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` clips of ``length`` frames spread evenly over ``ds`` (the same every time)."""
    from worldsim.train.data import collate

    N = len(ds)
    idx = np.linspace(0, N - 1, min(n, N)).round().astype(int)
    items = []
    for i in idx:
        it = ds[int(i)]
        it = dict(it, frames=it["frames"][:length], actions=it["actions"][:length])
        items.append(it)
    return collate(items)


@torch.no_grad()
def engine_rollout(model, engine_cfg: EngineConfig, ctx: torch.Tensor, prev: torch.Tensor, actions: torch.Tensor,
                   seed: int, dtype=torch.float32) -> torch.Tensor:
    """Causal student through the inference engine: prefill ``ctx`` (B, K, 3, R, R) with ``prev`` (B, K),
    then one chunk at a time under ``actions`` (B, H) (step alignment): (B, H, 3, R, R)."""
    B, H = actions.shape
    C = engine_cfg.chunk
    n = -(-H // C) * C
    acts = torch.cat([actions, actions[:, -1:].expand(B, n - H)], 1)  # (B, n): pad the last chunk
    eng = Engine(model, engine_cfg, device=ctx.device, dtype=dtype)
    eng.reset(B, seed=seed)
    eng.prefill(ctx, prev)
    out = [eng.step(acts[:, t:t + C]) for t in range(0, n, C)]
    return torch.cat(out, 1)[:, :H]


def _frame_hwc(f: torch.Tensor, scale: int) -> np.ndarray:
    a = f.permute(1, 2, 0).numpy()  # (R, R, 3)
    return np.repeat(np.repeat(a, scale, 0), scale, 1)


def write_media(out_dir: Path, name: str, real: torch.Tensor, fake: torch.Tensor, K: int,
                scale: int = 0) -> list[Path]:
    """``real`` uint8 (B, K+H, 3, R, R), ``fake`` uint8 (B, H, 3, R, R): ``name.png`` grid and ``name.mp4``."""
    import imageio.v2 as imageio

    out_dir.mkdir(parents=True, exist_ok=True)
    B, L = real.shape[:2]
    R = real.shape[-1]
    scale = scale or max(1, 128 // R)
    gen = torch.cat([real[:, :K], fake], 1)  # (B, K+H, 3, R, R)
    pad = 2
    rows = []
    for b in range(B):
        for seq in (real[b], gen[b]):
            tiles = [np.pad(_frame_hwc(f, scale), ((pad, pad), (pad, pad), (0, 0)),
                            constant_values=96 if t < K else 0) for t, f in enumerate(seq)]
            rows.append(np.concatenate(tiles, 1))
    grid = np.concatenate(rows, 0)
    paths = [out_dir / f"{name}.png"]
    imageio.imwrite(paths[0], grid)
    # Video: time runs; columns are clips, rows are real / generated.
    frames = []
    for t in range(L):
        cols = []
        for b in range(B):
            tiles = [np.pad(_frame_hwc(seq[t], scale), ((pad, pad), (pad, pad), (0, 0)),
                            constant_values=96 if t < K else 0) for seq in (real[b], gen[b])]
            cols.append(np.concatenate(tiles, 0))
        frame = np.concatenate(cols, 1)
        h, w = frame.shape[:2]  # the encoder wants sides divisible by 16
        frame = np.pad(frame, ((0, -h % 16), (0, -w % 16), (0, 0)))
        frames.append(frame)
    try:
        mp4 = out_dir / f"{name}.mp4"
        imageio.mimwrite(mp4, frames, fps=4, macro_block_size=16)
        paths.append(mp4)
    except Exception as e:  # no ffmpeg: the PNG grid still shows everything
        log.warning("could not write %s.mp4 (%s); the PNG grid has the same frames", name, e)
    return paths
