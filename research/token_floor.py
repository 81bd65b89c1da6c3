"""What the token path can carry of the player's sprite: the patch width's floor, and pass-through.

WorldDiT draws each ``patch x patch`` square from one token, and each square enters through a linear
embedding of ``patch * patch * 3`` values into ``dim`` (the noisy frame's ``patch_embed``, the anchors'
``anchor_embed``). Whatever of a patch lies outside an embedding's row space never reaches the
network through that token; the layers after it can only guess it from elsewhere (the maze from
the rest of the frame, not a sprite). Two measurements on held-out frames:

- **span**: each patch projected onto the row space of each embedding (and onto the output head's
  column span, what the head can draw), the frame put back together, and the sprite's visibility in
  it: the L1 distance (0-765) from the sprite's colour of the closest pixel within 2 px of where the
  real frame shows the sprite (in the real frame itself a few: the resize blends the sprite's edge),
  and the frame's MSE.
- **pass-through**: after the real context, x0 of the *real* next frame noised to each level sigma
  (``(1 - sigma) * real + sigma * noise``, one forward, nothing committed), the same visibility. Near
  sigma 0 the sprite is all but given; a model that still returns it faint cannot carry it.

    python -m research.token_floor --checkpoint runs/mspacman_fs2/sprites2/final.safetensors \\
        --episodes data/mspacman_fs2/heldout --starts 8

Measured on the 128-wide Ms. Pac-Man student (patch 8: 192 values a patch) of
``scripts/reproduce_mspacman.sh``, 64 held-out next frames: she is 19 from her yellow in the real
frames, 53 through the noisy frame's embedding, 50 through the last anchor's, 26 through the head's
span; the model returns her 91 from yellow at sigma 0.02 (its input: 25) as at sigma 1 (94). The
embeddings, not the head, drop her. A student as wide as its patch
(``configs/mspacman_student192_fs2.yaml``) keeps every patch whole (all spans 19), yet it learns to
use it slowly: at steps 2,000, 3,000 and 4,000 (the end of its schedule) it returns her at 80, 64 and 64
(sigma 0.02), 89, 78 and 82 (sigma 1). The width is needed, not sufficient.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import torch

from research import run_command
from research.one_frame_floor import load_for_research, next_frame_x0, research_parser
from worldsim.eval.rollout import EvalConfig, EvalEpisode, to_model, to_uint8
from worldsim.eval.sprites import SpriteSpec, find_sprites

REACH = 2  # px around the real sprite's centre where the drawn one is looked for


def sprite_distance(frames: np.ndarray, real: np.ndarray, sprite: SpriteSpec) -> np.ndarray:
    """Per frame, the L1 distance (0-765) from the sprite's colour of the closest pixel of ``frames``
    (N, H, W, 3) uint8 within ``REACH`` px of the sprite found in ``real``; NaN where ``real`` shows none."""
    pos, found = find_sprites(real, sprite)
    colour = np.asarray(sprite.colors[0], np.int64)
    out = np.full(len(frames), np.nan)
    for n in np.flatnonzero(found):
        y, x = (int(v) for v in pos[n])
        win = frames[n, max(0, y - REACH):y + REACH + 1, max(0, x - REACH):x + REACH + 1].astype(np.int64)
        out[n] = np.abs(win - colour).sum(-1).min()
    return out


def row_space_projector(w: torch.Tensor) -> torch.Tensor:
    """(k, d) weight -> (d, d) projector onto the span of its rows (what ``x @ w.T`` keeps of x)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    keep = s > s.max() * 1e-6
    v = vh[keep].T  # (d, rank)
    return (v @ v.T).float()


@torch.no_grad()
def span_floor(model, real: np.ndarray, sprite: SpriteSpec) -> dict:
    """{layer: {"sprite_l1", "frame_mse"}} for real frames (N, R, R, 3) uint8 projected onto each
    embedding's row space and the output head's column span; "real" is the frames as they are."""
    x = to_model(real)[:, None].float()  # (N, 1, 3, R, R)
    patches = model.patchify(x)  # (N, 1, P, p*p*3)
    width = patches.shape[-1]
    layers = {"noisy frame (patch_embed)": model.patch_embed.weight}
    if model.anchor_embed is not None:
        # its columns run over (py, px, channel) with the history's frames stacked on the channels,
        # newest first (anchor_frames): frame i is channels 3i..3i+2 of every pixel
        h, p = model.cfg.anchor_history, model.cfg.patch
        w = model.anchor_embed.weight.view(-1, p, p, 3 * h)
        for i in range(h):
            name = "last anchor" if i == 0 else f"anchor {i} before the last"
            layers[f"{name} (anchor_embed)"] = w[..., 3 * i:3 * i + 3].reshape(-1, width)
    layers["output head's span (out)"] = model.out.weight.T
    out = {"real": {"sprite_l1": float(np.nanmean(sprite_distance(real, real, sprite))), "frame_mse": 0.0}}
    for name, w in layers.items():
        back = model.unpatchify(patches @ row_space_projector(w.detach().float())).clamp(-1, 1)
        frames = to_uint8(back[:, 0])
        out[name] = {"sprite_l1": float(np.nanmean(sprite_distance(frames, real, sprite))),
                     "frame_mse": float((back - x).pow(2).mean())}
    return out


def pass_through(engine, episodes: Sequence[EvalEpisode], plan, cfg: EvalConfig, sprite: SpriteSpec,
                 levels: Sequence[float], no_action: int, seed: int = 0) -> dict:
    """{"levels": {sigma: {"sprite_l1", "input_l1"}}, "real_l1", "next_frames"}: the model's x0 of the real
    next frame noised to sigma after the real context, and the sprite's distance in its output and input."""
    got: dict[float, list] = {float(s): [] for s in levels}
    seen: dict[float, list] = {float(s): [] for s in levels}
    real_l1, nexts = [], []
    for _, real, at in next_frame_x0(engine, episodes, plan, cfg, levels, no_action, seed):
        nexts.append(real)
        real_l1 += list(sprite_distance(real, real, sprite))
        for s, (noisy, x0) in at.items():
            got[s] += list(sprite_distance(x0, real, sprite))
            seen[s] += list(sprite_distance(noisy, real, sprite))
    mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else None  # noqa: E731
    return {"levels": {s: {"sprite_l1": mean(got[s]), "input_l1": mean(seen[s])} for s in got},
            "real_l1": mean(real_l1), "next_frames": np.concatenate(nexts)}


# -- the command ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    return run_command("token_floor", measure, argv)


def measure(argv) -> int:
    from worldsim.eval.sprites import sprite_spec

    args = research_parser(__doc__, "0.02,0.1,0.3,0.75,1.0").parse_args(argv)
    model, meta, engine, episodes, plan, cfg = load_for_research(args, torch.float32)
    sprite = sprite_spec(meta["env_id"])
    passed = pass_through(engine, episodes, plan, cfg, sprite, [float(v) for v in args.levels.split(",")],
                          model.cfg.num_actions)
    print(f"{sprite.what}: L1 from its colour near the real sprite (0-765; lower is brighter), "
          f"{len(passed['next_frames'])} held-out next frames")
    for name, v in span_floor(model, passed["next_frames"], sprite).items():
        print(f"  span of {name:34s} sprite {v['sprite_l1']:6.1f}   frame MSE {v['frame_mse']:.5f}")
    for s, v in passed["levels"].items():
        print(f"  pass-through at sigma {s:.2f}: output {v['sprite_l1']:6.1f}   input {v['input_l1']:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
