"""One clear line for every bad input, caught where it enters: a checkpoint, an episode or context
.npz, a config value, a flag. Each class of input the runtime once crashed on or silently accepted,
with the loader that now refuses it (its message names the thing, what is wrong and the fix)."""

import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from worldsim.checkpoint import load_checkpoint, load_weights
from worldsim.config import load_config
from worldsim.data.episode import EpisodeWriter, read_episode
from worldsim.envs.tiny import TINY_ACTIONS, TINY_ENV_ID
from worldsim.errors import CheckpointError, ConfigError, DataError, WorldsimError
from worldsim.runtime.loading import load_context_npz, load_playable
from worldsim.runtime.testing import write_random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def rewrite(src, dst, tensors=None, meta=None):
    """A copy of checkpoint ``src`` with its tensors and raw string metadata changed by the two functions,
    written as another tool would: without the checksum ``save_checkpoint`` records."""
    with safe_open(str(src), framework="pt") as f:
        raw = {k: v for k, v in f.metadata().items() if k != "checksum"}
        ts = {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        ts = tensors(ts)
    if meta:
        raw = meta(raw)
    save_file(ts, str(dst), metadata=raw)
    return dst


def edit_config(raw, **kw):
    mc = json.loads(raw["model_config"])
    mc.update(kw)
    return {**raw, "model_config": json.dumps(mc)}


def first_weight(ts):
    return next(k for k in ts if k.startswith("model.") and k.endswith(".weight"))


# ---------------------------------------------------------------- checkpoints: one loader for all


def _wrong_shape(ts):
    k = first_weight(ts)
    return {**ts, k: torch.zeros(ts[k].shape[0] + 1, *ts[k].shape[1:])}


def _nan(ts):
    k = first_weight(ts)
    bad = ts[k].clone()
    bad.view(-1)[0] = float("nan")
    return {**ts, k: bad}


def _ints(ts):
    return {k: (v.to(torch.int8) if k.startswith("model.") and v.is_floating_point() else v) for k, v in ts.items()}


@pytest.mark.parametrize("tensors,meta,match", [
    pytest.param(_wrong_shape, None, "has shape", id="wrong-shape"),
    pytest.param(_nan, None, "NaN or infinite", id="nan-weights"),
    pytest.param(_ints, None, "int8 values where weights are floating point", id="integer-weights"),
    pytest.param(None, lambda r: {**r, "model_config": "{dim: 32"}, "model_config' is not a JSON mapping",
                 id="model-config-not-json"),
    pytest.param(None, lambda r: edit_config(r, dim=1 << 20), "describes a model of at least", id="absurd-dim"),
    pytest.param(None, lambda r: edit_config(r, depth=10 ** 6), "describes a model of at least", id="absurd-depth"),
    pytest.param(None, lambda r: edit_config(r, resolution=1 << 20, patch=1), "tokens a frame", id="absurd-resolution"),
    pytest.param(None, lambda r: edit_config(r, heads=0), "'heads'", id="zero-heads"),
    pytest.param(None, lambda r: {**r, "action_meanings": "NOOP,FIRE"}, "'action_meanings' is not",
                 id="meanings-not-json"),
    pytest.param(None, lambda r: {**r, "palette": json.dumps({"colours": "6e9c4"})},
                 "'palette' is not a string of 6 hex", id="palette-cut-short"),
    pytest.param(None, lambda r: {**r, "palette": json.dumps({"colours": "6e9c4g"})}, "not hex digits",
                 id="palette-not-hex"),
    pytest.param(None, lambda r: {**r, "engine": json.dumps({**json.loads(r["engine"]), "steps": 3})},
                 "recommends 3 sampling steps", id="recommends-3-steps"),
])
def test_bad_checkpoint_is_one_line_at_load(ckpt, tmp_path, tensors, meta, match):
    bad = rewrite(ckpt, tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=match) as e:
        load_playable(bad, device="cpu", dtype="fp32")
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_every_model_loader_shares_the_checks(ckpt, tmp_path):
    """play, eval, bench, training init and the pipeline all go through load_weights."""
    from worldsim.bench.engine_bench import load_bench_model
    from worldsim.eval.cli import load_for_eval

    bad = rewrite(ckpt, tmp_path / "bad.safetensors", _wrong_shape)
    tensors, meta = load_checkpoint(bad, "model.")
    for load in (lambda: load_weights(tensors, meta, bad), lambda: load_bench_model(str(bad)),
                 lambda: load_for_eval(bad, "cpu", torch.float32, [])):
        with pytest.raises(CheckpointError, match="has shape"):
            load()


def test_a_changed_byte_fails_the_checksum(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    data[-5] ^= 0x01  # the last weight's low mantissa bit: a finite, plausible value, caught only by the checksum
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_playable(bad, device="cpu", dtype="fp32")
    assert load_checkpoint(ckpt)[1]["checksum"].startswith("sha256:")


def test_steps_override_wins_over_a_bad_recommendation(ckpt, tmp_path):
    bad = rewrite(ckpt, tmp_path / "bad.safetensors",
                  meta=lambda r: {**r, "engine": json.dumps({**json.loads(r["engine"]), "steps": 3})})
    assert load_playable(bad, device="cpu", dtype="fp32", engine_overrides={"steps": 2}).backend.cfg.steps == 2


def test_unreadable_files_say_permission_denied(ckpt, tmp_path, monkeypatch):
    import worldsim.errors as E
    from worldsim.checkpoint import read_meta

    ep = npz(tmp_path / "ep.npz")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(E, "open", denied, raising=False)  # root may read anything: deny it here
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*permission denied"):
        read_meta(ckpt)
    with pytest.raises(DataError, match="cannot read episode .*permission denied"):
        read_episode(ep)


# ---------------------------------------------------------------- .npz episodes and play contexts


def npz(path, frames=None, actions=None, env_id=TINY_ENV_ID, meanings=TINY_ACTIONS, **extra):
    frames = np.zeros((6, 16, 16, 3), np.uint8) if frames is None else frames
    actions = np.arange(len(frames)) % len(meanings) if actions is None else actions
    np.savez(path, frames=frames, actions=np.asarray(actions, np.int64), env_id=np.str_(env_id),
             action_meanings=np.array(meanings), **extra)
    return path


def put(path, data: bytes):
    path.write_bytes(data)
    return path


def huge_header(src, dst, shape="(4000000000, 64, 64, 3)"):
    """``src`` with the frames header declaring ``shape`` (the data left as it was, the zip well-formed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "frames.npy":
                hlen = int.from_bytes(data[8:10], "little")
                header = data[10:10 + hlen].decode("latin1")
                start, end = header.index("'shape': ") + 9, header.index(")") + 1
                new = header[:start] + shape + header[end:]
                new = new.rstrip() + " " * (hlen - len(new.rstrip()) - 1) + "\n"
                data = data[:10] + new.encode("latin1") + data[10 + hlen:]
            zout.writestr(info, data)
    return dst


def test_npz_header_declaring_an_enormous_array_is_refused_before_loading(tmp_path):
    bad = huge_header(npz(tmp_path / "ok.npz"), tmp_path / "huge.npz")
    with pytest.raises(DataError, match="declares a uint8 array of shape"):
        read_episode(bad)
    with pytest.raises(DataError, match="declares"):
        load_context_npz(bad, 16)
    from worldsim.data.validate import validate
    assert any("declares" in p for p in validate(bad))


@pytest.mark.parametrize("make,match", [
    pytest.param(lambda p: put(p, np.random.default_rng(0).bytes(3000)), "is not a .npz", id="random-bytes"),
    pytest.param(lambda p: put(p, npz(p).read_bytes()[:700]), "truncated or corrupt", id="truncated"),
    pytest.param(lambda p: npz(p, frames=np.zeros((0, 16, 16, 3), np.uint8)), "has no frames", id="no-frames"),
    pytest.param(lambda p: npz(p, actions=[0, 1, 2, 9, 0, 0]), "action 9 at step 3", id="bad-action"),
    pytest.param(lambda p: npz(p, actions=[0, 1, -1, 0, 0, 0]), "action -1 at step 2", id="negative-action"),
    pytest.param(lambda p: npz(p, env_id="ALE/Pong-v5", meanings=["NOOP", "FIRE", "RIGHT", "LEFT", "RF", "LF"]),
                 "is ALE/Pong-v5", id="another-game"),
])
def test_bad_context_is_refused_at_load(ckpt, tmp_path, make, match):
    p = make(tmp_path / "ctx.npz")
    with pytest.raises(DataError, match=match) as e:
        load_playable(ckpt, device="cpu", dtype="fp32", context_path=p)
    assert "\n" not in str(e.value)


def test_importing_an_empty_npz_is_refused(tmp_path):
    from worldsim.data.npz import import_npz

    p = npz(tmp_path / "empty.npz", frames=np.zeros((0, 16, 16, 3), np.uint8), actions=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="has no frames"):
        import_npz(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_object_arrays_are_named_not_unpickled(tmp_path):
    p = npz(tmp_path / "obj.npz", extra_names=np.array([{"a": 1}], dtype=object))
    assert read_episode(p).env_id == TINY_ENV_ID  # an object array beside the episode is skipped
    q = tmp_path / "obj2.npz"
    np.savez(q, frames=np.zeros((2, 8, 8, 3), np.uint8), actions=np.zeros(2, np.int64), env_id=np.str_("x"),
             action_meanings=np.array(["NOOP", 1], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        read_episode(q)


# ---------------------------------------------------------------- training data: actions checked at load


def test_training_data_with_a_bad_action_is_refused_naming_episode_and_step(tmp_path):
    from worldsim.data.dataset import ClipDataset

    with EpisodeWriter(tmp_path / "ds" / "ep_000000", {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS}) as w:
        for t in range(10):
            w.append(np.zeros((16, 16, 3), np.uint8), t % 6)
    with EpisodeWriter(tmp_path / "ds" / "ep_000001", {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS}) as w:
        for t in range(10):
            w.append(np.zeros((16, 16, 3), np.uint8), t % 6)
    # an action the writer would refuse, patched in as a damaged or foreign file would carry it
    meta = json.loads((tmp_path / "ds" / "ep_000001" / "meta.json").read_text())
    meta["action_meanings"] = TINY_ACTIONS[:4]
    (tmp_path / "ds" / "ep_000001" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "ds" / "ep_000000" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"ep_000000': action 4 at step 4 is outside the action set 0..3"):
        ClipDataset([tmp_path / "ds"], clip_len=4, resolution=8, cache_dir=tmp_path / "cache")


def test_in_memory_clips_check_actions():
    from worldsim.train.data import InMemoryClips

    with pytest.raises(DataError, match="action 6 at step 1"):
        InMemoryClips([(np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 6, 1, 2]))], 2, TINY_ACTIONS)


# ---------------------------------------------------------------- config values: typed checks in one place


@pytest.mark.parametrize("override,match", [
    ("optim.batch_size=0", "'optim.batch_size'.*0 means nothing here; pass a value > 0"),
    ("optim.lr=nan", "'optim.lr'.*nan is not a finite number"),
    ("optim.lr=-1e-4", "'optim.lr'.*below 0"),
    ("optim.steps=-5", "'optim.steps'.*below 0"),
    ("optim.ema_decay=1.5", "'optim.ema_decay'.*outside \\[0, 1\\]"),
    ("run.log_every=0", "'run.log_every'"),
])
def test_training_config_values(override, match):
    from worldsim.train.stage0_teacher import Stage0Config

    with pytest.raises(ConfigError, match=match):
        load_config(Stage0Config, None, [override])


@pytest.mark.parametrize("override,match", [
    ("stall_timeout_s=-1", "'stall_timeout_s'"), ("threads=-2", "'threads'"), ("max_seconds=-3", "'max_seconds'"),
    ("speed=-1", "speed"), ("sink=-2", "'sink'.*>= -1"), ("poll_ms=inf", "'poll_ms'.*not a finite"),
])
def test_play_config_values(override, match):
    from worldsim.app.cli import build_parser, load_configs

    with pytest.raises(WorldsimError, match=match):
        load_configs(build_parser().parse_args([override]))


def test_play_flags_are_checked_like_the_config():
    from worldsim.app.cli import build_parser, load_configs

    with pytest.raises(ConfigError, match="'threads'"):
        load_configs(build_parser().parse_args(["--threads", "-1"]))
    with pytest.raises(ConfigError, match="'max_seconds'"):
        load_configs(build_parser().parse_args(["--max-seconds", "-5"]))


@pytest.mark.parametrize("argv,match", [
    (["--kiosk", "--headless", "--synthetic-input", "5"], "--synthetic-input does not apply to --kiosk"),
    (["--headless", "--max-seconds", "-1"], "--max-seconds must be >= 0"),
    (["--headless", "--replay", "x", "--max-seconds", "-1"], "--max-seconds must be >= 0"),
])
def test_play_flags_that_mean_nothing_exit_2(argv, match, capsys):
    from worldsim.app.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text,match", [("42\n", "not a int"), ("just a string\n", "not a str"),
                                        ("- a\n- b\n", "not a list")])
def test_yaml_that_is_not_a_mapping(tmp_path, text, match):
    from worldsim.app.player import PlayConfig

    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=f"must hold a mapping of keys.*{match}"):
        load_config(PlayConfig, tmp_path / "c.yaml")


def test_every_shipped_config_passes_the_value_checks():
    from pathlib import Path

    from worldsim.app.kiosk import KioskConfig
    from worldsim.app.player import PlayConfig
    from worldsim.data.collect import CollectConfig
    from worldsim.train.pipeline import PipelineConfig

    for path in sorted(Path("configs").glob("*.yaml")):
        fits = 0
        for cls in (PlayConfig, KioskConfig, CollectConfig, PipelineConfig):
            try:
                load_config(cls, path)
                fits += 1
            except ConfigError as e:
                assert "bad value" not in str(e), e
        del fits  # stage configs fit the stage classes (test_train_configs); this only checks the values


# ---------------------------------------------------------------- replay of an unclosed recording


def test_replaying_an_unclosed_recording_says_so(tmp_path):
    import subprocess
    import sys

    w = EpisodeWriter(tmp_path / "rec" / "ep_000000", {"env_id": TINY_ENV_ID, "action_meanings": TINY_ACTIONS})
    for t in range(4):
        w.append(np.zeros((16, 16, 3), np.uint8), 0)
    w.flush()  # committed, never closed: what a killed recorder leaves
    r = subprocess.run([sys.executable, "play.py", "--headless", "--replay", str(tmp_path / "rec"), "--speed", "0",
                        "--max-seconds", "5"], capture_output=True, text=True, timeout=120)
    w.close()
    assert r.returncode == 0, r.stderr
    assert "note:" in r.stderr and "not closed" in r.stderr and "4 readable steps" in r.stderr
