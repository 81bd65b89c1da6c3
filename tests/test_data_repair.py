"""``worldsim data repair``: every kind of damage to an episode directory, and nothing intact is lost.

Each case damages one part of a 40-step episode of five 8-step chunks, then checks that validate
reports it, that repair keeps every step whose chunk is intact (frames and actions identical, in
the episode or in a new one beside it), that every byte it cut is in ``<name>.cut/`` exactly as it
was, and that the result validates clean.
"""

import json
import os

import numpy as np
import pytest

from worldsim.cli import main as worldsim
from worldsim.data.episode import _CRC, _HEADER, FRAMES, META, STEPS, EpisodeWriter, list_episodes, read_episode
from worldsim.data.repair import repair_episode
from worldsim.data.validate import validate, validate_episode
from worldsim.errors import DataError

META0 = {"env_id": "worldsim/Tiny-v0", "action_meanings": ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"],
         "seed": 3}
N, CH = 40, 8


def pattern(t):
    f = np.zeros((12, 10, 3), np.uint8)
    f[..., 0] = t
    f[..., 2] = np.arange(10) * 9
    return f


def make(path, codec="zlib"):
    with EpisodeWriter(path, META0, max_chunk_frames=CH, codec=codec) as w:
        for t in range(N):
            w.append(pattern(t), t % 6, timestamp_ns=t)
    return path


def records(p):
    """(record start, record end, frames offset, frames length) of each chunk in steps.bin."""
    data, pos, out = (p / STEPS).read_bytes(), 0, []
    while pos < len(data):
        _, n, start, _, off, length, _, slen = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + slen + _CRC.size
        out.append((pos, end, off, length))
        pos = end
    return out


def flip(f, at):
    b = bytearray(f.read_bytes())
    b[at] ^= 0x5A
    f.write_bytes(bytes(b))


def set_meta(p, **kw):
    m = json.loads((p / META).read_text())
    m.update(kw)
    (p / META).write_text(json.dumps(m))


# each case: (damage(p), chunks whose steps are lost)
CASES = {
    "steps first record payload": (lambda p: flip(p / STEPS, records(p)[0][0] + _HEADER.size + 5), {0}),
    "steps first record marker": (lambda p: flip(p / STEPS, 0), {0}),
    "steps middle record header": (lambda p: flip(p / STEPS, records(p)[2][0] + 6), {2}),
    "steps middle record crc": (lambda p: flip(p / STEPS, records(p)[2][1] - 1), {2}),
    "steps last record": (lambda p: flip(p / STEPS, records(p)[4][0] + 30), {4}),
    "frames first chunk": (lambda p: flip(p / FRAMES, 3), {0}),
    "frames middle chunk": (lambda p: flip(p / FRAMES, records(p)[3][2] + 2), {3}),
    "frames last chunk": (lambda p: flip(p / FRAMES, (p / FRAMES).stat().st_size - 1), {4}),
    "steps torn tail": (lambda p: (os.truncate(p / STEPS, (p / STEPS).stat().st_size - 9),
                                   set_meta(p, complete=False)), {4}),
    "frames truncated": (lambda p: os.truncate(p / FRAMES, (p / FRAMES).stat().st_size - 4), {4}),
    "garbage after the index": (lambda p: (p / STEPS).write_bytes((p / STEPS).read_bytes() + os.urandom(37)), set()),
    "frames never indexed": (lambda p: ((p / FRAMES).write_bytes((p / FRAMES).read_bytes() + b"x" * 50),
                                        set_meta(p, complete=False)), set()),
    "meta num_steps wrong": (lambda p: set_meta(p, num_steps=99), set()),
    "meta unclosed": (lambda p: set_meta(p, complete=False, aborted="KeyboardInterrupt"), set()),
    "two damaged chunks": (lambda p: (lambda r: (flip(p / STEPS, r[1][0] + 40), flip(p / FRAMES, r[3][2] + 1)))(
        records(p)), {1, 3}),
}


@pytest.mark.parametrize("codec", ["zlib", "raw"])
@pytest.mark.parametrize("case", list(CASES))
def test_repair_keeps_every_intact_step_and_sets_the_rest_aside(tmp_path, case, codec):
    ds = tmp_path / "ds"
    p = make(ds / "ep_000000", codec)
    damage, lost = CASES[case]
    damage(p)
    before = {name: (p / name).read_bytes() for name in (STEPS, FRAMES, META)}
    reported = validate_episode(p)
    assert reported and all("worldsim data repair" in r for r in reported), reported

    rep = repair_episode(p)
    assert rep.problems and rep.done
    if case in ("meta num_steps wrong", "meta unclosed"):  # only the metadata changes: nothing cut
        assert rep.aside is None and rep.cut_bytes == 0 and (p / STEPS).read_bytes() == before[STEPS]
    else:
        assert rep.aside is not None and rep.aside.is_dir() and rep.cut_bytes > 0
        assert rep.aside.parent == p.parent and rep.aside.name.startswith(p.name)

    # every intact step is readable, in the episode or in a new one beside it, frames and actions identical
    seen = set()
    for ep_path in list_episodes(ds):
        e = read_episode(ep_path)
        assert e.complete and not e.problems, e.problems
        assert validate_episode(ep_path) == []
        first = e.meta.get("repaired", {}).get("first_step", 0)
        for i in range(len(e)):
            t = first + i
            assert np.array_equal(np.asarray(e.frames[i]), pattern(t)) and e.actions[i] == t % 6
            seen.add(t)
    expected = {t for t in range(N) if t // CH not in lost}
    assert seen == expected

    if rep.aside is None:
        return
    # every byte cut is kept aside exactly as it was
    cut = json.loads((rep.aside / "cut.json").read_text())
    for piece in cut["pieces"]:
        saved = (rep.aside / piece["saved_as"]).read_bytes()
        assert saved == before[piece["file"]][piece["from"]:piece["to"]]
        assert piece["to"] == len(before[piece["file"]])  # a tail: from the cut point to the old end
    assert (rep.aside / "meta.json.before").read_bytes() == before[META]
    # and the aside directory is not taken for an episode
    assert all(rep.aside not in ep.parents and ep != rep.aside for ep in list_episodes(ds))


def test_repair_refuses_unreadable_meta_and_changes_nothing(tmp_path, capsys):
    p = make(tmp_path / "ds" / "ep")
    (p / META).write_text("{torn")
    before = {f.name: f.read_bytes() for f in p.iterdir()}
    with pytest.raises(DataError, match="not valid JSON"):
        repair_episode(p)
    assert worldsim(["data", "repair", str(tmp_path / "ds")]) == 1
    assert "refused" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in p.iterdir()} == before
    assert sorted(x.name for x in (tmp_path / "ds").iterdir()) == ["ep"]


def test_repair_of_an_intact_dataset_changes_nothing(tmp_path, capsys):
    p = make(tmp_path / "ds" / "ep")
    before = {f.name: f.read_bytes() for f in p.iterdir()}
    assert worldsim(["data", "repair", str(tmp_path / "ds")]) == 0
    assert "ok:" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in p.iterdir()} == before
    assert sorted(x.name for x in (tmp_path / "ds").iterdir()) == ["ep"]


def test_repair_cli_says_what_it_did_and_leaves_semantic_problems_named(tmp_path, capsys):
    p = make(tmp_path / "ds" / "ep")
    flip(p / STEPS, records(p)[0][0] + 3)  # step 0's chunk: the episode is rewritten from step 8
    assert worldsim(["data", "repair", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert f"{p}: kept 32 steps (from step 8 of the original)" in out and f"{p}.cut" in out
    assert validate(tmp_path / "ds") == []
    # a problem repair cannot mend (an action outside the set) is reported, not hidden
    set_meta(p, action_meanings=["NOOP", "FIRE"])
    assert worldsim(["data", "repair", str(tmp_path / "ds")]) == 1
    assert "not repaired (fix by hand)" in capsys.readouterr().out
