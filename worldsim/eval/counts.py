"""State a world must keep, counted from frames: Breakout's bricks (broken ones stay broken) and Ms.
Pac-Man's pellets (eaten ones stay eaten).

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

Ms. Pac-Man's pellets share the walls' colour (228, 111, 111), so colour alone cannot count them; they
sit at fixed places of the maze the game draws at reset, so a ``LayoutCountSpec`` takes that first
frame from the emulator: its components of the colour of one item's size (2 x 4 native pixels, 150 of
them) are the items, the large ones the walls, the ones in between (the four 4 x 7 power pellets)
blink and are left out with every pixel they touch. Each pixel then holds an item share between the
maze without items and the maze with all of them, the two drawn at the frame's resolution by the one
resize: (x - walls) projected on the item colour's offset from the corridor, clipped to the share the
full maze has there. On real frames this follows the pellets eaten (a reward of 10) within 1 on
average at 64x64; a ghost or Ms. Pac-Man over an eaten pellet's place shows as one for the frames it
stays, so the count is smoothed by its lowest value over the last ``smooth`` frames before asking
what came back, and then rises by at most 3 in the held-out real episodes. The layout is the first
maze: a game that clears it (150 pellets; random play never does) goes on in another maze, which this
count does not know.
"""

from __future__ import annotations

import functools
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
    smooth: int = 1  # what came back is read from the lowest count of the last ``smooth`` frames


@dataclass(frozen=True)
class LayoutCountSpec:
    """Items at fixed places of the layout a game draws at reset, in one colour shared with larger
    shapes (walls): the items are the components of the colour of ``item_px`` pixels."""
    what: str
    env_id: str  # the game whose reset frame is the layout
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    item_px: int  # one item's native area; a component of the colour this size is an item
    blink_px: int  # components larger than an item, up to this size, blink: the pixels they touch are left out
    rows: tuple[int, int]  # the band that holds the items, native pixel rows [r0, r1)
    tol: float = 4.0
    smooth: int = 9


BREAKOUT_BRICKS = CountSpec("bricks", ((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72),
                                       (66, 72, 200)), background=(0, 0, 0), rows=(57, 93), cols=(8, 152),
                            native=(210, 160), item_px=48)
MSPACMAN_PELLETS = LayoutCountSpec("pellets", "ALE/MsPacman-v5", (228, 111, 111), background=(0, 28, 136),
                                   item_px=8, blink_px=40, rows=(0, 172))
AnyCountSpec = CountSpec | LayoutCountSpec
COUNTS: dict[str, AnyCountSpec] = {"breakout": BREAKOUT_BRICKS, "mspacman": MSPACMAN_PELLETS}


def count_spec(env_id: str) -> AnyCountSpec | None:
    """The game's entry, or None: most games keep no counted state (nor does a layout game where the
    emulator that draws its layout is not installed)."""
    spec = COUNTS.get(game_key(env_id))
    if isinstance(spec, LayoutCountSpec):
        try:
            reset_frame(spec.env_id)
        except ImportError:
            return None
    return spec


@functools.lru_cache(maxsize=None)
def reset_frame(env_id: str) -> np.ndarray:
    """The game's first frame after reset, native uint8 (h, w, 3): the layout of a ``LayoutCountSpec``."""
    from worldsim.envs import make_env

    env = make_env(env_id)
    try:
        return env.reset(seed=0)
    finally:
        env.close()


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a boolean (h, w) mask: labels (h, w) int (0 outside, 1.. inside) and the
    size of each label (index 0 unused)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int64)
    sizes = [0]
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n = len(sizes)
        labels[y0, x0], todo, size = n, [(y0, x0)], 0
        while todo:
            y, x = todo.pop()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    todo.append((yy, xx))
        sizes.append(size)
    return labels, np.asarray(sizes)


@functools.lru_cache(maxsize=8)
def _layout(spec: LayoutCountSpec, H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """At (H, W): the pixels counted (H, W) bool; on them, the maze without items (P, 3) and each pixel's
    item share of the full maze (P,); the projection of a colour offset onto an item share (3,); and the
    number of items in the layout."""
    from worldsim.data.frames import resize_frames

    frame = reset_frame(spec.env_id)
    color, bg = np.asarray(spec.color, np.uint8), np.asarray(spec.background, np.uint8)
    labels, sizes = components((frame == color).all(-1))
    band = np.zeros(frame.shape[:2], bool)
    band[spec.rows[0]:spec.rows[1]] = True
    item = (sizes == spec.item_px)[labels] & (labels > 0) & band
    blink = ((sizes > spec.item_px) & (sizes <= spec.blink_px))[labels] & (labels > 0)
    wall = (labels > 0) & ~item & ~blink
    empty = np.empty_like(frame)
    empty[:] = bg
    empty[wall] = color
    full = empty.copy()
    full[item] = color
    touched = np.zeros_like(frame)
    touched[blink] = 255
    E, F, B = resize_frames(np.stack([empty, full, touched]), (H, W)).astype(np.float64)
    d = color.astype(np.float64) - bg
    project = d / (d @ d)
    share = (F - E) @ project
    counted = (share > 0.02) & (B.max(-1) == 0)  # below 0.02: the resize's rounding, not an item
    return counted, E[counted], share[counted], project, float(item.sum() / spec.item_px)


def _count_layout(f: np.ndarray, spec: LayoutCountSpec) -> np.ndarray:
    counted, empty, share, project, items = _layout(spec, f.shape[1], f.shape[2])
    shown = np.clip((f[:, counted] - empty) @ project, 0.0, share)  # (N, P) item shares, at most the full maze's
    return shown.sum(1) / share.sum() * items  # the share of the counted pixels, in items


def _band(spec: CountSpec, H: int, W: int) -> tuple[int, int, int, int, float]:
    """Pixel rows [y0, y1) overlapping the band, pixel columns [x0, x1) inside it, and the scale from the
    columns kept to the band's full width."""
    NH, NW = spec.native
    y0, y1 = math.floor(spec.rows[0] * H / NH), math.ceil(spec.rows[1] * H / NH - 1e-9)
    x0, x1 = math.ceil(spec.cols[0] * W / NW - 1e-9), math.floor(spec.cols[1] * W / NW + 1e-9)
    kept = (x1 - x0) * NW / W  # native columns the kept pixels cover
    return y0, y1, x0, x1, (spec.cols[1] - spec.cols[0]) / kept


def count_items(frames: np.ndarray, spec: AnyCountSpec) -> np.ndarray:
    """Items shown in uint8 frames (N, H, W, 3) at any resolution: (N,) float64."""
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"count_items needs (N, H, W, 3) frames, got {f.shape}")
    if isinstance(spec, LayoutCountSpec):
        return _count_layout(f, spec)
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


def regrown(counts: np.ndarray, smooth: int = 1) -> float:
    """The largest rise of a count above its lowest value so far (items that came back), read from the
    lowest count of the last ``smooth`` frames: a sprite over an empty place for fewer frames than that
    is not an item coming back."""
    c = np.asarray(counts, np.float64)
    if not len(c):
        return 0.0
    if smooth > 1:
        c = np.lib.stride_tricks.sliding_window_view(np.concatenate([np.full(smooth - 1, c[0]), c]), smooth).min(-1)
    return float((c - np.minimum.accumulate(c)).max())


def count_summary(counts: np.ndarray, start: float, window: int, spec: AnyCountSpec) -> dict:
    """What free play reports about a counted state: the count on the last context frame (``start``), the
    means of the first and last ``window`` frames, the lowest count, and the items that came back."""
    c = np.asarray(counts, np.float64)
    w = max(1, min(window, len(c)))
    back = regrown(np.concatenate([[start], c]), spec.smooth)
    return {"what": spec.what, "start": float(start), "first_window": float(c[:w].mean()),
            "last_window": float(c[-w:].mean()), "lowest": float(c.min()), "regrown": back,
            "kept": back <= spec.tol}
