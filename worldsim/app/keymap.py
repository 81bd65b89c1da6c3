"""Keys -> game actions, derived from the checkpoint's action meanings.

ALE names every action by its parts: ``UPRIGHTFIRE`` = up + right + fire, ``NOOP`` = nothing. So
the keymap is: keys -> held parts -> the action whose parts are exactly the held ones. Arrows and
WASD move, space (or Enter) fires, and holding two keys gives the diagonal or the firing move when
the game has it. Opposite directions held together resolve to the one pressed last (a player who
slides from left to right without lifting the first key means right). When the game lacks the
exact combination (Breakout has no UP) the action keeps the most recently pressed parts it can.

``Keymap`` is pure logic over part names; ``HeldKeys`` follows key-down/up events by key code.
The pygame key table is built in ``default_bindings()`` so the logic is testable without a display.
"""

from __future__ import annotations

import itertools
from typing import Sequence

PARTS = ("UP", "DOWN", "LEFT", "RIGHT", "FIRE")
OPPOSITE = {"UP": "DOWN", "DOWN": "UP", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def parse_meaning(name: str) -> frozenset[str] | None:
    """'UPRIGHTFIRE' -> {'UP', 'RIGHT', 'FIRE'}; 'NOOP' -> {}; None for names outside the vocabulary."""
    rest = name.upper()
    if rest == "NOOP":
        return frozenset()
    parts = []
    while rest:
        for p in PARTS:
            if rest.startswith(p):
                parts.append(p)
                rest = rest[len(p):]
                break
        else:
            return None
    return frozenset(parts)


class Keymap:
    def __init__(self, action_meanings: Sequence[str]):
        self.action_meanings = list(action_meanings)
        self.table: dict[frozenset[str], int] = {}
        for i, name in enumerate(self.action_meanings):
            parts = parse_meaning(name)
            if parts is not None and parts not in self.table:
                self.table[parts] = i
        self.noop = self.table.get(frozenset(), 0)

    def resolve(self, pressed: Sequence[str]) -> frozenset[str]:
        """Held parts in press order (oldest first) -> the parts that count (last of opposites wins)."""
        out: list[str] = []
        for p in pressed:
            if p in out:
                out.remove(p)
            if p in OPPOSITE and OPPOSITE[p] in out:
                out.remove(OPPOSITE[p])
            out.append(p)
        return frozenset(out)

    def action_for(self, pressed: Sequence[str]) -> int:
        """The action for the held parts (press order, oldest first)."""
        order = list(dict.fromkeys(reversed(list(pressed))))  # newest first, unique
        want = self.resolve(pressed)
        if want in self.table:
            return self.table[want]
        # Largest subset the game has; among equals, the one keeping the most recent presses.
        rank = {p: i for i, p in enumerate(order)}
        best = None
        for n in range(len(want) - 1, 0, -1):
            for sub in itertools.combinations(sorted(want, key=rank.get), n):
                key = frozenset(sub)
                if key in self.table:
                    score = sorted(rank[p] for p in sub)
                    if best is None or score < best[0]:
                        best = (score, self.table[key])
            if best is not None:
                return best[1]
        return self.noop

    def name(self, action: int) -> str:
        return self.action_meanings[action] if 0 <= action < len(self.action_meanings) else "NONE"


class HeldKeys:
    """Which bound keys are down, in press order, from key-down/up events (not polled state)."""

    def __init__(self, bindings: dict[int, str]):
        self.bindings = dict(bindings)
        self.down: list[int] = []  # key codes, oldest first

    def press(self, key: int) -> bool:
        if key not in self.bindings:
            return False
        if key in self.down:
            self.down.remove(key)
        self.down.append(key)
        return True

    def release(self, key: int) -> bool:
        if key not in self.bindings or key not in self.down:
            return False
        self.down.remove(key)
        return True

    def clear(self) -> None:
        self.down.clear()

    def parts(self) -> list[str]:
        return [self.bindings[k] for k in self.down]


def default_bindings() -> dict[int, str]:
    """Arrows and WASD move, space and Enter fire."""
    import pygame

    return {pygame.K_UP: "UP", pygame.K_w: "UP", pygame.K_DOWN: "DOWN", pygame.K_s: "DOWN",
            pygame.K_LEFT: "LEFT", pygame.K_a: "LEFT", pygame.K_RIGHT: "RIGHT", pygame.K_d: "RIGHT",
            pygame.K_SPACE: "FIRE", pygame.K_RETURN: "FIRE"}


def controls_text(keymap: Keymap, arrows: dict[str, str] | None = None) -> list[str]:
    """Lines for the start screen (``key\tdescription``): which parts this game has. ``arrows``: arrow ->
    the part the game gives it, where it differs (Pong's UP arrow is its RIGHT: "move (up, down)")."""
    have = set().union(*keymap.table.keys()) if keymap.table else set()
    arrows = arrows or {}
    lines = []
    moves = [p for p in ("UP", "DOWN", "LEFT", "RIGHT") if arrows.get(p, p) in have
             and (p in arrows or p not in arrows.values())]
    if moves:
        lines.append("arrows / WASD\tmove (" + ", ".join(m.lower() for m in moves) + ")")
    if "FIRE" in have:
        lines.append("space / enter\tfire")
    if any(len(k & {"UP", "DOWN", "LEFT", "RIGHT"}) == 2 for k in keymap.table):
        lines.append("two keys\tdiagonal moves")
    return lines
