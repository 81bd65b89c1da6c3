"""Property tests of the loaders: random corruptions of checkpoints (header, metadata, tensors),
.npz episodes, episode directories and config values never produce a traceback (only a
WorldsimError, or a load that succeeds and is consistent), never hang (a per-example deadline),
and never change a file on disk (hashed before and after). A bounded number of examples keeps the
fast tier fast; a fixed seed keeps it reproducible."""

import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from worldsim.errors import WorldsimError

FUZZ = settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow], database=None)


@contextmanager
def fresh_dir():
    """A new directory per example (pytest's tmp_path is shared by every example of a test)."""
    with tempfile.TemporaryDirectory(prefix="fuzz") as d:
        yield Path(d)


def digest(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def mutate(data: bytes, ops) -> bytes:
    """Apply (kind, position fraction, value) edits: flip a byte, truncate, insert bytes, overwrite a run."""
    b = bytearray(data)
    for kind, frac, val in ops:
        at = int(frac * max(len(b) - 1, 0))
        if kind == "flip" and b:
            b[at] ^= (val % 255) + 1
        elif kind == "truncate":
            del b[at:]
        elif kind == "insert":
            b[at:at] = bytes([val % 256]) * (1 + val % 7)
        elif kind == "zero" and b:
            b[at:at + 1 + val % 64] = bytes(len(b[at:at + 1 + val % 64]))
    return bytes(b)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "zero"]), st.floats(0, 1),
                         st.integers(0, 10_000)), min_size=1, max_size=4)
HEADER_OPS = st.lists(st.tuples(st.sampled_from(["flip", "zero", "insert"]), st.floats(0, 0.02),
                                st.integers(0, 10_000)), min_size=1, max_size=3)  # the safetensors JSON header


def outcome(fn):
    """Run a loader: 'ok' or 'refused' (a WorldsimError with a one-line message); anything else fails."""
    try:
        fn()
        return "ok"
    except WorldsimError as e:
        assert "\n" not in str(e), str(e)
        return "refused"


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory):
    from worldsim.runtime.testing import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("fz") / "t.safetensors").read_bytes()


def _load_playable(p):
    from worldsim.runtime.loading import load_playable

    return lambda: load_playable(p, device="cpu", dtype="fp32")


@seed(1)
@FUZZ
@given(ops=st.one_of(OPS, HEADER_OPS))
def test_corrupt_checkpoint_files(ckpt_bytes, ops):
    with fresh_dir() as tmp_path:
        p = tmp_path / "c.safetensors"
        p.write_bytes(mutate(ckpt_bytes, ops))
        before = digest(p)
        outcome(_load_playable(p))
        assert digest(p) == before


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                       | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                                max_size=3), max_leaves=6)
MODEL_KEYS = ["resolution", "patch", "dim", "depth", "heads", "kv_heads", "num_actions", "mlp_ratio", "chunk",
              "temporal_every", "anchor", "anchor_mode", "anchor_history", "channels", "causal"]


@seed(2)
@FUZZ
@given(key=st.sampled_from(["model_config", "engine", "action_meanings", "env_id", "format"]),
       sub=st.sampled_from(MODEL_KEYS), value=JSONISH, whole=st.booleans(), raw=st.text(max_size=12))
def test_fuzzed_checkpoint_metadata(ckpt_bytes, key, sub, value, whole, raw):
    with fresh_dir() as tmp_path:
        from safetensors import safe_open
        from safetensors.torch import save_file

        src = tmp_path / "src.safetensors"
        src.write_bytes(ckpt_bytes)
        with safe_open(str(src), framework="pt") as f:
            meta = {k: v for k, v in f.metadata().items() if k != "checksum"}  # as another tool writes it
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if key == "model_config" and not whole:
            mc = json.loads(meta[key])
            mc[sub] = value
            meta[key] = json.dumps(mc)
        else:
            meta[key] = raw if whole else json.dumps(value)
        p = tmp_path / "m.safetensors"
        save_file(tensors, str(p), metadata=meta)
        before = digest(p)
        outcome(_load_playable(p))
        assert digest(p) == before


# ---------------------------------------------------------------- .npz episodes


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory):
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID

    out = {}
    for name, saver in (("stored", np.savez), ("deflated", np.savez_compressed)):
        p = tmp_path_factory.mktemp("npz") / f"{name}.npz"
        rng = np.random.default_rng(0)
        saver(p, frames=rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), actions=np.arange(6) % 6,
              env_id=np.str_(TINY_ENV_ID), action_meanings=np.array(TINY_ACTIONS),
              rewards=np.zeros(6, np.float32), meta_json=np.str_(json.dumps({"policy": "x"})))
        out[name] = p.read_bytes()
    return out


@seed(3)
@FUZZ
@given(kind=st.sampled_from(["stored", "deflated"]), ops=OPS)
def test_corrupt_npz_episodes(npz_bytes, kind, ops):
    with fresh_dir() as tmp_path:
        from worldsim.data.episode import episode_length, read_episode
        from worldsim.data.validate import validate
        from worldsim.runtime.loading import load_context_npz

        p = tmp_path / "e.npz"
        p.write_bytes(mutate(npz_bytes[kind], ops))
        before = digest(p)
        outcome(lambda: read_episode(p))
        outcome(lambda: episode_length(p))
        outcome(lambda: load_context_npz(p, 16))
        assert all("\n" not in line for line in validate(p))
        assert digest(p) == before


# ---------------------------------------------------------------- episode directories


@pytest.fixture(scope="module")
def episode_dir(tmp_path_factory):
    from worldsim.data.episode import EpisodeWriter
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID

    p = tmp_path_factory.mktemp("epd") / "ep"
    with EpisodeWriter(p, {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS}, max_chunk_frames=4) as w:
        for t in range(14):
            w.append(np.full((8, 8, 3), t, np.uint8), t % 6)
    return p


@seed(4)
@FUZZ
@given(target=st.sampled_from(["steps.bin", "frames.bin", "meta.json"]), ops=OPS)
def test_corrupt_episode_directories_read_and_validate_without_writing(episode_dir, target, ops):
    with fresh_dir() as tmp_path:
        from worldsim.data.episode import episode_length, iter_frame_chunks, read_episode
        from worldsim.data.validate import validate

        p = tmp_path / "ep"
        shutil.copytree(episode_dir, p)
        f = p / target
        f.write_bytes(mutate(f.read_bytes(), ops))
        before = digest(tmp_path)
        outcome(lambda: read_episode(p))
        outcome(lambda: read_episode(p, load_frames=False))
        outcome(lambda: episode_length(p))
        outcome(lambda: list(iter_frame_chunks(p)))
        assert all("\n" not in line for line in validate(p))
        assert digest(tmp_path) == before  # reading and validating never write


@seed(5)
@FUZZ
@given(target=st.sampled_from(["steps.bin", "frames.bin"]), ops=OPS)
def test_repair_keeps_every_chunk_that_passes_its_checksums(episode_dir, target, ops):
    """Whatever the damage, repair leaves every chunk that was intact readable and every cut byte aside."""
    with fresh_dir() as tmp_path:
        from worldsim.data.episode import list_episodes, read_episode
        from worldsim.data.repair import repair_episode

        ds = tmp_path / "ds"
        p = ds / "ep"
        shutil.copytree(episode_dir, p)
        f = p / target
        f.write_bytes(mutate(f.read_bytes(), ops))
        originals = {n: (p / n).read_bytes() for n in ("steps.bin", "frames.bin")}
        try:
            rep = repair_episode(p)
        except WorldsimError as e:  # nothing intact: refused, nothing changed
            assert "\n" not in str(e)
            assert {n: (p / n).read_bytes() for n in originals} == originals
            return
        seen = set()
        for ep in list_episodes(ds):
            e = read_episode(ep)
            assert e.complete, e.problems
            first = e.meta.get("repaired", {}).get("first_step", 0)
            for i in range(len(e)):
                assert int(e.frames[i][0, 0, 0]) == first + i  # each frame is the step it claims to be
                seen.add(first + i)
        if rep.aside is not None:
            cut = json.loads((rep.aside / "cut.json").read_text())
            for piece in cut["pieces"]:
                assert (rep.aside / piece["saved_as"]).read_bytes() == originals[piece["file"]][piece["from"]:]
        # every chunk that lies wholly before the first damaged byte is kept
        before = (episode_dir / target).read_bytes()
        after = originals[target]
        d = next((i for i, (x, y) in enumerate(zip(before, after)) if x != y), min(len(before), len(after)))
        for pos, end, off, length, start, n in records(episode_dir):
            if (end if target == "steps.bin" else off + length) <= d:
                assert set(range(start, start + n)) <= seen, (start, n, d)


def records(ep: Path):
    """(record start, end, frames offset, frames length, first step, steps) of each chunk of steps.bin."""
    from worldsim.data.episode import _CRC, _HEADER

    data, pos, out = (ep / "steps.bin").read_bytes(), 0, []
    while pos < len(data):
        _, n, start, _, off, length, _, slen = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + slen + _CRC.size
        out.append((pos, end, off, length, start, n))
        pos = end
    return out


# ---------------------------------------------------------------- config values


def _numeric_keys():
    import dataclasses
    import typing

    from worldsim.app.player import PlayConfig
    from worldsim.train.stage1_teacher_forcing import Stage1Config

    out = []
    for root, cls in (("", PlayConfig), ("", Stage1Config)):
        stack = [(root, cls)]
        while stack:
            pre, c = stack.pop()
            hints = typing.get_type_hints(c)
            for f in dataclasses.fields(c):
                t = hints[f.name]
                if dataclasses.is_dataclass(t):
                    stack.append((f"{pre}{f.name}.", t))
                elif t in (int, float):
                    out.append((cls, f"{pre}{f.name}"))
    return out


NUMERIC = _numeric_keys()


@seed(6)
@FUZZ
@given(which=st.sampled_from(NUMERIC), value=st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                                                       st.sampled_from(["nan", "inf", "-inf", "-0", "1e999", "abc", ""])))
def test_config_values_are_refused_or_hold(which, value):
    from worldsim.config import check_values, load_config

    cls, key = which
    try:
        cfg = load_config(cls, None, [f"{key}={value}"])
    except WorldsimError as e:
        assert "\n" not in str(e) and key.split(".")[-1] in str(e), str(e)
        return
    check_values(cfg)  # what loads passes the checks
