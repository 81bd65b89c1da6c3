"""The arcade: which games worldsim knows by a short name, where each one's model ships, how to make one.

Boundary: a table and lookups, no I/O beyond asking whether an asset file exists. The player
(``python play.py --game pong``), the kiosk's attract rotation, ``--play-real pong`` and the
evaluation's control directions read it; nothing here imports torch or pygame.

    game = get_game("pong")              # or "Pong", "ALE/Pong-v5"
    game.env_id, game.asset              # 'ALE/Pong-v5', 'assets/pong.safetensors'
    shipped_games()                      # the games whose asset file is present, in table order

Keys: the player's arrows are named UP / DOWN / LEFT / RIGHT, and the keymap finds the game's action
with those parts (``worldsim.app.keymap``). Pong names its two moves after the joystick's axis
(``RIGHT`` moves the right paddle up, ``LEFT`` down), so ``arrows`` maps the player's UP arrow to
``RIGHT``; the same table names the control directions of ``worldsim eval`` ("UP" is the key a
player presses, ``RIGHT`` the action the game receives).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from worldsim.errors import WorldsimError
from worldsim.paths import repo_file

DIRECTIONS = ("UP", "DOWN", "LEFT", "RIGHT")


class UnknownGame(WorldsimError):
    """A game name that is not in the table."""


class NotShipped(WorldsimError):
    """A known game whose model file is not in ``assets/``."""


@dataclass(frozen=True)
class Game:
    name: str  # the short name: --game, --play-real, the kiosk log ('pong')
    title: str  # what the screen says ('Pong')
    env_id: str  # the emulator id its data comes from
    asset: str  # the shipped model, relative to the repository root
    collect: tuple[str, ...]  # the collection configs its training data comes from (sticky-random, scripted)
    train: str  # the command that trains the asset (its config is committed)
    # Arrow key (UP/DOWN/LEFT/RIGHT) -> the action part the game gives that key, where it differs.
    arrows: dict = field(default_factory=dict)

    def asset_path(self, root: str | Path | None = None) -> Path:
        """The model file under ``root``; by default found from here or in the clone (``repo_file``)."""
        return repo_file(self.asset) if root is None else Path(root) / self.asset

    def shipped(self, root: str | Path | None = None) -> bool:
        return self.asset_path(root).is_file()

    def how_to_train(self) -> str:
        """The commands that make this game's model, in one line."""
        collect = " and ".join(f"'worldsim collect --config {c}'" for c in self.collect)
        return f"collect with {collect}, train with '{self.train}', copy its student.safetensors to {self.asset}"


GAMES: dict[str, Game] = {g.name: g for g in (
    Game("boxing", "Boxing", "ALE/Boxing-v5", "assets/default.safetensors",
         ("configs/collect_boxing.yaml", "configs/collect_boxing_scripted.yaml", "configs/collect_boxing_switchy.yaml"),
         "bash scripts/reproduce_default.sh"),
    Game("pong", "Pong", "ALE/Pong-v5", "assets/pong.safetensors",
         ("configs/collect_pong_fs2.yaml", "configs/collect_pong_scripted_fs2.yaml"),
         "bash scripts/reproduce_pong.sh",
         arrows={"UP": "RIGHT", "DOWN": "LEFT"}),
    Game("breakout", "Breakout", "ALE/Breakout-v5", "assets/breakout.safetensors",
         ("configs/collect_breakout.yaml", "configs/collect_breakout_scripted.yaml"),
         "worldsim train pipeline configs/breakout.yaml"),
    Game("mspacman", "Ms. Pac-Man", "ALE/MsPacman-v5", "assets/mspacman.safetensors",
         ("configs/collect_mspacman_fs2.yaml", "configs/collect_mspacman_scripted_fs2.yaml"),
         "bash scripts/reproduce_mspacman.sh"),
)}
DEFAULT_GAME = "boxing"


def _key(text: str) -> str:
    """'ALE/MsPacman-v5', 'Ms. Pac-Man', 'mspacman' -> 'mspacman'."""
    from worldsim.envs.policies import game_name

    t = str(text).strip()
    if "/" in t or t.endswith(("-v4", "-v5", "-v0")):
        t = game_name(t)
    return "".join(ch for ch in t.lower() if ch.isalnum())


def find_game(text: str) -> Game | None:
    """The game called ``text`` (short name, title or env id, any case), or None."""
    k = _key(text)
    for g in GAMES.values():
        if k in (g.name, _key(g.title), _key(g.env_id)):
            return g
    return None


def get_game(text: str) -> Game:
    """The game called ``text``; an unknown name raises ``UnknownGame`` naming the games there are."""
    g = find_game(text)
    if g is None:
        near = difflib.get_close_matches(_key(text), list(GAMES), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UnknownGame(f"unknown game '{text}'; {hint}games: {', '.join(GAMES)}")
    return g


def shipped_games(root: str | Path | None = None) -> list[Game]:
    """The games whose model file is in ``assets/`` (under ``root``), in table order."""
    return [g for g in GAMES.values() if g.shipped(root)]


def shipped_model(text: str, root: str | Path | None = None) -> tuple[Game, Path]:
    """(game, its model file) for ``--game``; a game without a shipped model raises ``NotShipped`` with
    what ships and how to train the one asked for."""
    g = get_game(text)
    path = g.asset_path(root)
    if not path.is_file():
        have = ", ".join(x.name for x in shipped_games(root)) or "none"
        raise NotShipped(f"no model of {g.title} ships ({g.asset} is missing; shipped: {have}); to make one, "
                         f"{g.how_to_train()}")
    return g, path


def game_arrows(env_id: str) -> dict[str, str]:
    """Arrow -> action part for the game of ``env_id`` (empty: the arrows are the game's own names)."""
    g = find_game(env_id)
    return dict(g.arrows) if g is not None else {}


def control_directions(env_id: str, meanings: Sequence[str]) -> dict[str, str]:
    """The directions a player has, as (label -> the game's action name): the arrow keys, through the
    game's ``arrows``, whose action exists in ``meanings``. Pong: {'UP': 'RIGHT', 'DOWN': 'LEFT'};
    Breakout: {'LEFT': 'LEFT', 'RIGHT': 'RIGHT'}; Boxing and Ms. Pac-Man: the four arrows."""
    arrows = game_arrows(env_id)
    out = {}
    for d in DIRECTIONS:
        action = arrows.get(d, d)
        if action in meanings and action not in out.values():
            out[d] = action
    return out
