"""State a world must keep, counted from frames: Breakout's bricks (broken ones stay broken).

Boundary: frames in, counts out; a per-game table (``COUNTS``) says what is counted. Free play reports
the count on the last real context frame, on its first and last windows, and how many items came back
after they were gone (``regrown``: the largest rise of the count above its lowest point so far). In the
real game the count only falls, so ``regrown`` measures a world that forgets what play changed.

Counting by area, not by item: at 64x64 a Breakout brick (8 x 6 native pixels) is 3.2 x 1.8 pixels,
blended with its neighbours, so each pixel of the counted band contributes the share of it that is
an item (its distance from the background against the nearest item colour's, so a blend of two
bricks counts whole and a blend of brick and background by its brick share), times its native area;
the sum over the band divided by an item's native area is the number of items shown.
Pixels whose footprint touches the walls beside the band are left out and the count scaled up to the
full width, so wall pixels never count as bricks.

How the entry was chosen (real frames): the wall of bricks is rows 57-92 and columns 8-151 of the
210 x 160 frame, 6 rows of 18 bricks of 8 x 6 pixels on black, one colour per row; the grey walls
(142, 142, 142) are columns 0-7 and 152-159. The ball, (200, 72, 72) like the top row, is 2 x 4
pixels: inside the band it adds at most a sixth of a brick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from worldsim.eval.sprites import game_key


@dataclass(frozen=True)
class CountSpec:
    what: str  # a human description, written into the JSON ('bricks')
    colors: tuple[tuple[int, int, int], ...]  # the items' colours
    background: tuple[int, int, int]  # what an item leaves behind
    rows: tuple[int, int]  # the band the items live in, native pixel rows [r0, r1)
    cols: tuple[int, int]  # and columns [c0, c1)
    native: tuple[int, int]  # the native frame's (height, width)
    item_px: int  # one item's native area in pixels
    # A rise of the count by less than this (in items) is blending noise, not an item that came back.
    tol: float = 0.5


BREAKOUT_BRICKS = CountSpec("bricks", ((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72),
                                       (66, 72, 200)), background=(0, 0, 0), rows=(57, 93), cols=(8, 152),
                            native=(210, 160), item_px=48)
COUNTS: dict[str, CountSpec] = {"breakout": BREAKOUT_BRICKS}


def count_spec(env_id: str) -> CountSpec | None:
    """The game's entry, or None: most games keep no counted state."""
    return COUNTS.get(game_key(env_id))


def _band(spec: CountSpec, H: int, W: int) -> tuple[int, int, int, int, float]:
    """Pixel rows [y0, y1) overlapping the band, pixel columns [x0, x1) inside it, and the scale from the
    columns kept to the band's full width."""
    NH, NW = spec.native
    y0, y1 = math.floor(spec.rows[0] * H / NH), math.ceil(spec.rows[1] * H / NH - 1e-9)
    x0, x1 = math.ceil(spec.cols[0] * W / NW - 1e-9), math.floor(spec.cols[1] * W / NW + 1e-9)
    kept = (x1 - x0) * NW / W  # native columns the kept pixels cover
    return y0, y1, x0, x1, (spec.cols[1] - spec.cols[0]) / kept


def count_items(frames: np.ndarray, spec: CountSpec) -> np.ndarray:
    """Items shown in uint8 frames (N, H, W, 3) at any resolution: (N,) float64."""
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"count_items needs (N, H, W, 3) frames, got {f.shape}")
    N, H, W, _ = f.shape
    y0, y1, x0, x1, scale = _band(spec, H, W)
    band = f[:, y0:y1, x0:x1].astype(np.float32)  # (N, h, w, 3)
    bg = np.asarray(spec.background, np.float32)
    colors = np.asarray(spec.colors, np.float32)  # (K, 3)
    nearest = np.abs(band[..., None, :] - colors).sum(-1).argmin(-1)  # (N, h, w) the closest item colour
    span = np.abs(colors - bg).sum(-1)[nearest]  # its distance from the background
    share = np.abs(band - bg).sum(-1) / span  # a blend of item and background: its item share
    px_area = (spec.native[0] / H) * (spec.native[1] / W)
    return np.clip(share, 0.0, 1.0).sum((1, 2)).astype(np.float64) * px_area * scale / spec.item_px


def regrown(counts: np.ndarray) -> float:
    """The largest rise of a count above its lowest value so far (items that came back)."""
    c = np.asarray(counts, np.float64)
    if not len(c):
        return 0.0
    return float((c - np.minimum.accumulate(c)).max())


def count_summary(counts: np.ndarray, start: float, window: int, spec: CountSpec) -> dict:
    """What free play reports about a counted state: the count on the last context frame (``start``), the
    means of the first and last ``window`` frames, the lowest count, and the items that came back."""
    c = np.asarray(counts, np.float64)
    w = max(1, min(window, len(c)))
    back = regrown(np.concatenate([[start], c]))
    return {"what": spec.what, "start": float(start), "first_window": float(c[:w].mean()),
            "last_window": float(c[-w:].mean()), "lowest": float(c.min()), "regrown": back,
            "kept": back <= spec.tol}
