"""The player's sprite, found by colour: the controllability metric of ``worldsim eval``.

Boundary: frames in, sprite positions out; a per-game table says what the player looks like (and
``OPPONENTS`` and ``BALLS`` what the other body and the ball look like, where a game has them). A game without an entry
raises ``NoSpriteSpec`` and the evaluation skips the metric with that reason.

Position = centroid of the pixels within an L1 colour distance ``tol`` of the player's colour(s),
inside a region given in fractions of the frame (so the same entry works at the native resolution
and at any model resolution), in pixels of the frame it was found in. Fewer than ``min_frac`` of
the frame's pixels matching, or matching pixels scattered wider than ``max_spread`` (noise, two
blobs), means "not found".

How the entries were chosen (inspecting real frames):
- ``ALE/Boxing-v5``: the player is the white boxer, RGB (214, 214, 214) in every frame; the other
  colours are the green floor (110, 156, 66), the orange ring (195, 144, 61), the black opponent and
  the dark-green clock. The player's score is white too, so the region starts below it (rows >= 0.1;
  the score sits in rows 5-11 of 210, the boxer never leaves rows 40-171). At 64x64 (area resize)
  a pixel that is half boxer and half floor is 155 from white in L1, the floor 310, the ring 242, so
  ``tol`` 150 keeps pixels that are mostly boxer; the centroid there is within 0.2 px (mean) of the
  native-resolution centroid scaled down, and the boxer covers about 45 of 4096 pixels with an RMS
  radius of at most 5.8 px (0.09 of the frame); uniform noise matches ~490 pixels spread ~0.4.
- ``ALE/Pong-v5``: the player is the right paddle, green (92, 186, 92), 4 x 16 pixels in columns
  140-143 on the brown field (144, 72, 17) between the white borders (rows 24-33 and 194-209); the
  player's score is green too, above the field, so the region is the field's rows and the paddle's
  columns. At the top and bottom the paddle slides under the borders (down to 4 of its 16 rows show),
  so ``min_frac`` keeps one pixel at 64x64; at 64x64 the 4-pixel paddle is 1.6 columns wide and a
  pixel half paddle, half field is 121 from green: ``tol`` 120. Its centre row is RAM[51] - 5.5 (+-1)
  while the whole paddle shows. The opponent is the left paddle, orange (213, 130, 74).
- ``ALE/Breakout-v5``: the paddle is red (200, 72, 72), 16 x 4 pixels in rows 189-192, on black; the
  ball is the same red but only passes through those rows, and the walls' red feet (columns 0-7 and
  152-159) are cut off by the region. Its centre column is RAM[72] - 38.5 while it is clear of the walls.
- ``ALE/MsPacman-v5``: Ms. Pac-Man is yellow (210, 164, 74), about 7 x 10 pixels, in the maze (rows
  0-171; the lives below her are yellow too). The nearest other colours in the maze are the orange
  ghost (180, 122, 48), 98 away in L1, and the walls (228, 111, 111), 108 away: ``tol`` 60. At 64x64
  she covers about 9 pixels, mostly blended with the blue corridor, so she is found in about 9 of
  10 real frames there (every native frame) and a lone orange-ghost pixel can stand in for her when
  she is not; at the native resolution her centre is (RAM[16] + 5.9, RAM[10] - 8) within 2 pixels.
- ``worldsim/Tiny-v0``: the square takes one of the three ``PALETTE`` colours (FIRE cycles them),
  all far from the floor and the wall; any of them counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldsim.envs.tiny import PALETTE
from worldsim.errors import WorldsimError


class NoSpriteSpec(WorldsimError):
    """The game has no entry in ``SPRITES``: its sprite metric cannot be computed."""


@dataclass(frozen=True)
class SpriteSpec:
    what: str  # a human description, written into the JSON
    colors: tuple[tuple[int, int, int], ...]  # any of these colours is the player
    tol: int  # L1 distance (sum over RGB, 0..765) at which a pixel still counts as the colour
    rows: tuple[float, float] = (0.0, 1.0)  # search region, fractions of the height
    cols: tuple[float, float] = (0.0, 1.0)  # and of the width
    min_frac: float = 0.002  # fewer matching pixels than this fraction of the frame: not found
    # Matching pixels spread wider than this (RMS radius around their centroid, in frame fractions)
    # are not one sprite but noise or stray blobs: not found. Keeps a collapsed or noisy frame from
    # counting as "sprite present" just because some pixels happen to be near the colour.
    max_spread: float = 0.15
    # > 0: the sprite's action pose (``pose``, e.g. Boxing's punch) shows as its pixels spanning more than
    # this fraction of the frame's width; the open-loop rollouts report how often the model draws it under
    # the recorded keys next to how often the real frames show it (a key that stops working shows there)
    pose_width: float = 0.0
    pose: str = ""


# A punch stretches the boxer sideways: at 64x64 the real player spans 4-8 columns standing and 10-12 with
# an arm out (25% of held-out frames under sticky-random keys), nothing in between: 9.5 / 64 of the width.
BOXING = SpriteSpec("white boxer (the player)", ((214, 214, 214),), tol=150, rows=(0.1, 0.95), min_frac=0.002,
                    pose_width=9.5 / 64, pose="punch")
TINY = SpriteSpec("the square (any palette colour)", tuple(tuple(int(v) for v in c) for c in PALETTE),
                  tol=100, min_frac=0.01)
PONG = SpriteSpec("right paddle, green (the player)", ((92, 186, 92),), tol=120, rows=(34 / 210, 194 / 210),
                  cols=(0.85, 0.92), min_frac=0.00025)
BREAKOUT = SpriteSpec("paddle, red (the player)", ((200, 72, 72),), tol=150, rows=(0.895, 0.93), cols=(0.05, 0.95),
                      min_frac=0.0005)
MSPACMAN = SpriteSpec("Ms. Pac-Man, yellow (the player)", ((210, 164, 74),), tol=60, rows=(0.0, 0.815),
                      min_frac=0.00025, max_spread=0.04)
# Keyed by the bare game name, so ALE/Boxing-v5, BoxingNoFrameskip-v4, Boxing-v4 all find Boxing.
SPRITES: dict[str, SpriteSpec] = {"boxing": BOXING, "pong": PONG, "breakout": BREAKOUT, "mspacman": MSPACMAN,
                                  "tiny": TINY}
# The other body on the screen, where a game has one: the eval's opponent metric, the error budget's
# opponent region, the predictability yardstick's second track. Boxing's opponent is
# black (0, 0, 0), like ALE's blank strip at the left edge (8 of 160 columns, 3 px at 64x64): cols >= 0.06.
BOXING_OPPONENT = SpriteSpec("black boxer (the opponent)", ((0, 0, 0),), tol=150, rows=(0.1, 0.95),
                             cols=(0.06, 1.0), min_frac=0.002)
# Pong's opponent region starts a row below the player's: at 64x64 the top border's blended edge row is
# within 57 of orange (and 300 of green), a second blob that would hide the paddle.
PONG_OPPONENT = SpriteSpec("left paddle, orange (the opponent)", ((213, 130, 74),), tol=120,
                           rows=(0.172, 194 / 210), cols=(0.08, 0.15), min_frac=0.00025)
OPPONENTS: dict[str, SpriteSpec] = {"boxing": BOXING_OPPONENT, "pong": PONG_OPPONENT}
# The ball, where a game has one: free play reports how often it is on the screen, next to the real game's
# rate (a world that drops its ball is still found to have both paddles). Pong's ball is the borders' white
# (236, 236, 236), 2 x 4 pixels: at 64x64 it covers about one pixel and, as it crosses pixel boundaries,
# blends with the field. ``tol`` 270 keeps pixels at least 43% ball and leaves out the orange paddle
# (291 from white) and the green one (338); rows keep clear of the borders' blended edge rows. On the
# held-out frameskip-2 episodes it finds the ball on 80% of the frames that show it at the native
# resolution, and on 0.05% of those that do not.
PONG_BALL = SpriteSpec("ball, white", ((236, 236, 236),), tol=270, rows=(0.172, 0.92), min_frac=0.00025,
                       max_spread=0.05)
BALLS: dict[str, SpriteSpec] = {"pong": PONG_BALL}


def game_key(env_id: str) -> str:
    """'ALE/Boxing-v5' -> 'boxing', 'BoxingNoFrameskip-v4' -> 'boxing', 'worldsim/Tiny-v0' -> 'tiny'."""
    name = str(env_id).split("/")[-1].split("-")[0]
    for suffix in ("NoFrameskip", "Deterministic"):
        name = name.removesuffix(suffix)
    return name.lower()


def _lookup(table: dict[str, SpriteSpec], table_name: str, what: str, env_id: str) -> SpriteSpec:
    spec = table.get(game_key(env_id))
    if spec is None:
        raise NoSpriteSpec(f"no {what} colour is known for '{env_id}' (known games: {', '.join(sorted(table))}); "
                           f"add an entry to worldsim.eval.sprites.{table_name}")
    return spec


def sprite_spec(env_id: str) -> SpriteSpec:
    return _lookup(SPRITES, "SPRITES", "player-sprite", env_id)


def opponent_spec(env_id: str) -> SpriteSpec:
    return _lookup(OPPONENTS, "OPPONENTS", "opponent-sprite", env_id)


def ball_spec(env_id: str) -> SpriteSpec:
    return _lookup(BALLS, "BALLS", "ball", env_id)


def _region_mask(f: np.ndarray, spec: SpriteSpec):
    """The colour mask inside the spec's region (N, h, w) and the region's bounds (r0, r1, c0, c1)."""
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"find_sprites needs (N, H, W, 3) frames, got {f.shape}")
    H, W = f.shape[1:3]
    r0, r1 = int(spec.rows[0] * H), max(int(round(spec.rows[1] * H)), int(spec.rows[0] * H) + 1)
    c0, c1 = int(spec.cols[0] * W), max(int(round(spec.cols[1] * W)), int(spec.cols[0] * W) + 1)
    crop = f[:, r0:r1, c0:c1].astype(np.int16)  # (N, h, w, 3)
    mask = np.zeros(crop.shape[:3], bool)  # (N, h, w)
    for c in spec.colors:
        mask |= np.abs(crop - np.asarray(c, np.int16)).sum(-1) < spec.tol
    return mask, (r0, r1, c0, c1)


def sprite_mask(frames: np.ndarray, spec: SpriteSpec) -> np.ndarray:
    """(N, H, W) bool: the pixels ``find_sprites`` counts as the sprite (its colour, inside its region)."""
    f = np.asarray(frames)
    mask, (r0, r1, c0, c1) = _region_mask(f, spec)
    full = np.zeros(f.shape[:3], bool)
    full[:, r0:r1, c0:c1] = mask
    return full


def find_sprites(frames: np.ndarray, spec: SpriteSpec) -> tuple[np.ndarray, np.ndarray]:
    """Player positions in uint8 (or float 0..255) frames (N, H, W, 3).

    Returns (pos (N, 2) float64 (y, x) in pixels, pixel centres at +0.5, NaN where not found;
    found (N,) bool).
    """
    f = np.asarray(frames)
    mask, region = _region_mask(f, spec)  # (N, h, w) inside the spec's region (checks the shape)
    return _locate(mask, region, f.shape[1:3], spec)


def _locate(mask: np.ndarray, region, size: tuple[int, int], spec: SpriteSpec) -> tuple[np.ndarray, np.ndarray]:
    """``find_sprites`` on a region mask (N, h, w) of frames of ``size`` (H, W)."""
    (r0, r1, c0, c1), (H, W) = region, size
    count = mask.sum((1, 2))  # (N,)
    ys = np.arange(r0, r1, dtype=np.float64)[None, :, None] + 0.5
    xs = np.arange(c0, c1, dtype=np.float64)[None, None, :] + 0.5
    n = np.maximum(count, 1)
    pos = np.stack([(mask * ys).sum((1, 2)) / n, (mask * xs).sum((1, 2)) / n], -1)  # (N, 2)
    var_y = (mask * (ys - pos[:, 0, None, None]) ** 2).sum((1, 2)) / n / H**2  # in frame fractions
    var_x = (mask * (xs - pos[:, 1, None, None]) ** 2).sum((1, 2)) / n / W**2
    found = (count >= max(1, int(round(spec.min_frac * H * W)))) & (np.sqrt(var_y + var_x) <= spec.max_spread)
    pos[~found] = np.nan
    return pos, found


def sprite_pose(frames: np.ndarray, spec: SpriteSpec) -> np.ndarray:
    """(N,) float: 1 where the sprite is found and its pixels span more than ``spec.pose_width`` of the
    frame's width (its action pose), 0 where it is found and does not, NaN where it is not found."""
    f = np.asarray(frames)
    mask, region = _region_mask(f, spec)
    found = _locate(mask, region, f.shape[1:3], spec)[1]
    cols = mask.any(1)  # (N, w)
    first, last = cols.argmax(1), cols.shape[1] - 1 - cols[:, ::-1].argmax(1)
    span = np.where(cols.any(1), last - first + 1, 0) / f.shape[2]
    return np.where(found, (span > spec.pose_width).astype(np.float64), np.nan)


def sprite_errors(pred_pos, pred_found, real_pos, real_found, miss_penalty: float):
    """Distance (px) between predicted and real sprite positions, arrays of any leading shape.

    Returns (err, dist): ``err`` is the distance where both are found, ``miss_penalty`` where the
    real frame shows the sprite but the prediction does not, NaN where the real frame does not show
    it (nothing to compare); ``dist`` is the distance where both are found, else NaN.
    """
    dist = np.sqrt(((np.asarray(pred_pos) - np.asarray(real_pos)) ** 2).sum(-1))  # NaN unless both found
    err = np.where(pred_found, dist, miss_penalty)
    err = np.where(real_found, err, np.nan)
    return err, np.where(pred_found & real_found, dist, np.nan)
