"""The game's colours: every frame the engine draws is snapped to the colours its training frames hold.

An Atari game at model resolution has a few hundred exact colours (Boxing at 64x64: 285, one green
four fifths of the pixels), where a diffusion model's frame has noise a level or two off them
everywhere: on a flat background a player barely sees it, a classifier can, and the next frame reads it
back from the cache as context no real frame ever had. Snapping each drawn pixel to the nearest colour
of the game removes both, at the cost of a table lookup a pixel (``Palette.snap``).

A ``Palette`` is measured from training frames (``palette_of``) and travels in the checkpoint's
metadata (``palette``: ``{"colours": 6 hex digits a colour, most frequent first}``);
``worldsim.checkpoint`` hands it to the model it loads as ``model.palette``, and the engine snaps with
it unless ``engine.palette=false``. Frames of more than ``MAX_COLOURS`` colours (photographs, smooth shading)
give no palette: the game is not drawn from one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from worldsim.errors import CheckpointError, DataError

MAX_COLOURS = 1024


class Palette:
    def __init__(self, colours: np.ndarray):
        colours = np.asarray(colours)
        if colours.ndim != 2 or colours.shape[1] != 3 or not len(colours) or colours.dtype != np.uint8:
            raise ValueError(f"a palette is uint8 (K, 3) with K >= 1, got {colours.dtype} {colours.shape}")
        self.colours = colours
        # per device: (nearest colour + 1 of every uint8 colour, 0 until looked up; colours; colours in [-1, 1])
        self._table: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.colours)

    def __getstate__(self):  # to a process worker: the lookup tables (32 MB each) are rebuilt there
        return {"colours": self.colours, "_table": {}}

    @classmethod
    def from_frames(cls, frames: Iterable[np.ndarray], max_colours: int = MAX_COLOURS) -> "Palette | None":
        """The colours of uint8 frames (channels last: (..., H, W, 3)), most frequent first; None when
        they hold more than ``max_colours``."""
        counts: dict[int, int] = {}
        for f in frames:
            packed = np.asarray(f, np.uint8).reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1])
            values, n = np.unique(packed, return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                counts[v] = counts.get(v, 0) + c
            if len(counts) > max_colours:
                return None
        if not counts:
            return None
        order = sorted(counts, key=lambda v: (-counts[v], v))
        packed = np.array(order, np.int64)
        return cls(np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], 1).astype(np.uint8))

    # -- metadata ---------------------------------------------------------------------------------
    def to_meta(self) -> dict[str, str]:
        return {"colours": self.colours.tobytes().hex()}

    @classmethod
    def from_meta(cls, meta, where: str = "checkpoint") -> "Palette":
        text = meta.get("colours") if isinstance(meta, dict) else None
        if not isinstance(text, str) or not text or len(text) % 6:
            raise CheckpointError(f"{where}: metadata 'palette' is not a string of 6 hex digits a colour; the file "
                                  f"is damaged or was edited by hand: re-export it or add the palette again "
                                  f"('worldsim data palette')")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise CheckpointError(f"{where}: metadata 'palette' holds characters that are not hex digits; re-export "
                                  f"it or add the palette again ('worldsim data palette')") from None
        if len(raw) // 3 > MAX_COLOURS:
            raise CheckpointError(f"{where}: metadata 'palette' has {len(raw) // 3} colours (at most {MAX_COLOURS}); "
                                  f"re-export it or add the palette again ('worldsim data palette')")
        return cls(np.frombuffer(raw, np.uint8).reshape(-1, 3).copy())

    # -- snapping ---------------------------------------------------------------------------------
    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (..., 3, H, W) in [-1, 1] -> the same frames with each pixel, as the uint8 colour a
        player would see, replaced by the nearest palette colour (RGB distance; ties: the more frequent),
        in x's dtype and device.

        The nearest colour of each uint8 colour is worked out once and kept in a table over all 2^24 of
        them (int16, 32 MB, filled as colours turn up): a drawn frame's colours mostly recur, so a frame
        costs a lookup, not a (pixels x colours) product (which took ~3 ms a 64x64 frame on one core)."""
        device = x.device
        if device not in self._table:
            c = torch.from_numpy(self.colours).to(device)
            self._table[device] = (torch.zeros(1 << 24, dtype=torch.int16, device=device), c.float(),
                                   c.float().div(127.5).sub(1.0))
        table, c, model_colours = self._table[device]
        u8 = (x.detach().float().movedim(-3, -1) + 1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.int32)
        key = ((u8[..., 0] << 16) | (u8[..., 1] << 8) | u8[..., 2]).reshape(-1)
        idx = table[key]  # nearest colour + 1; 0: not looked up yet
        if bool((idx == 0).any()):
            new = torch.unique(key[idx == 0])
            rgb = torch.stack([new >> 16, (new >> 8) & 255, new & 255], 1).float()
            table[new] = (torch.cdist(rgb, c).argmin(1) + 1).to(torch.int16)
            idx = table[key]
        out = model_colours[idx.long() - 1].view(*u8.shape).movedim(-1, -3).contiguous()
        return out.to(x.dtype)


def palette_of(source, stride: int = 4) -> Palette | None:
    """The game's colours in a clip source's frames (a ``ClipDataset`` or ``InMemoryClips``: anything with
    ``iter_frames``), every ``stride``-th frame (a game's colours recur); None when they are not drawn
    from a palette."""
    return Palette.from_frames(source.iter_frames(stride))


def snap_reference(x: torch.Tensor, colours: np.ndarray) -> torch.Tensor:
    """``Palette.snap`` the plain way (every distance written out): what the tests compare it to."""
    px = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).movedim(-3, -1)
    c = torch.from_numpy(colours).float()
    d = (px[..., None, :] - c).square().sum(-1)
    return (c[d.argmin(-1)] / 127.5 - 1.0).movedim(-1, -3).to(x.dtype)


def add_palette(checkpoint: str | Path, paths: Sequence[str | Path]) -> Palette:
    """Measure the game's colours in the episodes under ``paths`` (at the checkpoint's resolution) and
    write them into ``checkpoint`` (rewritten atomically, every tensor and other field kept): for a model
    trained before checkpoints carried a palette."""
    from worldsim.checkpoint import load_checkpoint, save_checkpoint
    from worldsim.data.dataset import ClipDataset

    tensors, meta = load_checkpoint(checkpoint)
    R = int(meta.get("resolution") or 0)
    if R < 1:
        raise CheckpointError(f"checkpoint '{checkpoint}' records no resolution; it was not written by worldsim")
    ds = ClipDataset(paths, clip_len=1, resolution=R)
    if meta.get("env_id") and ds.env_id != meta["env_id"]:
        raise DataError(f"the episodes are {ds.env_id} but checkpoint '{checkpoint}' plays {meta['env_id']}; "
                        f"pass episodes of its game")
    palette = palette_of(ds)
    if palette is None:
        raise DataError(f"the frames of {ds.env_id} hold more than {MAX_COLOURS} colours at {R}x{R}: the game is "
                        f"not drawn from a palette, so its model draws freely")
    meta = {k: v for k, v in meta.items() if k not in ("format", "code_version", "checksum")}
    save_checkpoint(checkpoint, tensors, {**meta, "palette": palette.to_meta()})
    return palette
