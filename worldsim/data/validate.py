"""``validate(path)``: every problem in a dataset or a single episode, one line each, with the fix.

Checks: unreadable or corrupt files (torn tails, checksum mismatches, bad JSON, truncated .npz),
wrong dtypes or shapes, frames and actions of different lengths, actions outside the action set,
unknown game ids, action meanings that differ from the game's, terminal flags before the end,
timestamps going backwards, and at the dataset level mixed action sets and held-out episodes whose
seeds also appear among training episodes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from worldsim.data.episode import SPLITS, list_episodes, read_episode, scan_episode, scan_problems
from worldsim.errors import DataError, WorldsimError


class _GameActions:
    """The action meanings each game really has (asks the emulator once per game and action-space kind)."""

    def __init__(self):
        self._cache: dict[tuple[str, bool], list[str] | None] = {}

    def __call__(self, env_id: str, full: bool) -> list[str] | None:
        key = (env_id, full)
        if key not in self._cache:
            try:
                from worldsim.envs import make_env

                env = make_env(env_id, full_action_space=full)
                self._cache[key] = list(env.action_meanings)
                env.close()
            except WorldsimError:
                self._cache[key] = None
        return self._cache[key]


def validate_episode(path: Path, game_actions: _GameActions | None = None) -> list[str]:
    """Problems of one episode (directory or .npz)."""
    game_actions = game_actions or _GameActions()
    try:
        ep = read_episode(path, load_frames=path.suffix == ".npz", warn=False)
        problems, intact = [], None
        if path.is_dir():  # every chunk, frame payloads included: what 'worldsim data repair' acts on
            scan = scan_episode(path, ep.meta, check_frames=True)
            fix = (f"'worldsim data repair {path}' keeps every intact step and sets the damaged bytes aside"
                   if scan.runs else "nothing in it is intact: delete the episode or re-record it")
            problems = [f"{pr}; fix: {fix}" for pr in scan_problems(path, ep.meta, scan)]
            intact = scan.intact_steps
    except DataError as e:
        return [f"{e}"]
    meta, T = ep.meta, len(ep)
    if T == 0 and not intact:
        problems.append(f"'{path}': episode has no steps; fix: delete it")
    from worldsim.envs import check_env_id

    try:
        check_env_id(ep.env_id)
        real = game_actions(ep.env_id, bool(meta.get("full_action_space", False)))
        if real is not None and real != ep.action_meanings:
            problems.append(f"'{path}': action_meanings ({len(ep.action_meanings)}: {', '.join(ep.action_meanings[:6])}"
                            f"...) differ from {ep.env_id}'s ({len(real)}); fix: record with the game's own action "
                            f"set or set full_action_space in the metadata")
    except WorldsimError as e:
        problems.append(f"'{path}': {e}; fix: correct env_id in the metadata")
    n = ep.num_actions
    bad = np.nonzero((ep.actions < 0) | (ep.actions >= n))[0]
    if len(bad):
        t = int(bad[0])
        problems.append(f"'{path}': {len(bad)} actions outside the action set 0..{n - 1} (first: {int(ep.actions[t])} "
                        f"at step {t}); fix: map actions into the game's action set or fix action_meanings")
    early = np.nonzero(ep.terminated[:-1])[0]
    if len(early):
        problems.append(f"'{path}': terminated is set at step {int(early[0])}, before the last step {T - 1}; "
                        f"fix: split the episode at its game-over frames")
    back = np.nonzero(np.diff(ep.timestamps_ns) < 0)[0]
    if len(back):
        problems.append(f"'{path}': timestamps go backwards at step {int(back[0]) + 1}; fix: record "
                        f"time.perf_counter_ns() of one process per episode")
    if meta.get("split", "train") not in SPLITS:
        problems.append(f"'{path}': split '{meta.get('split')}' is not one of {', '.join(SPLITS)}; "
                        f"fix: set it in the metadata")
    if ep.frames is not None and len(ep.frames) and ep.frames.shape[1] * ep.frames.shape[2] == 0:
        problems.append(f"'{path}': frames have an empty shape {ep.frames.shape}; fix: re-export them")
    return problems


def validate(path: str | Path) -> list[str]:
    """All problems under ``path`` (a dataset directory, an episode directory or a .npz); [] if none."""
    p = Path(path)
    try:
        episodes = list_episodes(p)
    except DataError as e:
        return [str(e)]
    if not episodes:
        return [f"'{p}': no episodes found; fix: pass a dataset directory written by 'worldsim collect' "
                f"or 'play.py --record', an episode directory or a .npz"]
    problems: list[str] = []
    game_actions = _GameActions()
    games: dict[tuple[str, tuple[str, ...]], list[Path]] = defaultdict(list)
    seeds: dict[str, dict[tuple[str, int], Path]] = {"train": {}, "heldout": {}}
    for ep in episodes:
        problems += validate_episode(ep, game_actions)
        try:
            e = read_episode(ep, load_frames=False, warn=False)
        except DataError:
            continue  # already reported
        games[(e.env_id, tuple(e.action_meanings))].append(ep)
        if e.meta.get("seed") is not None and e.split in seeds:
            seeds[e.split][(e.env_id, int(e.meta["seed"]))] = ep
    if len(games) > 1:
        desc = "; ".join(f"{g[0]} with {len(g[1])} actions: {len(v)} episodes (e.g. '{v[0]}')" for g, v in games.items())
        problems.append(f"'{p}': episodes mix games or action sets ({desc}); fix: keep one game per dataset directory")
    for key, ep in seeds["heldout"].items():
        if key in seeds["train"]:
            problems.append(f"'{ep}': held-out episode uses seed {key[1]}, as does train episode '{seeds['train'][key]}'; "
                            f"fix: re-collect held-out episodes with other seeds")
    return problems
