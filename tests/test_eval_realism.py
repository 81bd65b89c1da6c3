"""Realism (worldsim.eval.realism): the classifier two-sample test reads near 50% for two samples of the
same real game and near 100% for an obviously wrong model (one that draws the mean frame); the degraded
view; the time split; refusals. Micro size: Tiny-v0 frames at 16x16, a few hundred frames a sample."""

import numpy as np
import pytest

from worldsim.envs.tiny import TINY_ACTIONS, TinyGame
from worldsim.errors import WorldsimError
from worldsim.eval.realism import (RealismConfig, degrade, split_real, split_sample, two_sample_accuracy)
from worldsim.eval.rollout import resize_frames

CFG = RealismConfig(frames=400, train_steps=150, batch=32, width=8, seed=0)


def tiny_episode(seed: int, T: int = 100, repeat: float = 0.8) -> np.ndarray:
    """uint8 (T, 16, 16, 3): the built-in game under sticky random keys, resized as eval resizes."""
    g, rng = TinyGame(), np.random.default_rng(seed)
    frame, frames, a = g.reset(seed=seed), [], 0
    for _ in range(T):
        frames.append(frame)
        if rng.random() > repeat:
            a = int(rng.integers(len(TINY_ACTIONS)))
        frame, *_ = g.step(a)
    return resize_frames(np.stack(frames), 16)


@pytest.fixture(scope="module")
def real():
    return [tiny_episode(seed) for seed in range(8)]


def test_degrade_pools_and_quantises():
    f = np.zeros((2, 4, 6, 3), np.uint8)
    f[0, :2, :2] = 255  # one white 2x2 block -> one white pixel
    f[1, 0, 0] = 100  # a quarter of a block at 100 -> 25 -> level 1 of 16 (bins of 16), drawn at 24
    d = degrade(f)
    assert d.shape == (2, 2, 3, 3) and d.dtype == np.uint8
    assert d[0, 0, 0].tolist() == [248, 248, 248] and d[0, 1, 1].tolist() == [8, 8, 8]
    assert d[1, 0, 0].tolist() == [24, 24, 24]
    levels = np.unique(degrade(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)))
    assert len(levels) <= 16 and degrade(np.zeros((1, 5, 5, 3), np.uint8)).shape == (1, 2, 2, 3)  # odd: cut


def test_split_is_by_time_and_spread_over_the_sequences():
    seqs = [np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1).repeat(3, 3),
            (np.arange(50, dtype=np.uint8) + 150).reshape(50, 1, 1, 1).repeat(3, 3)]
    train, test = split_sample(seqs, 60, np.random.default_rng(0))
    assert len(train) + len(test) == 60 and abs(len(train) - len(test)) <= 2
    tr, te = set(train[:, 0, 0, 0].tolist()), set(test[:, 0, 0, 0].tolist())
    assert not tr & te
    first, second = (lambda v: v < 150), (lambda v: v >= 150)
    for part in (first, second):  # within each sequence every training frame comes before every test frame
        assert max(v for v in tr if part(v)) < min(v for v in te if part(v))
    assert sum(first(v) for v in tr | te) == 40  # 100 of 150 frames -> 40 of 60 picked


def test_two_samples_of_the_same_game_read_near_chance(real):
    a, b = split_real(real)
    for view in ("full", "degraded"):
        r = two_sample_accuracy(a, b, CFG, view)
        assert r.view == view and r.train_frames > 150 and r.test_frames > 150
        assert 0.35 <= r.accuracy <= 0.65, (view, r.accuracy)


def test_a_model_that_draws_the_mean_frame_is_told_apart(real):
    a, b = split_real(real)
    mean = np.concatenate(b).mean(0).round().astype(np.uint8)
    wrong = np.repeat(mean[None], 400, 0)
    for view in ("full", "degraded"):
        assert two_sample_accuracy(a, wrong, CFG, view).accuracy >= 0.95


def test_same_inputs_same_accuracy(real):
    a, b = split_real(real)
    cfg = RealismConfig(frames=100, train_steps=20, batch=16, width=4, seed=3)
    assert two_sample_accuracy(a, b, cfg).accuracy == two_sample_accuracy(a, b, cfg).accuracy


def test_refusals(real):
    with pytest.raises(WorldsimError, match="at least 2 evaluation episodes"):
        split_real(real[:1])
    with pytest.raises(WorldsimError, match="at least 8 frames"):
        two_sample_accuracy(real[0][:4], real[1], CFG)
    with pytest.raises(WorldsimError, match="differ in size"):
        two_sample_accuracy(real[0], np.zeros((50, 8, 8, 3), np.uint8), CFG)
    with pytest.raises(WorldsimError, match="view"):
        two_sample_accuracy(real[0], real[1], CFG, "blurred")
    with pytest.raises(WorldsimError, match="realism"):
        two_sample_accuracy(real[0], real[1], RealismConfig(frames=4))


def test_several_classifiers_average_the_seeds_on_one_split(real):
    import dataclasses

    other = [np.clip(e.astype(np.int16) + 24, 0, 255).astype(np.uint8) for e in real[4:]]  # a brighter world
    one = [two_sample_accuracy(real[:4], other, dataclasses.replace(CFG, seed=s)).accuracy for s in (3, 4, 5)]
    three = two_sample_accuracy(real[:4], other, dataclasses.replace(CFG, seed=3, classifiers=3))
    assert three.runs == pytest.approx(one) and three.accuracy == pytest.approx(np.mean(one))
    assert two_sample_accuracy(real[:4], other, CFG).runs is None  # one classifier: no list
    with pytest.raises(WorldsimError, match="at least 1 classifier"):
        two_sample_accuracy(real[:4], other, dataclasses.replace(CFG, classifiers=0))
