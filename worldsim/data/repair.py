"""``repair_episode(path)``: make a damaged episode directory readable again without destroying anything.

It acts on exactly what ``worldsim data validate`` reports about the directory's files (the same
``scan_episode``, every frame payload checked):

- the run of intact chunks that starts at step 0 stays in the episode; a torn or damaged tail is cut
  off in place;
- a run of intact chunks after a damaged one becomes an episode of its own beside it,
  ``<name>-s<first step>``, its steps numbered from 0 (``repaired.first_step`` says where it was);
- when the chunk of step 0 itself is damaged, the episode is rewritten from its first intact run;
- every byte cut from ``steps.bin`` or ``frames.bin`` is first copied into ``<name>.cut/`` beside the
  episode, with the metadata as it was (``meta.json.before``) and ``cut.json``, which says which file
  and byte range each piece came from and which ranges were damaged and why (an episode that only
  needed closing has nothing cut and no such directory);
- the episode is marked closed with its readable step count; ``repaired`` in its metadata records what
  was done and where the cut bytes went.

An episode with nothing intact, or whose metadata cannot be read, is refused with the reason and left
as it is. Nothing here knows games or resizing (``worldsim.data.episode`` owns the byte format).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from worldsim.data.episode import (_CRC, _HEADER, _MAGIC, FRAMES, META, STEPS, _Chunk, fsync_dir, read_meta,
                                   scan_episode, scan_problems, write_json_atomic)
from worldsim.errors import DataError


@dataclass
class RepairReport:
    path: Path
    problems: list[str]  # what validate reported about the files (empty: nothing to do)
    done: list[str] = field(default_factory=list)  # what was done, one line each
    kept: dict[str, int] = field(default_factory=dict)  # episode path -> steps it now holds
    aside: Path | None = None  # where the cut bytes went
    cut_bytes: int = 0


def _free_name(base: Path) -> Path:
    """``base`` or, if taken, ``base`` with 2, 3, ... appended."""
    if not base.exists():
        return base
    k = 2
    while (cand := base.with_name(f"{base.name}{k}")).exists():
        k += 1
    return cand


def _write_run(src_frames: Path, run: list[_Chunk], steps_out: Path, frames_out: Path) -> int:
    """Copy a run of intact chunks into fresh files, steps numbered from 0; frame payloads verbatim."""
    base, off = run[0].start, 0
    with open(src_frames, "rb") as src, open(steps_out, "wb") as so, open(frames_out, "wb") as fo:
        for c in run:
            src.seek(c.offset)
            blob = src.read(c.length)
            if len(blob) != c.length or zlib.crc32(blob) != c.crc:
                raise DataError(f"'{src_frames}' changed while it was being repaired (steps {c.start}..); "
                                f"stop whatever writes to it and run the repair again")
            rec = _HEADER.pack(_MAGIC, c.n, c.start - base, c.codec, off, c.length, c.crc, len(c.steps)) + c.steps
            fo.write(blob)
            so.write(rec + _CRC.pack(zlib.crc32(rec)))
            off += c.length
        for f in (fo, so):
            f.flush()
            os.fsync(f.fileno())
    return sum(c.n for c in run)


def _copy_from(src: Path, start: int, dst: Path) -> int:
    """Copy ``src[start:]`` to ``dst`` (fsynced); returns the bytes copied."""
    n = 0
    with open(src, "rb") as s, open(dst, "wb") as d:
        s.seek(start)
        shutil.copyfileobj(s, d, 1 << 20)
        d.flush()
        os.fsync(d.fileno())
        n = d.tell()
    return n


def repair_episode(path: str | Path) -> RepairReport:
    """Repair one episode directory (see the module docstring); returns what was done."""
    p = Path(path)
    if p.suffix == ".npz" and p.is_file():
        raise DataError(f"'{p}' is a .npz, which is written whole and cannot be repaired; export it again from "
                        f"its source episode")
    if not p.is_dir():
        raise DataError(f"episode directory '{p}' not found; pass an episode directory or a dataset directory")
    meta = read_meta(p)
    scan = scan_episode(p, meta, check_frames=True)
    problems = scan_problems(p, meta, scan)
    rep = RepairReport(p, problems)
    if not problems:
        rep.kept[str(p)] = sum(c.n for c in scan.prefix)
        return rep
    if not scan.runs:
        raise DataError(f"'{p}': no chunk of it passes its checksums ({scan.steps_size} bytes of {STEPS}, "
                        f"{scan.frames_size} of {FRAMES}); left as it is: delete the episode or re-record it")
    sp, fp = p / STEPS, p / FRAMES
    first = scan.runs[0]
    in_place = bool(scan.prefix)  # the first run starts at step 0: cut only what follows it
    s_keep = first[-1].pos + first[-1].size if in_place else 0
    f_keep = first[-1].offset + first[-1].length if in_place else 0
    stamp = time.time()

    # 1. later intact runs -> episodes of their own (written under a hidden name, renamed when whole)
    parts: list[tuple[Path, int, int]] = []
    for run in scan.runs[1:]:
        dest = _free_name(p.with_name(f"{p.name}-s{run[0].start}"))
        tmp = p.with_name(f".{dest.name}.repair-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        n = _write_run(fp, run, tmp / STEPS, tmp / FRAMES)
        pmeta = dict(meta, complete=True, num_steps=n,
                     repaired={"unix": stamp, "from": str(p), "first_step": run[0].start, "problems": problems})
        pmeta.pop("aborted", None)
        if isinstance(meta.get("context_frames"), int):  # recordings: the real context frames come first
            pmeta["context_frames"] = max(0, meta["context_frames"] - run[0].start)
        write_json_atomic(tmp / META, pmeta)
        os.replace(tmp, dest)
        parts.append((dest, run[0].start, n))

    # 2. every byte about to be cut -> <name>.cut/ beside the episode
    aside = _free_name(p.with_name(f"{p.name}.cut"))
    tmp = p.with_name(f".{aside.name}.repair-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pieces = []
    for src, keep in ((sp, s_keep), (fp, f_keep)):
        if src.exists() and src.stat().st_size > keep:
            name = f"{src.name}.from-{keep}"
            n = _copy_from(src, keep, tmp / name)
            pieces.append({"file": src.name, "from": keep, "to": keep + n, "saved_as": name})
            rep.cut_bytes += n
    shutil.copyfile(p / META, tmp / "meta.json.before")
    kept_desc = {str(p): {"first_step": first[0].start, "steps": sum(c.n for c in first)}}
    kept_desc.update({str(d): {"first_step": s, "steps": n} for d, s, n in parts})
    cut = {"episode": str(p), "unix": stamp, "problems": problems, "pieces": pieces,
           "damaged": [{"file": b.file, "from": b.start, "to": b.end, "why": b.why, "steps": b.steps}
                       for b in scan.bad],
           "kept_as": kept_desc,
           "note": "pieces are byte ranges copied from the episode's files before they were cut; intact runs "
                   "among them were also written as the episodes in kept_as"}
    if pieces:
        (tmp / "cut.json").write_text(json.dumps(cut, indent=1) + "\n")
        fsync_dir(tmp)
        os.replace(tmp, aside)
        fsync_dir(p.parent)
        rep.aside = aside
    else:  # only the metadata changes (closed, its step count): nothing to keep aside
        shutil.rmtree(tmp)

    # 3. the episode itself: cut its tail in place, or rewrite it from its first intact run
    if in_place:
        for f, keep in ((sp, s_keep), (fp, f_keep)):
            if f.exists() and f.stat().st_size > keep:
                os.truncate(f, keep)
        n0 = sum(c.n for c in first)
    else:
        ts, tf = p / f".{STEPS}.repair-tmp", p / f".{FRAMES}.repair-tmp"
        n0 = _write_run(fp, first, ts, tf)
        os.replace(tf, fp)
        os.replace(ts, sp)
    was_complete = bool(meta.get("complete"))
    meta.update(complete=True, num_steps=n0,
                repaired={"unix": stamp, "problems": problems, "was_complete": was_complete,
                          "aside": str(rep.aside) if rep.aside else None,
                          "first_step": first[0].start, "parts": [str(d) for d, _, _ in parts]})
    meta.pop("aborted", None)
    if not in_place and isinstance(meta.get("context_frames"), int):
        meta["context_frames"] = max(0, meta["context_frames"] - first[0].start)
    write_json_atomic(p / META, meta)

    rep.kept[str(p)] = n0
    lost = sorted({b.steps for b in scan.bad if b.steps})
    rep.done.append(f"{p}: kept {n0} steps" + (f" (from step {first[0].start} of the original)" if not in_place
                                                 else "") + ", marked closed")
    for d, s, n in parts:
        rep.kept[str(d)] = n
        rep.done.append(f"{d}: new episode of the {n} intact steps from step {s} on")
    if rep.aside is not None:
        rep.done.append(f"{aside}: {rep.cut_bytes} bytes cut from {STEPS}/{FRAMES} kept here (cut.json lists "
                        f"them)" + (f"; damaged: {', '.join(lost)}" if lost else ""))
    return rep
