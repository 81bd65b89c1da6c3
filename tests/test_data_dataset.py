"""Clip datasets: the resize cache (built once, area-averaged, invalidated on change), clip boundaries,
sampling and the action alignment (``actions[t]`` produced ``frames[t+1]``)."""

import numpy as np
import pytest
import torch

import worldsim.data.dataset as dsmod
from worldsim.data.dataset import ClipDataset, bench_clips, to_model_actions
from worldsim.data.episode import EpisodeWriter
from worldsim.data.npz import export_npz
from worldsim.errors import DataError

META = {"env_id": "worldsim/Tiny-v0", "action_meanings": ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"]}


def make_episode(path, n, offset=0, shape=(32, 48, 3), meta=None, split="train"):
    """Frame t is a constant image of value (offset + t) % 250: identifies episode and step after resizing."""
    meta = meta or META
    with EpisodeWriter(path, {**meta, "split": split}) as w:
        for t in range(n):
            w.append(np.full(shape, (offset + t) % 250, np.uint8), (offset + t) % len(meta["action_meanings"]))
    return path


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "ds"
    make_episode(root / "train" / "ep_000000", 10, offset=0)
    make_episode(root / "train" / "ep_000001", 4, offset=100)   # shorter than a clip: contributes none
    make_episode(root / "train" / "ep_000002", 7, offset=200)
    make_episode(root / "heldout" / "ep_000000", 9, offset=50, split="heldout")
    return root


def test_len_and_no_clip_crosses_an_episode(data, tmp_path):
    ds = ClipDataset(data, clip_len=5, resolution=16, split="train", cache_dir=tmp_path / "cache")
    assert len(ds) == (10 - 5 + 1) + 0 + (7 - 5 + 1)
    assert ds.env_id == "worldsim/Tiny-v0" and ds.num_actions == 6 and ds.action_meanings[1] == "FIRE"
    seen = set()
    for i in range(len(ds)):
        it = ds[i]
        f, a = it["frames"], it["actions"]
        assert f.shape == (5, 3, 16, 16) and f.dtype == torch.uint8
        assert a.shape == (5,) and a.dtype == torch.int64
        vals = f[:, 0, 0, 0].tolist()
        assert vals == list(range(vals[0], vals[0] + 5))  # consecutive steps of ONE episode
        assert a.tolist() == [v % 6 for v in vals]  # actions[t] belongs to frames[t]
        seen.add((it["episode"], it["start"]))
    assert len(seen) == len(ds)
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds[-1]["start"] == 2


def test_split_filter(data, tmp_path):
    held = ClipDataset(data, clip_len=3, resolution=8, split="heldout", cache_dir=tmp_path / "c")
    assert len(held.episodes) == 1 and len(held) == 7
    every = ClipDataset(data, clip_len=3, resolution=8, cache_dir=tmp_path / "c")
    assert len(every.episodes) == 4


def test_cache_built_once_and_invalidated(data, tmp_path, monkeypatch):
    calls = []
    real = dsmod.resize_frames
    monkeypatch.setattr(dsmod, "resize_frames", lambda f, s: calls.append(len(f)) or real(f, s))
    cache = tmp_path / "cache"
    ds = ClipDataset(data, clip_len=4, resolution=16, cache_dir=cache)
    assert sum(calls) == 10 + 4 + 7 + 9  # every frame resized exactly once
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 4
    arr = np.load(files[0], mmap_mode="r")
    assert arr.dtype == np.uint8 and arr.shape[1:] == (3, 16, 16)
    calls.clear()
    for _ in range(50):
        ds.sample(np.random.default_rng(0))
    ClipDataset(data, clip_len=4, resolution=16, cache_dir=cache)
    assert calls == []  # reads and a second dataset hit the cache
    ClipDataset(data, clip_len=4, resolution=8, cache_dir=cache)
    assert sum(calls) == 30  # another resolution, another cache
    calls.clear()
    # an episode that changes (here: re-recorded longer) is resized again, never served stale
    import shutil

    shutil.rmtree(data / "train" / "ep_000002")
    make_episode(data / "train" / "ep_000002", 12, offset=200)
    ds2 = ClipDataset(data, clip_len=4, resolution=16, cache_dir=cache)
    assert calls == [12]
    assert sorted(ds2.lengths.tolist()) == [4, 9, 10, 12]


def test_cache_holds_the_frames_module_resize_channels_first(tmp_path):
    from worldsim.data.frames import resize_frames

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    with EpisodeWriter(tmp_path / "ds" / "ep_000000", {**META, "split": "train"}) as w:
        for t, f in enumerate(frames):
            w.append(f, t % 6)
    ds = ClipDataset(tmp_path / "ds", clip_len=4, resolution=16, cache_dir=tmp_path / "c")
    assert np.array_equal(ds.episode(0)[0], resize_frames(frames, 16).transpose(0, 3, 1, 2))  # (T, 3, 16, 16)


def test_sampling_generators_and_batches(data, tmp_path):
    ds = ClipDataset(data, clip_len=4, resolution=8, split="train", cache_dir=tmp_path / "c")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = ds.sample(g1), ds.sample(g2)
    assert (a["episode"], a["start"]) == (b["episode"], b["start"])
    batch = ds.sample_batch(5, np.random.default_rng(1))
    assert batch["frames"].shape == (5, 4, 3, 8, 8) and batch["actions"].shape == (5, 4)
    for b in range(5):  # each row is exactly the clip it names
        ref = ds.clip(int(batch["episode"][b]), int(batch["start"][b]))
        assert torch.equal(batch["frames"][b], ref["frames"]) and torch.equal(batch["actions"][b], ref["actions"])
    with pytest.raises(TypeError):
        ds.sample(42)
    stats = bench_clips(ds, seconds=0.2, batch_size=4)
    assert stats["clips_per_s"] > 0 and stats["batched_clips_per_s"] > 0


def test_dataloader_workers_reopen_memmaps(data, tmp_path):
    import pickle

    ds = ClipDataset(data, clip_len=4, resolution=8, split="train", cache_dir=tmp_path / "c")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert all(f is None for f in clone._frames)  # no frame data travels in the pickle
    assert torch.equal(clone[3]["frames"], ds[3]["frames"])


def test_preloaded_clips_equal_memory_mapped_ones(data, tmp_path):
    import pickle

    mapped = ClipDataset(data, clip_len=4, resolution=8, split="train", cache_dir=tmp_path / "c")
    loaded = ClipDataset(data, clip_len=4, resolution=8, split="train", cache_dir=tmp_path / "c", preload=True)
    assert loaded.preloaded and all(type(f) is np.ndarray for f in loaded._frames)  # in memory, not memmaps
    assert all(torch.equal(loaded[i]["frames"], mapped[i]["frames"]) for i in range(len(mapped)))
    clone = pickle.loads(pickle.dumps(loaded))  # a DataLoader worker reads its own copy
    assert clone.preloaded and all(type(f) is np.ndarray for f in clone._frames)
    assert torch.equal(clone[5]["frames"], mapped[5]["frames"])
    frames, actions = loaded.episode(0)  # a whole episode, as the sprite yardstick reads it
    assert frames.shape == (10, 3, 8, 8) and actions.tolist() == [t % 6 for t in range(10)]



def test_preload_larger_than_memory_falls_back_to_the_memory_map(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dsmod, "available_memory", lambda: 1000)  # bytes: far less than the clips
    ds = ClipDataset(data, clip_len=4, resolution=8, split="train", cache_dir=tmp_path / "c", preload=True)
    assert not ds.preloaded and "memory map instead" in caplog.text
    assert isinstance(ds[0]["frames"], torch.Tensor) and all(f is None or isinstance(f, np.memmap) for f in ds._frames)


def test_to_model_actions():
    a = torch.tensor([[3, 1, 4, 1]])
    assert to_model_actions(a, 6).tolist() == [[6, 3, 1, 4]]


def test_npz_episodes_in_dataset(tmp_path):
    ep = make_episode(tmp_path / "e", 6)
    export_npz(ep, tmp_path / "n" / "e.npz")
    ds = ClipDataset(tmp_path / "n" / "e.npz", clip_len=6, resolution=8, cache_dir=tmp_path / "c")
    assert len(ds) == 1 and ds[0]["frames"][:, 0, 0, 0].tolist() == list(range(6))


def test_refuses_mixed_games_and_bad_args(tmp_path):
    make_episode(tmp_path / "a" / "ep0", 5)
    make_episode(tmp_path / "a" / "ep1", 5, meta={"env_id": "ALE/Breakout-v5",
                                                  "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"]})
    with pytest.raises(DataError, match="mix action sets"):
        ClipDataset(tmp_path / "a", clip_len=2, resolution=8, cache_dir=tmp_path / "c")
    make_episode(tmp_path / "b" / "ep0", 5)
    with pytest.raises(DataError, match="no episode has 9 frames"):
        ClipDataset(tmp_path / "b", clip_len=9, resolution=8, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="no heldout episodes"):
        ClipDataset(tmp_path / "b", clip_len=2, resolution=8, split="heldout", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="split must be"):
        ClipDataset(tmp_path / "b", clip_len=2, resolution=8, split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no episodes under"):
        ClipDataset(tmp_path / "empty", clip_len=2, resolution=8)


def test_incomplete_episode_prefix(tmp_path):
    w = EpisodeWriter(tmp_path / "ds" / "ep", META)
    for t in range(6):
        w.append(np.full((8, 8, 3), t, np.uint8), 0)
    w.abort("test")
    ds = ClipDataset(tmp_path / "ds", clip_len=3, resolution=8, cache_dir=tmp_path / "c")
    assert len(ds) == 4
    with pytest.raises(DataError):
        ClipDataset(tmp_path / "ds", clip_len=3, resolution=8, cache_dir=tmp_path / "c", include_incomplete=False)
