"""``worldsim collect``: play a game with a policy and record episodes, one env per worker process.

    worldsim collect --env ALE/Boxing-v5 --policy sticky --steps 200000 --out data/boxing \
        [--workers 2] [--heldout-episodes N] [--seed S] [--json PATH] [key=value ...]

Layout of ``--out``::

    collection.json        the settings (env, policy, seed, codec); a re-run must match them
    train/ep_000000/ ...   training episodes: seeds derived from (seed, 'train', index)
    heldout/ep_000000/ ... held-out episodes: seeds derived from (seed, 'heldout', index), a separate
                           stream, and ``split: heldout`` in their metadata

``--steps`` is the total number of training steps (recorded frames) in the directory. Re-running
continues to that total: finished episodes stay, episodes a crash left unclosed are deleted and
collected again under the same seeds. Workers share one step budget, so the total is exact; the
episode that meets the budget is cut there (``end: budget``).

Reproducibility: episode ``i`` of a split always uses the same env seed and policy seed (recorded in
its metadata, with its length), so any episode can be replayed exactly. With ``--workers 0`` or 1 the
whole collection repeats bit for bit; with more, where the budget cut falls depends on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import queue
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from worldsim.config import load_config, to_dict
from worldsim.data.episode import EpisodeWriter, episode_length, is_episode_dir, write_json_atomic
from worldsim.envs import EnvConfig, GameEnv, Policy, make_env, make_policy
from worldsim.errors import ConfigError, DataError, WorldsimError

log = logging.getLogger("worldsim.data")

MANIFEST = "collection.json"
MANIFEST_FORMAT = "worldsim-collection-1"
SPLIT_CODES = {"train": 0, "heldout": 1}
SEED_SCHEME = "numpy SeedSequence([seed, split(train=0, heldout=1), index]).generate_state(2): env, policy"


@dataclass
class CollectConfig:
    """What ``worldsim collect`` does; ``configs/collect*.yaml`` presets fill it."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: str = "sticky"  # random | sticky | scripted
    policy_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. repeat_prob for sticky, epsilon for scripted
    steps: int = 10_000  # total training steps (recorded frames) the directory should hold
    out: str = ""  # dataset directory
    workers: int = 2  # processes, one env each; 0 = play in this process
    heldout_episodes: int = 0  # whole episodes from a separate seed stream, for evaluation only
    seed: int = 0  # root of every episode's seeds
    codec: str = "zlib"  # frame storage: zlib (lossless, ~50x smaller on Atari) or raw
    max_episode_frames: Optional[int] = None  # cut training episodes at this many frames (None: the game's end)


def episode_seeds(seed: int, split: str, index: int) -> tuple[int, int]:
    """(env seed, policy seed) of episode ``index`` of ``split``: independent streams per split."""
    env_seed, policy_seed = np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index)]).generate_state(2)
    return int(env_seed), int(policy_seed)


def record_episode(env: GameEnv, policy: Policy, path: Path, *, env_seed: int, policy_seed: int,
                   meta: dict[str, Any], claim: Callable[[], bool] | None = None, max_frames: int | None = None,
                   codec: str = "zlib", on_step: Callable[[], None] | None = None) -> tuple[int, str]:
    """Play one episode into ``path``; returns (frames recorded, end reason).

    Each step records the frame and the action the policy chose after seeing it (step alignment),
    with the reward that action earned. The game's final frame is recorded too (reward 0; its action
    is never executed). ``claim()`` is asked before each frame is recorded (a shared step budget);
    when it says no, the episode ends there (``end: budget``). Returns (0, 'budget') without creating
    anything when not even the first frame may be recorded.
    """
    claim = claim or (lambda: True)
    if not claim():
        return 0, "budget"
    frame = env.reset(seed=env_seed)
    policy.reset(seed=policy_seed)
    n, end = 0, "budget"
    with EpisodeWriter(path, meta, codec=codec) as w:

        def record(frame, action, **kw) -> None:
            nonlocal n
            w.append(frame, action, **kw)
            n += 1
            if on_step:
                on_step()

        while True:
            ts = time.perf_counter_ns()
            action = policy(frame)
            if max_frames is not None and n + 1 >= max_frames:
                record(frame, action, timestamp_ns=ts)
                end = "max_frames"
                break
            nxt, reward, terminated, truncated = env.step(action)
            record(frame, action, reward=reward, timestamp_ns=ts)
            frame = nxt
            if terminated or truncated:
                end = "terminated" if terminated else "truncated"
                if claim():
                    record(frame, policy(frame), terminated=terminated)
                break
            if not claim():
                break
        w.close(end=end)
    return n, end


def _episode_meta(env: GameEnv, policy: Policy, cfg: CollectConfig, split: str, index: int,
                  env_seed: int, policy_seed: int) -> dict[str, Any]:
    return {**env.describe(), **policy.describe(), "policy_kwargs": dict(cfg.policy_kwargs), "split": split,
            "seed": env_seed, "policy_seed": policy_seed, "collection_seed": cfg.seed, "episode_index": index,
            "seed_scheme": SEED_SCHEME, "recorder": "worldsim collect"}


def _episode_path(out: Path, split: str, index: int) -> Path:
    return out / split / f"ep_{index:06d}"


class _Player:
    """One env + policy, playing assigned episodes (in a worker process or in-process)."""

    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg
        self.env = make_env(cfg.env)
        self.policy = make_policy(cfg.policy, self.env, seed=0, **cfg.policy_kwargs)

    def play(self, split: str, index: int, claim, on_step) -> tuple[int, str]:
        out = Path(self.cfg.out)
        env_seed, policy_seed = episode_seeds(self.cfg.seed, split, index)
        meta = _episode_meta(self.env, self.policy, self.cfg, split, index, env_seed, policy_seed)
        path = _episode_path(out, split, index)
        max_frames = self.cfg.max_episode_frames if split == "train" else None
        return record_episode(self.env, self.policy, path, env_seed=env_seed, policy_seed=policy_seed, meta=meta,
                              claim=claim if split == "train" else None, max_frames=max_frames,
                              codec=self.cfg.codec, on_step=on_step)


def _worker(cfg_dict: dict, budget, tasks, results) -> None:
    """Worker process: build the env once, then play (split, index) tasks until a None arrives."""
    try:
        from worldsim.config import from_dict

        player = _Player(from_dict(CollectConfig, cfg_dict, "collect config"))

        def claim() -> bool:
            with budget.get_lock():
                if budget.value <= 0:
                    return False
                budget.value -= 1
                return True

        while (task := tasks.get()) is not None:
            split, index = task
            pending, last = [0], [time.monotonic()]

            def on_step() -> None:
                pending[0] += 1
                now = time.monotonic()
                if now - last[0] > 0.25:
                    results.put(("progress", split, pending[0]))
                    pending[0], last[0] = 0, now

            n, end = player.play(split, index, claim, on_step)
            results.put(("progress", split, pending[0]))
            results.put(("done", split, index, n, end))
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # reported by the parent, which stops the collection
        msg = str(e) if isinstance(e, WorldsimError) else traceback.format_exc()
        results.put(("error", type(e).__name__, msg))


# ---------------------------------------------------------------------------------------------
# the collection directory


def _manifest_settings(cfg: CollectConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    return {"env": d["env"], "policy": d["policy"], "policy_kwargs": d["policy_kwargs"], "seed": d["seed"],
            "codec": d["codec"], "max_episode_frames": d["max_episode_frames"]}


@contextlib.contextmanager
def _locked(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".collect.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another 'worldsim collect' is writing to '{out}'; wait for it or pick another --out") from None
        yield


def _prepare(out: Path, cfg: CollectConfig) -> dict[str, dict[int, int]]:
    """Check ``out`` against the settings, drop unclosed episodes, return {split: {index: steps}} done."""
    mpath = out / MANIFEST
    settings = _manifest_settings(cfg)
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"'{mpath}' is not valid JSON ({e}); restore it or collect into a new --out") from None
        old = manifest.get("settings", {})
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise DataError(f"'{out}' holds a collection with other settings ({'; '.join(diff)}); re-run with the "
                            f"same settings to continue it, or pick another --out")
    else:
        stray = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
        if stray:
            raise DataError(f"'{out}' is not empty and holds no {MANIFEST} ({stray[0].name}, ...); "
                            f"collect into an empty or new --out directory")
        manifest = {"format": MANIFEST_FORMAT, "settings": settings, "seed_scheme": SEED_SCHEME, "runs": []}
    done: dict[str, dict[int, int]] = {"train": {}, "heldout": {}}
    for split in done:
        d = out / split
        if not d.exists():
            continue
        for ep in sorted(d.iterdir()):
            if not ep.name.startswith("ep_"):
                continue
            try:
                index = int(ep.name[3:])
                n, complete = episode_length(ep) if is_episode_dir(ep) else (0, False)
            except (ValueError, DataError):
                n, complete = 0, False
            if complete:
                done[split][index] = n
            else:  # a crash cut it short: same seeds, so collecting it again reproduces it
                log.warning("discarding unclosed episode %s (%d steps); it is collected again", ep, n)
                shutil.rmtree(ep)
    write_json_atomic(mpath, manifest)
    return done


def _record_run(out: Path, run: dict[str, Any]) -> None:
    mpath = out / MANIFEST
    manifest = json.loads(mpath.read_text())
    manifest["runs"].append(run)
    write_json_atomic(mpath, manifest)


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect until ``cfg.out`` holds ``cfg.steps`` training steps and ``cfg.heldout_episodes``
    held-out episodes; returns a summary (steps, episodes, steps/s)."""
    if not cfg.out:
        raise ConfigError("collect needs an output directory: pass --out DIR (e.g. data/boxing)")
    if cfg.steps < 0 or cfg.heldout_episodes < 0 or cfg.workers < 0:
        raise ConfigError("steps, heldout_episodes and workers must be >= 0")
    if cfg.max_episode_frames is not None and cfg.max_episode_frames < 1:
        raise ConfigError(f"max_episode_frames must be >= 1 or null (got {cfg.max_episode_frames})")
    # Fail on a bad game, policy or option here, before any process starts or directory is touched.
    probe = make_env(cfg.env)
    make_policy(cfg.policy, probe, seed=0, **cfg.policy_kwargs)
    period = probe.frame_period  # every episode records it (env.describe()): the game time of one step
    probe.close()
    out = Path(cfg.out)
    with _locked(out):
        done = _prepare(out, cfg)
        train_before = sum(done["train"].values())
        heldout_todo = [j for j in range(cfg.heldout_episodes) if j not in done["heldout"]]
        budget_steps = max(0, cfg.steps - train_before)
        t0 = time.perf_counter()
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=min(train_before, cfg.steps), unit="step", dynamic_ncols=True,
                   desc=f"collect {cfg.env.env_id}", disable=not progress, smoothing=0.1)
        counts = {"train": 0, "heldout": 0}
        new_eps = {"train": 0, "heldout": 0}

        def on_progress(split: str, k: int) -> None:
            counts[split] += k
            if split == "train":
                bar.update(k)
            else:
                bar.set_postfix(heldout=f"{len(done['heldout'])}/{cfg.heldout_episodes} eps", refresh=False)

        def on_done(split: str, index: int, n: int) -> None:
            if n:
                done[split][index] = n
                new_eps[split] += 1
            on_progress(split, 0)

        free_train = (i for i in range(10**9) if i not in done["train"])
        try:
            if cfg.workers == 0:
                _collect_inline(cfg, heldout_todo, free_train, budget_steps, on_progress, on_done)
            else:
                _collect_parallel(cfg, heldout_todo, free_train, budget_steps, on_progress, on_done)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        steps_now = counts["train"] + counts["heldout"]
        summary = {
            "env_id": cfg.env.env_id, "policy": cfg.policy, "out": str(out), "workers": cfg.workers,
            "steps_requested": cfg.steps, "train_steps": sum(done["train"].values()),
            "train_episodes": len(done["train"]), "heldout_steps": sum(done["heldout"].values()),
            "heldout_episodes": len(done["heldout"]), "steps_this_run": steps_now,
            "episodes_this_run": new_eps["train"] + new_eps["heldout"], "seconds": round(seconds, 3),
            "steps_per_s": round(steps_now / seconds, 1) if seconds > 0 else None,
            "frame_period": period.to_meta(),
        }
        _record_run(out, {k: summary[k] for k in ("steps_requested", "steps_this_run", "workers", "seconds")}
                    | {"finished_unix": time.time()})
    return summary


def _collect_inline(cfg, heldout_todo, free_train, budget_steps, on_progress, on_done) -> None:
    player = _Player(cfg)
    left = [budget_steps]

    def claim() -> bool:
        if left[0] <= 0:
            return False
        left[0] -= 1
        return True

    for j in heldout_todo:
        n, _ = player.play("heldout", j, None, lambda: on_progress("heldout", 1))
        on_done("heldout", j, n)
    while left[0] > 0:
        i = next(free_train)
        n, _ = player.play("train", i, claim, lambda: on_progress("train", 1))
        on_done("train", i, n)


def _collect_parallel(cfg, heldout_todo, free_train, budget_steps, on_progress, on_done) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork after threads (tqdm, flushers); workers import only what they need
    budget = ctx.Value("q", budget_steps)
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(to_dict(cfg), budget, tasks, results), daemon=True,
                         name=f"collect-{k}") for k in range(cfg.workers)]
    for p in procs:
        p.start()
    heldout = list(heldout_todo)

    def next_task():
        if heldout:
            return "heldout", heldout.pop(0)
        if budget.value > 0:
            return "train", next(free_train)
        return None

    active = 0
    try:
        for _ in procs:
            t = next_task()
            if t is None:
                break
            tasks.put(t)
            active += 1
        while active:
            try:
                msg = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive()]
                if dead:
                    raise WorldsimError(f"collect worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                        f"re-run the same command to continue")
                continue
            kind = msg[0]
            if kind == "progress":
                on_progress(msg[1], msg[2])
            elif kind == "done":
                _, split, index, n, _end = msg
                on_done(split, index, n)
                active -= 1
                t = next_task()
                if t is not None:
                    tasks.put(t)
                    active += 1
            elif kind == "error":
                _, name, text = msg
                raise WorldsimError(f"collect worker failed: {name}: {text.strip().splitlines()[-1]}"
                                    if name != "DataError" else text)
    finally:
        for _ in procs:
            tasks.put(None)
        deadline = time.monotonic() + 10
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join()


# ---------------------------------------------------------------------------------------------
# command line

_FLAGS = {"env": "env.env_id", "policy": "policy", "steps": "steps", "out": "out", "workers": "workers",
          "heldout_episodes": "heldout_episodes", "seed": "seed", "frameskip": "env.frameskip",
          "max_episode_steps": "env.max_episode_steps", "repeat_action_probability": "env.repeat_action_probability",
          "codec": "codec", "max_episode_frames": "max_episode_frames"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worldsim collect", description="Play a game with a policy and record "
                                 "episodes (resumable: re-run to continue to --steps).")
    ap.add_argument("--config", help="YAML preset, e.g. configs/collect_boxing.yaml")
    ap.add_argument("--env", help="game id (default ALE/Boxing-v5; worldsim/Tiny-v0 is the built-in game)")
    ap.add_argument("--policy", help="random | sticky | scripted (default sticky)")
    ap.add_argument("--steps", type=int, help="total training steps the directory should hold")
    ap.add_argument("--out", help="dataset directory")
    ap.add_argument("--workers", type=int, help="worker processes, one env each (0 = this process)")
    ap.add_argument("--heldout-episodes", type=int, help="held-out episodes (separate seeds, split=heldout)")
    ap.add_argument("--seed", type=int, help="root seed of all episodes")
    ap.add_argument("--frameskip", type=int)
    ap.add_argument("--max-episode-steps", type=int, help="truncate every episode after this many steps")
    ap.add_argument("--repeat-action-probability", type=float, help="ALE sticky actions (0 = deterministic)")
    ap.add_argument("--max-episode-frames", type=int, help="cut training episodes at this many frames")
    ap.add_argument("--codec", choices=["zlib", "raw"])
    ap.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. policy_kwargs.repeat_prob=0.9")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in _FLAGS.items() if getattr(args, flag) is not None]
    cfg = load_config(CollectConfig, args.config, overrides + list(args.overrides))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = collect(cfg, progress=not args.no_progress)
    fp = summary["frame_period"]
    print(f"{summary['train_steps']} train steps ({fp['period_ms']:.1f} ms of game time each: frameskip "
          f"{fp['frameskip']} at {fp['emulator_hz']:g} Hz) in {summary['train_episodes']} episodes, "
          f"{summary['heldout_episodes']} held-out episodes ({summary['heldout_steps']} steps) in {cfg.out}; "
          f"this run: {summary['steps_this_run']} steps in {summary['seconds']:.1f}s "
          f"({summary['steps_per_s'] or 0:.0f} steps/s, {cfg.workers} workers)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.json), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
