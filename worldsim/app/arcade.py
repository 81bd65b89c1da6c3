"""The games a player can switch between: the start screen's picker and the kiosk's attract rotation.

Boundary: a mapping name -> opener (a function that loads one game's model and returns its backend,
label, recording meta and pace, as ``worldsim.app.cli`` builds them) in; on ``open(name)``, a ready
``GameEntry`` (a not-yet-started ``Session``, the game's keymap and key bindings, its pace) out. It
draws nothing and parses no flags; the player and the kiosk decide when to switch.

A game whose model cannot be opened (missing or corrupt file, a worker that keeps failing) is marked
broken with its reason (``mark_broken``) and skipped by ``next_after``, so one game's fault leaves the
others playing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from worldsim.errors import WorldsimError

Opener = Callable[[], tuple[Any, str, dict, Any]]  # () -> (backend, label, meta, pace)


@dataclass
class GameEntry:
    name: str  # the short name ('pong')
    title: str  # what the screen says ('Pong')
    session: Any  # worldsim.runtime.Session, not started
    keymap: Any  # worldsim.app.keymap.Keymap
    bindings: dict  # pygame key -> action part (Pong's UP arrow gives RIGHT)
    pace: Any  # worldsim.gametime.Pace
    label: str  # model label for the HUD and the logs
    meta: dict  # recording metadata


def game_bindings(env_id: str) -> dict[int, str]:
    """The player's keys for a game: arrows / WASD / space, each arrow through the game's ``arrows``
    (``worldsim.envs.games``): Pong's UP arrow is its RIGHT action, which moves the paddle up."""
    from worldsim.app.keymap import default_bindings
    from worldsim.envs.games import game_arrows

    arrows = game_arrows(env_id)
    return {key: arrows.get(part, part) for key, part in default_bindings().items()}


def game_title(env_id: str) -> str:
    """'ALE/MsPacman-v5' -> 'Ms. Pac-Man' (the table's title), else the bare game name."""
    from worldsim.envs.games import find_game
    from worldsim.gametime import game_name

    g = find_game(env_id)
    return g.title if g is not None else game_name(env_id)


class Arcade:
    """Games by name, each opened on demand into a fresh session; ``order`` is the picker's and the rotation's."""

    def __init__(self, openers: dict[str, Opener], session_config: Callable[[Any], Any],
                 titles: dict[str, str] | None = None):
        if not openers:
            raise WorldsimError("the arcade has no games; ship a model in assets/ or pass --checkpoint")
        self.openers = dict(openers)
        self.order = list(openers)
        self.titles = dict(titles or {})
        self.session_config = session_config  # pace -> SessionConfig
        self.broken: dict[str, str] = {}  # name -> why it was taken out

    @property
    def playable(self) -> list[str]:
        return [n for n in self.order if n not in self.broken]

    def title(self, name: str) -> str:
        return self.titles.get(name, name)

    def open(self, name: str) -> GameEntry:
        """Load ``name``'s model into a new (not started) session; a failure raises WorldsimError."""
        from worldsim.app.keymap import Keymap
        from worldsim.runtime import Session

        if name not in self.openers:
            raise WorldsimError(f"no game '{name}' in this arcade; games: {', '.join(self.order)}")
        backend, label, meta, pace = self.openers[name]()
        env_id = str(meta.get("env_id", ""))
        session = Session(backend, self.session_config(pace))
        title = self.titles.get(name) or game_title(env_id)
        return GameEntry(name, title, session, Keymap(backend.action_meanings), game_bindings(env_id), pace, label,
                         dict(meta, game=name))

    def mark_broken(self, name: str, why: str) -> None:
        self.broken[name] = why

    def next_after(self, name: str) -> str | None:
        """The next playable game after ``name`` in order (wrapping), or None when no other one plays."""
        if name not in self.order:
            return self.playable[0] if self.playable else None
        i = self.order.index(name)
        for step in range(1, len(self.order) + 1):
            cand = self.order[(i + step) % len(self.order)]
            if cand not in self.broken and cand != name:
                return cand
        return None
