"""The window: a frame scaled up crisply (nearest neighbour, aspect kept, letterboxed), plus text.

Boundary: pygame drawing only; it knows nothing of models or sessions. ``draw(...)`` composes one
screen (frame, HUD lines, a banner, a centred panel) and flips it, returning the
``perf_counter_ns`` right after the flip: the moment the latency meter calls "presented".
``--headless`` runs the same code on SDL's dummy video driver (``init_pygame(headless=True)``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def init_pygame(headless: bool = False):
    """Initialise only what we use (display, fonts): no audio device is opened."""
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()
    pygame.font.init()
    return pygame


class Screen:
    def __init__(self, frame_hw: tuple[int, int], *, scale: int = 10, fullscreen: bool = False,
                 title: str = "worldsim", hide_cursor: bool = False, resizable: bool = True,
                 max_window: tuple[int, int] = (1600, 1000)):
        self.frame_hw = frame_hw
        self.scale, self.fullscreen, self.title = scale, fullscreen, title
        self.hide_cursor, self.resizable, self.max_window = hide_cursor, resizable, max_window
        self.surface = None
        self.flips = 0
        self._fonts: dict[int, object] = {}
        self._text_cache: dict[tuple, object] = {}
        self._last_frame = None

    # -- window ----------------------------------------------------------------------------------
    def open(self) -> "Screen":
        import pygame

        pygame.display.set_caption(self.title)
        if self.fullscreen:
            self.surface = pygame.display.set_mode((0, 0), pygame.FULLSCREEN | pygame.NOFRAME)
        else:
            h, w = self.frame_hw
            s = max(1, min(self.scale, self.max_window[0] // w, self.max_window[1] // h))
            flags = pygame.RESIZABLE if self.resizable else 0
            self.surface = pygame.display.set_mode((w * s, h * s), flags)
        if self.hide_cursor:
            pygame.mouse.set_visible(False)
        return self

    def set_frame_size(self, frame_hw: tuple[int, int]) -> None:
        self.frame_hw = tuple(frame_hw)

    def resized(self, size: tuple[int, int]) -> None:
        import pygame

        if not self.fullscreen:
            self.surface = pygame.display.set_mode(size, pygame.RESIZABLE if self.resizable else 0)

    def close(self) -> None:
        import pygame

        pygame.display.quit()

    # -- drawing ---------------------------------------------------------------------------------
    def frame_rect(self, fh: int, fw: int):
        """Largest rect of the frame's aspect inside the window; an integer scale when it costs little."""
        W, H = self.surface.get_size()
        fit = min(W / fw, H / fh)
        s = float(int(fit)) if fit >= 1 and int(fit) >= 0.85 * fit else fit  # whole pixels look crisper
        w, h = max(1, int(fw * s)), max(1, int(fh * s))
        return (W - w) // 2, (H - h) // 2, w, h

    def font(self, size: int):
        import pygame

        f = self._fonts.get(size)
        if f is None:
            f = self._fonts[size] = pygame.font.Font(None, size)
        return f

    def text_surface(self, text: str, size: int, color=(235, 235, 235)):
        key = (text, size, color)
        s = self._text_cache.get(key)
        if s is None:
            if len(self._text_cache) > 512:  # the HUD changes every frame: keep the cache bounded
                self._text_cache.clear()
            s = self._text_cache[key] = self.font(size).render(text, True, color)
        return s

    def _blit_frame(self, frame: np.ndarray, dim: bool = False) -> None:
        import pygame

        fh, fw = frame.shape[:2]
        # Scaled straight into the window (no scaled copy to allocate and blit: half the cost of a
        # frame's drawing, ~0.25 ms at 640x640, and the display loop shares the model's cores). The
        # source is converted to the window's pixel format first, which the in-place scale needs.
        src = pygame.image.frombuffer(np.ascontiguousarray(frame), (fw, fh), "RGB").convert(self.surface)
        x, y, w, h = self.frame_rect(fh, fw)
        if (w, h) != self.surface.get_size():  # letterboxed: clear the bars
            self.surface.fill((0, 0, 0))
        pygame.transform.scale(src, (w, h), self.surface.subsurface((x, y, w, h)))
        if dim:
            shade = pygame.Surface((w, h), pygame.SRCALPHA)
            shade.fill((0, 0, 0, 150))
            self.surface.blit(shade, (x, y))

    def _box(self, rect, alpha: int = 160) -> None:
        import pygame

        shade = pygame.Surface((rect[2], rect[3]), pygame.SRCALPHA)
        shade.fill((0, 0, 0, alpha))
        self.surface.blit(shade, rect[:2])

    def _lines(self, lines, x: int, y: int, size: int, color=(235, 235, 235), box: bool = True) -> int:
        surfs = [self.text_surface(line, size, color) for line in lines if line]
        if not surfs:
            return y
        if box:
            w = max(s.get_width() for s in surfs) + 12
            h = sum(s.get_height() + 2 for s in surfs) + 8
            self._box((x - 6, y - 4, w, h))
        for s in surfs:
            self.surface.blit(s, (x, y))
            y += s.get_height() + 2
        return y

    def draw(self, frame: np.ndarray | None = None, *, hud=(), warn=(), banner: str | None = None,
             panel: tuple[str, list[str]] | None = None, dim: bool = False) -> int:
        """Compose one screen and flip it; returns perf_counter_ns just after the flip."""
        import pygame

        if frame is not None:
            self._last_frame = frame
        frame = self._last_frame
        if frame is not None:
            self._blit_frame(frame, dim=dim or panel is not None)
        else:
            self.surface.fill((12, 12, 16))
        W, H = self.surface.get_size()
        size = max(18, min(28, H // 28))
        y = self._lines(hud, 10, 8, size)
        self._lines(warn, 10, y + 4, size, color=(255, 200, 80))
        if banner:
            big = max(28, min(72, W // 14))
            s = self.text_surface(banner, big, (255, 255, 255))
            # A slow pulse so an idle booth looks alive; derived from the clock, not a counter.
            if int(time.monotonic() * 1.5) % 2 == 0:
                bx, by = (W - s.get_width()) // 2, int(H * 0.78)
                self._box((bx - 16, by - 10, s.get_width() + 32, s.get_height() + 20), 170)
                self.surface.blit(s, (bx, by))
        if panel is not None:
            title, lines = panel
            ts = self.text_surface(title, max(30, min(64, W // 16)), (255, 255, 255))
            # "key\tdescription" lines line up in two columns
            rows = [[self.text_surface(part, size + 2) for part in line.split("\t")] if line else [] for line in lines]
            left = max([r[0].get_width() for r in rows if len(r) == 2] + [0])
            gap = 18 if left else 0
            width = lambda r: (left + gap + r[1].get_width()) if len(r) == 2 else (r[0].get_width() if r else 0)
            line_h = self.font(size + 2).get_linesize() + 4
            total = ts.get_height() + 16 + line_h * len(rows)
            y = (H - total) // 2
            self.surface.blit(ts, ((W - ts.get_width()) // 2, y))
            y += ts.get_height() + 16
            x0 = (W - max([width(r) for r in rows] + [0])) // 2
            for r in rows:
                if len(r) == 2:
                    self.surface.blit(r[0], (x0 + left - r[0].get_width(), y))
                    self.surface.blit(r[1], (x0 + left + gap, y))
                elif r:
                    self.surface.blit(r[0], ((W - r[0].get_width()) // 2, y))
                y += line_h
        pygame.display.flip()
        self.flips += 1
        return time.perf_counter_ns()

    def screenshot(self, directory: str | Path) -> Path:
        import pygame

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / time.strftime("worldsim-%Y%m%d-%H%M%S.png")
        n = 1
        while path.exists():
            path = d / time.strftime(f"worldsim-%Y%m%d-%H%M%S-{n}.png")
            n += 1
        pygame.image.save(self.surface, str(path))
        return path
