"""A corpus of bad inputs and faults, run through the real command lines, with the outcomes counted.

    python -m research.bad_inputs                       # every case, 3 at a time; prints the counts
    python -m research.bad_inputs --jobs 2 --json out/bad_inputs.json --only ckpt,npz

Each case builds one bad input (a damaged or odd checkpoint, .npz, episode directory, config value
or flag) in a scratch directory and runs one command as a user would (``python play.py --headless``,
``worldsim data validate|repair|import``, ``worldsim eval``, ``worldsim train`` for one step on tiny
data, ``worldsim collect``), in a subprocess with a timeout. The outcome is one of:

- ``clear``: refused with exit 2, one error line on stderr, no traceback;
- ``handled``: the command's own contract for that input (validate: exit 1 with one line per
  problem; repair: exit 0 or 1, every byte it cut kept aside; a control input: exit 0);
- ``traceback``: a Python traceback reached the user;
- ``silent``: a bad input was accepted (exit 0) without a word;
- ``hang``: the command ran past its timeout;
- ``data_loss``: a file the command should not touch changed, or repair lost bytes;
- ``unclear``: anything else (a refusal of several lines, or with another exit code).

It is for the closing note of a reliability pass, not for CI (a few minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
PLAY = [PY, str(REPO / "play.py"), "--headless", "--max-seconds", "2", "--speed", "0"]
WS = [PY, "-m", "worldsim"]


@dataclass
class Case:
    name: str
    group: str
    argv: list[str]
    expect: str  # "error": refused in one line; "problems": validate's exit 1; "ok": exit 0; "repair"
    watch: list[Path] = field(default_factory=list)  # must be unchanged afterwards
    repair: Path | None = None  # an episode repaired: check that no byte was lost
    timeout: float = 90.0


# ---------------------------------------------------------------------------------------------
# inputs


def mutate(data: bytes, rng: np.random.Generator, kind: str, lo: float = 0.0, hi: float = 1.0) -> bytes:
    b = bytearray(data)
    at = int(rng.uniform(lo, hi) * (len(b) - 1))
    if kind == "flip":
        b[at] ^= int(rng.integers(1, 256))
    elif kind == "truncate":
        del b[at:]
    elif kind == "zero":
        b[at:at + 64] = bytes(len(b[at:at + 64]))
    return bytes(b)


def tiny_episodes(root: Path, n: int = 3, T: int = 24, chunk: int = 8) -> list[Path]:
    from worldsim.data.episode import EpisodeWriter
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID, TinyGame

    out = []
    for i in range(n):
        g, rng = TinyGame(), np.random.default_rng(i)
        f = g.reset(seed=i)
        p = root / f"ep_{i:06d}"
        with EpisodeWriter(p, {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS, "seed": i},
                           max_chunk_frames=chunk) as w:
            for _ in range(T):
                a = int(rng.integers(6))
                w.append(f, a)
                f = g.step(a)[0]
        out.append(p)
    return out


def save_npz(path: Path, **arrays) -> Path:
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID

    base = {"frames": np.zeros((6, 16, 16, 3), np.uint8), "actions": np.arange(6) % 6,
            "env_id": np.str_(TINY_ENV_ID), "action_meanings": np.array(TINY_ACTIONS)}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def checkpoint_cases(d: Path, rng) -> list[Case]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from worldsim.runtime.testing import write_random_checkpoint

    good = write_random_checkpoint(d / "good.safetensors")
    data = good.read_bytes()
    with safe_open(str(good), framework="pt") as f:
        meta0 = {k: v for k, v in f.metadata().items() if k != "checksum"}  # rewritten as another tool would
        ts0 = {k: f.get_tensor(k) for k in f.keys()}
    hlen = int.from_bytes(data[:8], "little") + 8
    files: dict[str, Path] = {}

    def raw(name, b):
        files[name] = d / f"{name}.safetensors"
        files[name].write_bytes(b)

    def rewrite(name, tensors=None, meta=None):
        ts, m = dict(ts0), dict(meta0)
        if tensors:
            ts = tensors(ts)
        if meta:
            m = meta(m)
        files[name] = d / f"{name}.safetensors"
        save_file(ts, str(files[name]), metadata=m)

    def mc(**kw):
        return lambda m: {**m, "model_config": json.dumps({**json.loads(m["model_config"]), **kw})}

    def eng(**kw):
        return lambda m: {**m, "engine": json.dumps({**json.loads(m["engine"]), **kw})}

    w0 = next(k for k in ts0 if k.startswith("model.") and k.endswith(".weight"))
    for i in range(4):
        raw(f"truncated{i}", data[:int(len(data) * (i + 0.5) / 4)])
    for i in range(10):
        raw(f"header-flip{i}", mutate(data, rng, "flip", 0, hlen / len(data)))
    for i in range(6):
        raw(f"data-flip{i}", mutate(data, rng, "flip", hlen / len(data), 1))
    raw("empty", b"")
    raw("random-bytes", rng.bytes(4096))
    rewrite("wrong-shape", lambda t: {**t, w0: torch.zeros(t[w0].shape[0] + 1, *t[w0].shape[1:])})
    rewrite("nan-weights", lambda t: {**t, w0: torch.full_like(t[w0], float("nan"))})
    rewrite("inf-weights", lambda t: {**t, w0: torch.full_like(t[w0], float("inf"))})
    rewrite("int-weights", lambda t: {k: v.to(torch.int8) if k.startswith("model.") and v.is_floating_point() else v
                                      for k, v in t.items()})
    rewrite("fp16-weights-ok", lambda t: {k: v.half() if v.is_floating_point() else v for k, v in t.items()})
    rewrite("missing-tensor", lambda t: {k: v for k, v in t.items() if k != w0})
    rewrite("extra-tensor", lambda t: {**t, "model.extra.weight": torch.zeros(3)})
    rewrite("no-model-tensors", lambda t: {k: v for k, v in t.items() if not k.startswith("model.")})
    rewrite("context-float", lambda t: {**t, "context.frames": t["context.frames"].float()})
    rewrite("context-bad-action", lambda t: {**t, "context.actions": t["context.actions"] + 100})
    rewrite("context-shape", lambda t: {**t, "context.frames": t["context.frames"][..., :2].contiguous()})
    rewrite("config-not-json", meta=lambda m: {**m, "model_config": "{dim: 32"})
    rewrite("config-a-list", meta=lambda m: {**m, "model_config": "[1, 2]"})
    rewrite("config-missing", meta=lambda m: {k: v for k, v in m.items() if k != "model_config"})
    rewrite("config-absurd-dim", meta=mc(dim=1 << 20))
    rewrite("config-absurd-depth", meta=mc(depth=10 ** 7))
    rewrite("config-absurd-resolution", meta=mc(resolution=1 << 20, patch=1))
    rewrite("config-zero-heads", meta=mc(heads=0))
    rewrite("config-negative-dim", meta=mc(dim=-32))
    rewrite("config-string-dim", meta=mc(dim="wide"))
    rewrite("config-nan-ratio", meta=mc(mlp_ratio=float("nan")))
    rewrite("config-unknown-key", meta=mc(colour="blue"))
    rewrite("config-other-actions", meta=mc(num_actions=9))
    rewrite("meanings-not-json", meta=lambda m: {**m, "action_meanings": "NOOP,FIRE"})
    rewrite("meanings-wrong-count", meta=lambda m: {**m, "action_meanings": json.dumps(["NOOP", "FIRE"])})
    rewrite("engine-3-steps", meta=eng(steps=3))
    rewrite("engine-zero-chunk", meta=eng(chunk=0))
    rewrite("engine-negative-window", meta=eng(window=-4))
    rewrite("engine-not-mapping", meta=lambda m: {**m, "engine": "[]"})
    rewrite("engine-unknown-key", meta=eng(turbo=True))
    rewrite("format-other", meta=lambda m: {**m, "format": "something-else"})
    (d / "a-directory.safetensors").mkdir()
    files["a-directory"] = d / "a-directory.safetensors"
    files["missing"] = d / "missing.safetensors"

    ok = {"good", "fp16-weights-ok"}
    cases = [Case("ckpt/good", "ckpt", PLAY + ["--checkpoint", str(good)], "ok", [good])]
    for name, p in files.items():
        expect = "ok" if name in ok else "error"
        cases.append(Case(f"ckpt/{name}", "ckpt", PLAY + ["--checkpoint", str(p)], expect,
                          [p] if p.is_file() else []))
    eps = tiny_episodes(d / "eval_eps", n=1, T=12)
    for name in ("wrong-shape", "nan-weights", "config-absurd-dim", "int-weights", "config-not-json"):
        cases.append(Case(f"eval/{name}", "eval", WS + ["eval", "--checkpoint", str(files[name]), "--episodes",
                                                        str(eps[0]), "--context", "3", "--horizon", "3", "--starts", "1",
                                                        "--dtype", "fp32", "--quiet", "--json", str(d / "e.json")],
                          "error", [files[name]]))
    cases.append(Case("eval/good", "eval", WS + ["eval", "--checkpoint", str(good), "--episodes", str(eps[0]),
                                                 "--context", "3", "--horizon", "3", "--starts", "1", "--dtype", "fp32",
                                                 "--quiet", "--json", str(d / "e.json")], "ok", [good], timeout=240))
    return cases


def npz_cases(d: Path, rng, ckpt: Path) -> list[Case]:
    from worldsim.envs.tiny import TINY_ACTIONS

    good = save_npz(d / "good.npz", frames=np.random.default_rng(1).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    gz = d / "good_z.npz"
    with open(gz, "wb") as f:
        np.savez_compressed(f, **dict(np.load(good)))
    files: dict[str, Path] = {}
    for base, b in (("stored", good.read_bytes()), ("deflated", gz.read_bytes())):
        for i in range(5):
            files[f"{base}-truncated{i}"] = d / f"{base}-truncated{i}.npz"
            files[f"{base}-truncated{i}"].write_bytes(b[:int(len(b) * (i + 0.5) / 5)])
        for i in range(6):
            files[f"{base}-flip{i}"] = d / f"{base}-flip{i}.npz"
            files[f"{base}-flip{i}"].write_bytes(mutate(b, rng, "flip"))
    files["random-bytes"] = d / "random-bytes.npz"
    files["random-bytes"].write_bytes(rng.bytes(5000))
    files["empty"] = d / "empty.npz"
    files["empty"].write_bytes(b"")
    big = bytearray(good.read_bytes())
    i = big.index(b"(6, 16, 16, 3)")
    files["huge-header"] = d / "huge-header.npz"
    files["huge-header"].write_bytes(_rezip(good, "frames.npy", b"(6, 16, 16, 3)", b"(6000000000, 64, 64, 3)"))
    del big, i
    specs = {
        "zero-frames": dict(frames=np.zeros((0, 16, 16, 3), np.uint8), actions=np.zeros(0, np.int64)),
        "bad-action": dict(actions=np.array([0, 1, 2, 99, 0, 0])),
        "negative-action": dict(actions=np.array([0, -1, 2, 3, 0, 0])),
        "another-game": dict(env_id=np.str_("ALE/Pong-v5"), action_meanings=np.array(
            ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"])),
        "unknown-game": dict(env_id=np.str_("Nope/Nothing-v0")),
        "float-frames": dict(frames=np.zeros((6, 16, 16, 3), np.float32)),
        "gray-frames": dict(frames=np.zeros((6, 16, 16), np.uint8)),
        "length-mismatch": dict(actions=np.arange(4)),
        "float-actions": dict(actions=np.arange(6) * 0.5),
        "missing-actions": dict(actions=None),
        "missing-env-id": dict(env_id=None),
        "object-meanings": dict(action_meanings=np.array(["NOOP", 1], dtype=object)),
        "meta-not-json": dict(meta_json=np.str_("{oops")),
        "meta-a-list": dict(meta_json=np.str_("[1, 2]")),
        "rewards-wrong-shape": dict(rewards=np.zeros(3)),
        "fewer-meanings": dict(action_meanings=np.array(TINY_ACTIONS[:3])),
    }
    for name, arrays in specs.items():
        files[name] = save_npz(d / f"{name}.npz", **arrays)
    cases = [Case("npz/validate-good", "npz", WS + ["data", "validate", str(good)], "ok", [good]),
             Case("npz/context-good", "npz", PLAY + ["--checkpoint", str(ckpt), "--context", str(good)], "ok", [good])]
    valid_alone = {"another-game"}  # a good episode of another game: bad only as a context for this model
    for name, p in files.items():
        alone = name in valid_alone
        cases.append(Case(f"npz/validate/{name}", "npz", WS + ["data", "validate", str(p)],
                          "ok" if alone else "problems", [p]))
        out = d / "imported" / name
        cases.append(Case(f"npz/import/{name}", "npz", WS + ["data", "import", str(p), "--out", str(out)],
                          "ok" if alone else "error", [p]))
    for name in ("stored-truncated2", "deflated-truncated2", "stored-flip0", "random-bytes", "empty", "huge-header",
                 "zero-frames", "bad-action", "negative-action", "another-game", "float-frames", "length-mismatch",
                 "object-meanings", "fewer-meanings", "gray-frames"):
        cases.append(Case(f"npz/context/{name}", "npz", PLAY + ["--checkpoint", str(ckpt), "--context",
                                                                 str(files[name])], "error", [files[name]]))
    cases.append(Case("npz/context-kiosk/bad-action", "npz", PLAY + ["--kiosk", "--checkpoint", str(ckpt), "--context",
                                                                      str(files["bad-action"])], "error"))
    return cases


def _rezip(src: Path, member: str, old: bytes, new: bytes) -> bytes:
    """``src`` with ``old`` replaced by ``new`` inside one member's .npy header (the zip rebuilt whole)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == member:
                hlen = int.from_bytes(data[8:10], "little")
                header = data[10:10 + hlen].replace(old, new).rstrip()
                header += b" " * (hlen - len(header) - 1) + b"\n"
                data = data[:10] + header + data[10 + hlen:]
            zout.writestr(info, data)
    return buf.getvalue()


def episode_cases(d: Path, rng) -> list[Case]:
    from worldsim.data.episode import _CRC, _HEADER

    src = tiny_episodes(d / "src", n=1, T=40, chunk=8)[0]
    steps = (src / "steps.bin").read_bytes()
    recs, pos = [], 0
    while pos < len(steps):
        slen = _HEADER.unpack_from(steps, pos)[-1]
        end = pos + _HEADER.size + slen + _CRC.size
        recs.append((pos, end))
        pos = end
    meta0 = json.loads((src / "meta.json").read_text())
    damages = {}
    for k, (a, b) in enumerate(recs):
        damages[f"steps-record{k}-flip"] = ("steps.bin", lambda x, a=a, b=b: _flip_at(x, a + (b - a) // 2))
        damages[f"steps-record{k}-marker"] = ("steps.bin", lambda x, a=a: _flip_at(x, a))
    for i in range(6):
        damages[f"frames-flip{i}"] = ("frames.bin", lambda x, r=np.random.default_rng(100 + i): mutate(x, r, "flip"))
    for i in range(4):
        damages[f"steps-truncated{i}"] = ("steps.bin", lambda x, i=i: x[:int(len(x) * (i + 0.5) / 4)])
        damages[f"frames-truncated{i}"] = ("frames.bin", lambda x, i=i: x[:int(len(x) * (i + 0.5) / 4)])
    damages["steps-garbage-tail"] = ("steps.bin", lambda x: x + bytes(range(37)))
    damages["frames-unindexed-tail"] = ("frames.bin", lambda x: x + b"z" * 90)
    damages["steps-empty"] = ("steps.bin", lambda x: b"")
    metas = {
        "meta-not-json": "{oops", "meta-a-list": "[1]", "meta-empty": "",
        "meta-no-env": json.dumps({k: v for k, v in meta0.items() if k != "env_id"}),
        "meta-meanings-string": json.dumps({**meta0, "action_meanings": "NOOP"}),
        "meta-num-steps-wrong": json.dumps({**meta0, "num_steps": 99}),
        "meta-unclosed": json.dumps({**meta0, "complete": False}),
        "meta-step-fields-garbage": json.dumps({**meta0, "step_fields": [["action", "nope"]]}),
        "meta-step-fields-missing": json.dumps({k: v for k, v in meta0.items() if k != "step_fields"}),
        "meta-frame-shape-garbage": json.dumps({**meta0, "frame_shape": "big"}),
        "meta-fewer-meanings": json.dumps({**meta0, "action_meanings": meta0["action_meanings"][:2]}),
        "meta-format-other": json.dumps({**meta0, "format": "x"}),
    }
    cases = []
    for name in list(damages) + list(metas):
        for cmd in ("validate", "repair"):
            ep = d / cmd / name / "ep_000000"
            shutil.copytree(src, ep)
            if name in damages:
                fname, fn = damages[name]
                (ep / fname).write_bytes(fn((ep / fname).read_bytes()))
            else:
                (ep / "meta.json").write_text(metas[name])
            if cmd == "validate":
                cases.append(Case(f"episode/validate/{name}", "episode", WS + ["data", "validate", str(ep.parent)],
                                  "problems", [ep]))
            else:
                cases.append(Case(f"episode/repair/{name}", "episode", WS + ["data", "repair", str(ep.parent)],
                                  "repair", repair=ep))
    return cases


def _flip_at(b: bytes, at: int) -> bytes:
    x = bytearray(b)
    x[at] ^= 0x5A
    return bytes(x)


def train_cases(d: Path) -> list[Case]:
    from worldsim.envs.tiny import TINY_ACTIONS

    ds = d / "ds"
    tiny_episodes(ds / "train", n=3, T=24)
    bad = d / "ds_bad_action"
    shutil.copytree(ds, bad)
    m = json.loads((bad / "train" / "ep_000001" / "meta.json").read_text())
    m["action_meanings"] = TINY_ACTIONS[:3]  # actions 3..5 now fall outside the set
    (bad / "train" / "ep_000001" / "meta.json").write_text(json.dumps(m))
    torn = d / "ds_torn"
    shutil.copytree(ds, torn)
    sp = torn / "train" / "ep_000002" / "steps.bin"
    sp.write_bytes(sp.read_bytes()[:-9])
    cfg = str(REPO / "configs" / "stage1_teacher_forcing.yaml")

    def train(name, data, *extra, expect="error"):
        return Case(f"train/{name}", "train", WS + ["train", "stage1", cfg, f"data.paths=[{data}]", "optim.steps=1",
                                                     f"out_dir={d / 'runs' / name}", "run.sample_every=-1",
                                                     f"data.cache_dir={d / 'cache'}", "run.progress=false", *extra],
                    expect, [data], timeout=240)

    return [train("good", ds, expect="ok"), train("bad-action", bad), train("torn-episode-skipped", torn, expect="ok"),
            train("batch-0", ds, "optim.batch_size=0"), train("lr-nan", ds, "optim.lr=nan"),
            train("lr-inf", ds, "optim.lr=inf"), train("steps-negative", ds, "optim.steps=-3"),
            train("clip-len-0", ds, "data.clip_len=0"), train("ema-2", ds, "optim.ema_decay=2"),
            train("log-every-0", ds, "run.log_every=0"), train("unknown-key", ds, "optim.lrr=1"),
            train("wrong-type", ds, "optim.batch_size=many"), train("no-data", d / "nothing_here")]


def config_cases(d: Path, ckpt: Path) -> list[Case]:
    P = PLAY + ["--checkpoint", str(ckpt)]
    yamls = {"scalar": "42\n", "string": "just a string\n", "list": "- a\n- b\n", "invalid": "a: [1, 2\n",
             "unknown-key": "colour: blue\n", "bad-type": "threads: many\n", "negative": "stall_timeout_s: -1\n",
             "nan": "poll_ms: .nan\n", "removed-fps": "fps: 30\n", "binary": None}
    cases = []
    for name, text in yamls.items():
        p = d / f"{name}.yaml"
        if text is None:
            p.write_bytes(bytes(range(256)))
        else:
            p.write_text(text)
        cases.append(Case(f"config/yaml/{name}", "config", P + ["--config", str(p)], "error", [p]))
    cases.append(Case("config/yaml/missing", "config", P + ["--config", str(d / "nope.yaml")], "error"))
    for o in ("stall_timeout_s=-1", "stall_timeout_s=0", "threads=-1", "speed=-1", "speed=nan", "max_seconds=-1",
              "poll_ms=nan", "scale=0", "sink=-5", "steps=3", "chunk=-1", "window=-1", "refresh_hz=0",
              "start_timeout_s=-1", "backoff_max_s=-1", "fps=30", "colour=blue", "threads=lots", "worker=fork",
              "compile=sometimes", "dtype=fp64", "device=tpu"):
        cases.append(Case(f"config/play/{o}", "config", P + [o], "error"))
    for flags in (["--max-seconds", "-1"], ["--threads", "-2"], ["--speed", "-1"], ["--steps", "3"],
                  ["--synthetic-input", "-1"], ["--kiosk", "--synthetic-input", "5"], ["--chunk", "-2"],
                  ["--seed", "x"]):
        cases.append(Case(f"config/flags/{' '.join(flags)}", "config", P + flags, "error"))
    for o in ("idle_timeout_s=-1", "max_session_s=0", "operator_chord=[]", "operator_chord=[nokey]",
              "play.stall_timeout_s=-2", "attract_policy=chaos"):
        cases.append(Case(f"config/kiosk/{o}", "config", P + ["--kiosk", o], "error"))
    cases.append(Case("config/replay-negative-seconds", "config",
                      [PY, str(REPO / "play.py"), "--headless", "--replay", str(d), "--max-seconds", "-1"], "error"))
    for o in ("steps=-1", "workers=-1", "env.frameskip=0", "env.repeat_action_probability=2"):
        cases.append(Case(f"config/collect/{o}", "config", WS + ["collect", "--env", "worldsim/Tiny-v0", "--out",
                                                                  str(d / "col" / o), o], "error"))
    return cases


def unclosed_replay_case(d: Path) -> Case:
    from worldsim.data.episode import EpisodeWriter
    from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID

    p = d / "rec" / "ep_000000"
    w = EpisodeWriter(p, {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS, "source": "play"})
    for t in range(5):
        w.append(np.zeros((16, 16, 3), np.uint8), 0)
    w.flush()
    os.close(w._frames_fd)  # what a killed recorder leaves: committed steps, never closed
    os.close(w._steps_fd)
    return Case("replay/unclosed-recording", "replay", [PY, str(REPO / "play.py"), "--headless", "--replay",
                                                        str(d / "rec"), "--speed", "0", "--max-seconds", "3"],
                "note", [p])


# ---------------------------------------------------------------------------------------------
# running and judging


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def bytes_kept(ep: Path, before: dict[str, bytes]) -> bool:
    """Every byte of steps.bin and frames.bin is still in the episode or in a piece set aside."""
    cuts = sorted(ep.parent.glob(f"{ep.name}.cut*"))
    pieces = {}
    for c in cuts:
        for piece in json.loads((c / "cut.json").read_text())["pieces"]:
            pieces[piece["file"]] = (piece["from"], (c / piece["saved_as"]).read_bytes())
    for name, orig in before.items():
        now = (ep / name).read_bytes() if (ep / name).exists() else b""
        if name in pieces:
            start, saved = pieces[name]
            if orig[:start] + saved != orig and not (orig.startswith(saved) and start == 0):
                return False
        elif now != orig:
            return False
    return True


def judge(case: Case, rc: int | None, out: str, err: str, changed: bool, kept: bool) -> str:
    text = out + err
    if rc is None:
        return "hang"
    if "Traceback" in text:
        return "traceback"
    if changed or not kept:
        return "data_loss"
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    if case.expect == "error":
        if rc == 2 and len(errors) == 1:
            return "clear"
        return "silent" if rc == 0 else "unclear"
    if case.expect == "problems":
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return "handled" if (rc == 1 and lines) or rc == 0 and case.name.endswith("good") else \
            ("silent" if rc == 0 else "unclear")
    if case.expect == "repair":
        return "handled" if rc in (0, 1) else "unclear"
    if case.expect == "note":
        return "handled" if rc == 0 and "note:" in err else ("silent" if rc == 0 else "unclear")
    return "handled" if rc == 0 else "unclear"


def run_case(case: Case) -> dict:
    before = digest(case.watch)
    orig = {n: (case.repair / n).read_bytes() for n in ("steps.bin", "frames.bin") if (case.repair / n).exists()} \
        if case.repair else {}
    env = dict(os.environ, WORLDSIM_COMPILE="off", PYTHONPATH=str(REPO), SDL_VIDEODRIVER="dummy",
               SDL_AUDIODRIVER="dummy")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(case.argv, capture_output=True, text=True, timeout=case.timeout, cwd=REPO, env=env)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), str(e.stderr or "")
    wall = time.perf_counter() - t0
    changed = digest(case.watch) != before
    kept = bytes_kept(case.repair, orig) if case.repair else True
    outcome = judge(case, rc, out, err, changed, kept)
    last = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1]
    return {"name": case.name, "group": case.group, "outcome": outcome, "rc": rc, "wall_s": round(wall, 2),
            "last_line": last[:300]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--json", default="out/bad_inputs.json")
    ap.add_argument("--only", help="comma-separated groups: ckpt,eval,npz,episode,train,config,replay")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    rng = np.random.default_rng(0)
    scratch = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    try:
        for sub in ("ckpt", "npz", "episode", "train", "config", "replay"):
            (scratch / sub).mkdir()
        cases = checkpoint_cases(scratch / "ckpt", rng)
        ckpt = scratch / "ckpt" / "good.safetensors"
        cases += npz_cases(scratch / "npz", rng, ckpt) + episode_cases(scratch / "episode", rng)
        cases += train_cases(scratch / "train") + config_cases(scratch / "config", ckpt)
        cases.append(unclosed_replay_case(scratch / "replay"))
        if args.only:
            keep = set(args.only.split(","))
            cases = [c for c in cases if c.group in keep]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_case, cases))
        wall = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    counts = Counter(r["outcome"] for r in results)
    by_group: dict[str, Counter] = {}
    for r in results:
        by_group.setdefault(r["group"], Counter())[r["outcome"]] += 1
    for r in results:
        if r["outcome"] not in ("clear", "handled"):
            print(f"{r['outcome']:>10}  {r['name']}: rc={r['rc']} {r['last_line']}")
    print(f"{len(results)} cases in {wall:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for g, c in by_group.items():
        print(f"  {g:<8} " + ", ".join(f"{k} {v}" for k, v in c.most_common()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"counts": counts, "by_group": by_group, "wall_s": wall,
                                           "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
