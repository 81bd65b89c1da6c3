"""``worldsim data``: dataset tools. Thin: each subcommand calls one function of ``worldsim.data``.

    worldsim data validate PATH...                 one line per problem, exit 1 if any
    worldsim data info PATH... [--bench]           episodes, steps, games, actions, size; clips/s
    worldsim data export PATH OUT.npz|OUT.mp4      one episode (or every episode of a dataset into a dir)
    worldsim data preview PATH OUT.mp4             the same as export to mp4
    worldsim data import NPZ... --out DIR          plain .npz episodes -> episode directories
    worldsim data repair PATH                      keep every intact step, set damaged bytes aside
    worldsim data palette PATH... --checkpoint F   write the game's colours in PATH's frames into F
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.episode import list_episodes, read_episode, write_json_atomic
from worldsim.errors import DataError


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        total += sum((Path(root) / f).stat().st_size for f in files if not f.startswith("."))
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def dataset_info(paths: list[str | Path]) -> dict[str, Any]:
    """Summary of the episodes under ``paths`` (reads actions and metadata, not frames)."""
    episodes = [e for p in paths for e in list_episodes(p)]
    if not episodes:
        raise DataError(f"no episodes under {', '.join(map(str, paths))}")
    info: dict[str, Any] = {"episodes": len(episodes), "steps": 0, "incomplete": [], "splits": Counter(),
                            "split_steps": Counter(), "games": Counter(), "policies": Counter(),
                            "frame_shapes": Counter(), "size_bytes": 0, "episode_steps": []}
    hist: dict[str, Counter] = {}
    meanings: dict[str, list[str]] = {}
    for ep in episodes:
        e = read_episode(ep, load_frames=False, warn=False)
        n = len(e)
        info["steps"] += n
        info["episode_steps"].append(n)
        info["splits"][e.split] += 1
        info["split_steps"][e.split] += n
        info["games"][e.env_id] += 1
        info["policies"][str(e.meta.get("policy", "?"))] += 1
        fs = e.frame_shape
        info["frame_shapes"]["x".join(map(str, fs)) if fs else "?"] += 1
        info["size_bytes"] += _size_on_disk(ep)
        if not e.complete:
            info["incomplete"].append(str(ep))
        meanings.setdefault(e.env_id, e.action_meanings)
        hist.setdefault(e.env_id, Counter()).update(e.actions.tolist())
    info["actions"] = {g: {meanings[g][a] if 0 <= a < len(meanings[g]) else f"#{a}": int(c)
                           for a, c in sorted(h.items())} for g, h in hist.items()}
    lens = np.array(info.pop("episode_steps"))
    info["episode_steps"] = {"min": int(lens.min()), "mean": float(lens.mean()), "max": int(lens.max())}
    for k in ("splits", "split_steps", "games", "policies", "frame_shapes"):
        info[k] = dict(info[k])
    return info


def _print_info(info: dict[str, Any]) -> None:
    sp = ", ".join(f"{k} {v}" for k, v in sorted(info["splits"].items()))
    print(f"episodes:    {info['episodes']} ({sp}; {len(info['incomplete'])} incomplete)")
    st = ", ".join(f"{k} {v}" for k, v in sorted(info["split_steps"].items()))
    es = info["episode_steps"]
    print(f"steps:       {info['steps']} ({st}; per episode min {es['min']}, mean {es['mean']:.0f}, max {es['max']})")
    print(f"games:       {', '.join(f'{g} ({n})' for g, n in info['games'].items())}")
    print(f"policies:    {', '.join(f'{g} ({n})' for g, n in info['policies'].items())}")
    print(f"frames:      {', '.join(f'{g} ({n})' for g, n in info['frame_shapes'].items())}")
    per = info["size_bytes"] / max(info["steps"], 1)
    print(f"size:        {_human(info['size_bytes'])} on disk ({_human(per)}/step)")
    for game, h in info["actions"].items():
        total = max(sum(h.values()), 1)
        print(f"actions of {game}:")
        for name, c in h.items():
            bar = "#" * round(40 * c / total)
            print(f"  {name:<14} {c:>9} {100 * c / total:5.1f}% {bar}")
    for p in info["incomplete"][:5]:
        print(f"incomplete:  {p} (see 'worldsim data validate')")


def cmd_validate(args) -> int:
    from worldsim.data.validate import validate

    problems = [pr for p in args.paths for pr in validate(p)]
    for pr in problems:
        print(pr)
    if problems:
        print(f"{len(problems)} problem(s) found")
        return 1
    print(f"ok: {', '.join(args.paths)}")
    return 0


def cmd_info(args) -> int:
    info = dataset_info(args.paths)
    _print_info(info)
    if args.bench:
        from worldsim.data.dataset import ClipDataset, bench_clips

        ds = ClipDataset(args.paths, clip_len=args.clip_len, resolution=args.resolution, split=args.split,
                         cache_dir=args.cache_dir, progress=True)
        b = bench_clips(ds, seconds=args.bench_seconds, batch_size=args.batch_size)
        info["bench"] = b | {"clips": len(ds)}
        print(f"bench:       {len(ds)} clips of {ds.clip_len} frames at {ds.size[0]}x{ds.size[1]}: "
              f"{b['clips_per_s']:.0f} clips/s random access ({b['mb_per_s']:.0f} MB/s), "
              f"{b['batched_clips_per_s']:.0f} clips/s in batches of {b['batch_size']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.json), info)
    return 0


def _export_one(src: Path, out: Path, fmt: str, args) -> Path:
    if fmt == "npz":
        from worldsim.data.npz import export_npz

        return export_npz(src, out)
    from worldsim.data.preview import export_mp4

    return export_mp4(src, out, fps=args.fps, scale=args.scale, max_frames=args.max_frames)


def cmd_export(args, fmt: str | None = None) -> int:
    src, out = Path(args.path), Path(args.out)
    episodes = list_episodes(src)
    fmt = fmt or args.format or (out.suffix.lstrip(".") if out.suffix in (".npz", ".mp4") else
                                 "npz" if not out.suffix else None)
    if fmt not in ("npz", "mp4"):
        raise DataError(f"cannot tell the export format of '{out}'; end it in .npz or .mp4, or pass --format")
    if len(episodes) == 1 and out.suffix == f".{fmt}":
        print(_export_one(episodes[0], out, fmt, args))
        return 0
    if out.suffix:
        raise DataError(f"'{src}' holds {len(episodes)} episodes; pass an output directory, not '{out}'")
    for ep in episodes:
        rel = ep.relative_to(src) if ep != src and src.is_dir() else Path(ep.name)
        name = "_".join(rel.with_suffix("").parts) if len(rel.parts) > 1 else rel.with_suffix("").name
        print(_export_one(ep, out / f"{name}.{fmt}", fmt, args))
    return 0


def cmd_import(args) -> int:
    from worldsim.data.npz import import_npz

    for p in args.paths:
        for src in list_episodes(p):
            if src.suffix != ".npz":
                raise DataError(f"'{src}' is not a .npz; 'import' turns plain .npz episodes into episode directories")
            print(import_npz(src, args.out))
    return 0


def cmd_repair(args) -> int:
    """Repair what validate reports about each episode's files; print what was done and what is left."""
    from worldsim.data.repair import repair_episode
    from worldsim.data.validate import validate_episode

    left = 0
    for ep in list_episodes(args.path):
        if ep.suffix == ".npz":
            for pr in validate_episode(ep):
                print(f"not repaired (a .npz is written whole; export it again from its source): {pr}")
                left += 1
            continue
        try:
            rep = repair_episode(ep)
        except DataError as e:
            print(f"refused: {e}")
            left += 1
            continue
        for line in rep.done:
            print(line)
        for kept in rep.kept:
            for pr in validate_episode(Path(kept)):
                print(f"not repaired (fix by hand): {pr}")
                left += 1
    if left:
        print(f"{left} problem(s) left")
        return 1
    print(f"ok: {args.path}")
    return 0


def cmd_palette(args) -> int:
    from worldsim.data.palette import add_palette

    palette = add_palette(args.checkpoint, args.paths)
    print(f"{args.checkpoint}: {len(palette)} colours (the engine snaps drawn frames to them; "
          f"--engine palette=false to draw freely)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worldsim data", description="dataset tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check episodes; one line per problem; exit 1 if any")
    v.add_argument("paths", nargs="+")
    i = sub.add_parser("info", help="episodes, steps, games, action histogram, size; --bench for clips/s")
    i.add_argument("paths", nargs="+")
    i.add_argument("--bench", action="store_true", help="measure random clip access (builds the resize cache)")
    i.add_argument("--clip-len", type=int, default=16)
    i.add_argument("--resolution", type=int, default=64)
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--bench-seconds", type=float, default=4.0)
    i.add_argument("--split", choices=["train", "heldout"])
    i.add_argument("--cache-dir")
    i.add_argument("--json", metavar="PATH")
    for name, help_ in (("export", "episode(s) -> plain .npz or mp4 preview"), ("preview", "episode(s) -> mp4")):
        e = sub.add_parser(name, help=help_)
        e.add_argument("path")
        e.add_argument("out", help="OUT.npz / OUT.mp4 for one episode, a directory for a dataset")
        if name == "export":
            e.add_argument("--format", choices=["npz", "mp4"])
        e.add_argument("--fps", type=float, default=15)
        e.add_argument("--scale", type=int)
        e.add_argument("--max-frames", type=int)
    m = sub.add_parser("import", help="plain .npz episodes -> episode directories")
    m.add_argument("paths", nargs="+")
    m.add_argument("--out", required=True)
    r = sub.add_parser("repair", help="mend what validate reports: keep every intact step, set the "
                                      "damaged bytes aside beside the episode (<name>.cut/)")
    r.add_argument("path")
    p = sub.add_parser("palette", help="measure the game's colours in episodes and write them into a checkpoint "
                                       "(the engine snaps drawn frames to them)")
    p.add_argument("paths", nargs="+", help="episodes of the checkpoint's game")
    p.add_argument("--checkpoint", required=True, help="the model file to write them into (rewritten atomically)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.cmd == "validate":
        return cmd_validate(args)
    if args.cmd == "info":
        return cmd_info(args)
    if args.cmd == "export":
        return cmd_export(args)
    if args.cmd == "preview":
        return cmd_export(args, "mp4")
    if args.cmd == "import":
        return cmd_import(args)
    if args.cmd == "palette":
        return cmd_palette(args)
    return cmd_repair(args)
