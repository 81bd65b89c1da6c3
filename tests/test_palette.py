"""The game's colours: measured from frames, carried by checkpoints, snapped to by the engine."""

import json

import numpy as np
import pytest
import torch

from worldsim.checkpoint import load_model, read_meta
from worldsim.data.palette import MAX_COLOURS, Palette, palette_of, snap_reference
from worldsim.engine import Engine, EngineConfig
from worldsim.envs.tiny import TINY_ENV_ID
from worldsim.errors import CheckpointError, DataError
from worldsim.runtime.testing import write_random_checkpoint
from worldsim.train.data import InMemoryClips, synthetic_episodes

COLOURS = np.array([[110, 156, 66], [0, 0, 0], [214, 214, 214], [195, 144, 61]], np.uint8)


def test_from_frames_orders_by_count_and_refuses_smooth_frames():
    f = np.zeros((2, 4, 4, 3), np.uint8)
    f[:] = COLOURS[0]
    f[0, 0, :2] = COLOURS[2]
    f[1, 3, 3] = COLOURS[1]
    pal = Palette.from_frames([f])
    assert pal.colours.tolist() == [COLOURS[0].tolist(), COLOURS[2].tolist(), COLOURS[1].tolist()]
    ramp = np.arange(MAX_COLOURS + 1, dtype=np.int64)
    smooth = np.stack([ramp % 256, ramp // 256, np.zeros_like(ramp)], -1).astype(np.uint8)
    assert Palette.from_frames([smooth[None]]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_snap_matches_the_plain_nearest_colour(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 3, 9, 7, generator=g) * 2.2 - 1.1).to(dtype)  # outside [-1, 1] too
    pal = Palette(COLOURS)
    got = pal.snap(x)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, snap_reference(x, COLOURS), atol=0, rtol=0)
    # every pixel is one of the palette's colours, and a palette colour snaps to itself
    u8 = ((got.float() + 1) * 127.5).round().movedim(-3, -1).reshape(-1, 3)
    assert {tuple(p) for p in u8.int().tolist()} <= {tuple(c) for c in COLOURS.tolist()}
    exact = (torch.from_numpy(COLOURS).float() / 127.5 - 1).view(1, 4, 3, 1, 1)
    torch.testing.assert_close(pal.snap(exact.float()), exact.float())


def test_a_pickled_palette_leaves_its_lookup_table_behind():
    import pickle

    pal = Palette(COLOURS)
    x = torch.rand(1, 1, 3, 8, 8) * 2 - 1
    want = pal.snap(x)
    copy = pickle.loads(pickle.dumps(pal))
    assert len(pickle.dumps(pal)) < 10_000 and not copy._table
    assert torch.equal(copy.snap(x), want)


def test_meta_round_trip_and_damaged_meta():
    pal = Palette(COLOURS)
    assert (Palette.from_meta(json.loads(json.dumps(pal.to_meta()))).colours == COLOURS).all()
    too_many = {"colours": "00" * 3 * (MAX_COLOURS + 1)}
    for bad, match in [("00ff00", "6 hex digits"), ({"colours": "12345"}, "6 hex digits"),
                       ({"colours": "zz0000"}, "not hex digits"), (too_many, "colours")]:
        with pytest.raises(CheckpointError, match=match):
            Palette.from_meta(bad, "checkpoint 'x'")


def test_training_data_gives_its_palette():
    eps = synthetic_episodes(n=2, T=12, resolution=16)
    pal = palette_of(InMemoryClips(eps, 4, ["NOOP", "UP", "RIGHT", "LEFT", "DOWN"]), stride=1)
    frames = np.concatenate([np.moveaxis(f, 1, -1) for f, _ in eps]).reshape(-1, 3)
    assert {tuple(c) for c in pal.colours.tolist()} == {tuple(c) for c in np.unique(frames, axis=0).tolist()}


def _engine(model, palette=True, seed=3):
    eng = Engine(model, EngineConfig(steps=2, window=4, seed=seed, palette=palette))
    eng.reset(1, seed=seed)
    return eng


def test_engine_draws_only_the_checkpoints_colours(tmp_path):
    path = write_random_checkpoint(tmp_path / "m.safetensors")
    model, _ = load_model(path)
    assert model.palette is None  # a checkpoint without one: the engine draws freely
    free = _engine(model).step(0)
    model.palette = Palette(COLOURS)
    eng = _engine(model)
    drawn = [eng.step(a) for a in (0, 1, 2)]
    assert torch.equal(drawn[0], Palette(COLOURS).snap(free))  # the same frame, snapped
    for x in drawn:
        u8 = ((x + 1) * 127.5).round().movedim(-3, -1).reshape(-1, 3).int().tolist()
        assert {tuple(p) for p in u8} <= {tuple(c) for c in COLOURS.tolist()}
    assert torch.equal(_engine(model, palette=False).step(0), free)  # engine.palette=false: as drawn


def test_add_palette_rewrites_a_checkpoint_and_refuses_another_game(tmp_path):
    from worldsim.data.cli import main as data_main
    from worldsim.data.collect import CollectConfig, collect
    from worldsim.envs import EnvConfig

    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    before = read_meta(ckpt)
    collect(CollectConfig(env=EnvConfig(env_id=TINY_ENV_ID, max_episode_steps=40), policy="sticky", steps=40,
                          out=str(tmp_path / "tiny"), workers=0, heldout_episodes=0, seed=5), progress=False)
    assert data_main(["palette", str(tmp_path / "tiny"), "--checkpoint", str(ckpt)]) == 0
    meta = read_meta(ckpt)
    model, _ = load_model(ckpt)
    assert model.palette is not None and 2 <= len(model.palette) <= MAX_COLOURS
    assert {k: v for k, v in meta.items() if k not in ("palette", "checksum")} == \
        {k: v for k, v in before.items() if k != "checksum"}
    boxing = write_random_checkpoint(tmp_path / "boxing.safetensors", size="default")
    with pytest.raises(DataError, match="pass episodes of its game"):
        data_main(["palette", str(tmp_path / "tiny"), "--checkpoint", str(boxing)])
    assert "palette" not in read_meta(boxing)
