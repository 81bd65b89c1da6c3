"""Frames between the game and the model (worldsim.data.frames): the exact uint8 <-> tensor round trip,
the area-average resize, and one resize for all: a context loaded the way play.py loads it reaches the
model as the training data's frames did."""

import numpy as np
import pytest
import torch

from worldsim.data.frames import resize_frames, to_model, to_uint8
from worldsim.errors import DataError


@pytest.mark.parametrize("shape", [(256, 1, 1, 3), (2, 3, 5, 7, 3)], ids=["K,H,W,3", "B,T,H,W,3"])
def test_uint8_to_model_and_back_is_exact(shape):
    n = int(np.prod(shape))
    frames = (np.arange(n) % 256).astype(np.uint8).reshape(shape)  # every value 0..255
    x = to_model(frames)
    assert x.dtype == torch.float32 and tuple(x.shape) == shape[:-3] + (3, shape[-3], shape[-2])
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    back = to_uint8(x)
    assert back.dtype == np.uint8 and np.array_equal(back, frames)
    assert np.array_equal(to_uint8(to_model(torch.from_numpy(frames))), frames)  # a uint8 tensor as well


def test_layout_and_clipping():
    f = np.zeros((1, 2, 2, 3), np.uint8)
    f[0, 0, 1] = (255, 0, 128)  # one pixel: red, no green, half blue
    x = to_model(f)
    assert x.shape == (1, 3, 2, 2) and x[0, :, 0, 1].tolist() == [1.0, -1.0, pytest.approx(128 / 127.5 - 1, abs=1e-6)]
    out_of_range = torch.tensor([-3.0, 2.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)  # (1, 3, H=1, W=2)
    assert to_uint8(out_of_range)[0, 0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_resize_is_an_exact_area_average():
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = resize_frames(frames, 16)
    blocks = frames.reshape(2, 16, 2, 16, 2, 3).astype(np.float64).mean((2, 4))  # (2, 16, 16, 3)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out - blocks).max() <= 1.0  # 8-bit rounding
    assert resize_frames(frames, (8, 16)).shape == (2, 8, 16, 3)  # (H, W): a non-square target
    line = np.zeros((1, 210, 160, 3), np.uint8)
    line[0, :, 81] = 255  # a one-pixel sprite column survives (nearest sampling could drop it)
    assert resize_frames(line, 64).max() > 50
    assert np.array_equal(resize_frames(frames, 32), frames)  # already that size


def test_bad_frames_are_refused_in_one_line():
    with pytest.raises(DataError, match=r"shape \(2, 32, 32\).*expected uint8 \(n, h, w, 3\)"):
        resize_frames(np.zeros((2, 32, 32), np.uint8), 16)
    with pytest.raises(DataError, match="float32.*expected uint8"):
        to_model(np.zeros((1, 4, 4, 3), np.float32))


def test_context_loaded_as_play_loads_it_equals_the_training_frames(tmp_path):
    """An Atari-sized episode (210 x 160, random pixels, so any other filter differs) in both forms: as
    a training dataset and as the plain .npz that ``play.py --context`` takes."""
    from worldsim.data.dataset import ClipDataset
    from worldsim.data.episode import EpisodeWriter
    from worldsim.data.npz import export_npz
    from worldsim.runtime import load_playable
    from worldsim.runtime.loading import load_context_npz
    from worldsim.runtime.testing import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")  # a 16 x 16 model of the built-in game
    game = load_playable(ckpt, dtype="fp32")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (10, 210, 160, 3), dtype=np.uint8)
    meta = {"env_id": game.env_id, "action_meanings": game.action_meanings, "split": "train"}
    with EpisodeWriter(tmp_path / "ds" / "ep_000000", meta) as w:
        for t, f in enumerate(frames):
            w.append(f, t % len(game.action_meanings))
    train = ClipDataset(tmp_path / "ds", clip_len=4, resolution=16, cache_dir=tmp_path / "cache").episode(0)[0]
    trained_on = np.asarray(train).transpose(0, 2, 3, 1)[-8:]  # (8, 16, 16, 3)
    npz = export_npz(tmp_path / "ds" / "ep_000000", tmp_path / "ctx.npz")

    assert np.array_equal(load_context_npz(npz, 16, k=8).frames, trained_on)
    backend = load_playable(ckpt, dtype="fp32", context_path=npz).backend  # play.py --context
    assert np.array_equal(backend.context.frames, trained_on)
    shown, _ = backend.reset(0)
    assert np.array_equal(shown, trained_on)
