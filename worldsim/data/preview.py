"""mp4 previews of episodes (imageio + imageio-ffmpeg): look at what was collected or recorded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from worldsim.data.episode import Episode, read_episode
from worldsim.errors import DataError


def export_mp4(episode: Episode | str | Path, out_path: str | Path, fps: float = 15, scale: int | None = None,
               max_frames: int | None = None) -> Path:
    """Write an H.264 mp4 of the episode's frames, upscaled by an integer ``scale`` (nearest neighbour,
    so pixels stay crisp; default: enough to be at least 256 pixels tall)."""
    try:
        import imageio.v2 as imageio
    except ImportError as e:
        raise DataError(f"mp4 export needs imageio and imageio-ffmpeg ({e}); pip install imageio imageio-ffmpeg") from None
    ep = episode if isinstance(episode, Episode) else read_episode(episode)
    frames = ep.frames
    if frames is None or len(frames) == 0:
        raise DataError(f"episode '{ep.path}' has no frames to preview")
    if max_frames is not None:
        frames = frames[:max_frames]
    h, w = frames.shape[1:3]
    scale = max(1, math.ceil(256 / h)) if scale is None else int(scale)
    if scale < 1:
        raise DataError(f"preview scale must be a positive integer (got {scale})")
    # H.264 with yuv420p needs even sizes: pad one black row/column where needed.
    H, W = h * scale, w * scale
    pad_h, pad_w = H % 2, W % 2
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = imageio.get_writer(out, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                    ffmpeg_log_level="error", pixelformat="yuv420p")
    except Exception as e:  # missing ffmpeg binary etc.
        raise DataError(f"cannot write '{out}': {str(e).splitlines()[0]}; pip install imageio-ffmpeg") from None
    with writer:
        for f in frames:
            big = np.repeat(np.repeat(np.asarray(f), scale, 0), scale, 1)  # (H, W, 3)
            if pad_h or pad_w:
                big = np.pad(big, ((0, pad_h), (0, pad_w), (0, 0)))
            writer.append_data(big)
    return out
