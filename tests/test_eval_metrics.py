"""worldsim.eval: PSNR, SSIM, histograms and frame statistics on known inputs; the sprite finder on
synthetic frames; rollout alignment against an oracle engine that returns the real frames."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldsim.errors import WorldsimError
from worldsim.eval.metrics import (PSNR_MAX_DB, SSIM_K1, SSIM_K2, FrameStats, color_histogram, gaussian_window,
                                   hist_l1, psnr, ssim, to_unit)
from worldsim.eval.rollout import (EvalConfig, EvalEpisode, evaluate_baselines, evaluate_model, free_play,
                                   make_plan, plan_starts, real_reference, unique_names)
from worldsim.eval.sprites import (BOXING, TINY, NoSpriteSpec, find_sprites, game_key, sprite_errors, sprite_pose,
                                   sprite_spec)


def rand_images(n=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_identical_is_capped_and_known_value():
    x = rand_images()
    assert torch.allclose(psnr(x, x), torch.full((3,), PSNR_MAX_DB))
    a, b = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1)  # MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0), atol=1e-4)


def test_gaussian_window():
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,) and math.isclose(float(g.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(g, g.flip(0)) and int(g.argmax()) == 5


def test_ssim_identical_is_one_and_symmetric():
    x, y = rand_images(seed=0), rand_images(seed=1)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    assert bool((ssim(x, y) < 0.2).all())  # independent noise images share no structure


@pytest.mark.parametrize("hw", [(8, 8), (7, 12)], ids=lambda s: f"HxW={s[0]}x{s[1]}")
def test_ssim_small_images_shrink_the_window(hw):
    x = rand_images(2, *hw)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert bool((ssim(x, 1 - x) < 0).all())  # inverted contrast: negative structure term


def test_ssim_decreases_with_noise():
    x = rand_images(2, 32, 32, seed=3) * 0.5 + 0.25
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    scores = [float(ssim(x, (x + s * noise).clamp(0, 1)).mean()) for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_ssim_constant_images_is_the_luminance_term():
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = SSIM_K1**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)  # variances 0: the structure term is C2/C2 = 1
    assert float(ssim(x, y)) == pytest.approx(want, rel=1e-5)


def test_ssim_matches_a_direct_per_window_computation():
    """The separable-convolution SSIM against a plain loop over every valid 11x11 window."""
    x, y = rand_images(1, 14, 13, seed=5).double(), rand_images(1, 14, 13, seed=6).double()
    y = 0.6 * x + 0.4 * y  # correlated, so every term matters
    g = gaussian_window(11, 1.5)
    w = torch.outer(g, g)  # (11, 11)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    vals = []
    for c in range(3):
        for i in range(14 - 10):
            for j in range(13 - 10):
                px, py = x[0, c, i:i + 11, j:j + 11], y[0, c, i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert float(ssim(x.float(), y.float())) == pytest.approx(float(torch.stack(vals).mean()), abs=1e-5)


def test_to_unit_layout():
    f = np.zeros((2, 4, 5, 3), np.uint8)
    f[..., 0] = 255
    u = to_unit(f)
    assert u.shape == (2, 3, 4, 5) and float(u[:, 0].min()) == 1.0 and float(u[:, 1:].max()) == 0.0


# ---------------------------------------------------------------------------------------------
# histograms and frame statistics


def test_color_histogram_and_l1():
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((1, 4, 4, 3), np.uint8)
    blue[..., 2] = 255
    h = color_histogram(red)
    assert h.shape == (512,) and h.sum() == pytest.approx(1.0) and h.max() == 1.0
    assert hist_l1(h, color_histogram(blue)) == pytest.approx(2.0)
    half = np.concatenate([red, blue], 1)
    assert hist_l1(color_histogram(half), h) == pytest.approx(1.0)


def test_frame_stats_catches_freezing_and_flicker():
    black, white = np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 8, 8, 3), 255, np.uint8)
    frozen = FrameStats()
    frozen.add(np.repeat(white, 5, 0))
    s = frozen.summary()
    assert s["temporal_change"] == 0.0 and s["mean"] == 1.0 and s["std"] == 0.0 and s["frames"] == 5
    flicker = FrameStats(after=black[0])  # the change into the first frame counts
    flicker.add(np.concatenate([white, black, white]))
    s = flicker.summary(color_histogram(black))
    assert s["temporal_change"] == pytest.approx(1.0) and s["std"] == pytest.approx(math.sqrt(2) / 3)
    assert s["hist_l1"] == pytest.approx(2 * 2 / 3)  # 2/3 of the pixels are in a bin the reference lacks
    gap = FrameStats()
    gap.add(white)
    gap.add(black, continues=False)  # a new sequence: no change measured across it
    assert gap.summary()["temporal_change"] is None


# ---------------------------------------------------------------------------------------------
# sprites


def boxing_like(n=1, size=64):
    f = np.empty((n, size, size, 3), np.uint8)
    f[:] = (110, 156, 66)  # the floor
    return f


def test_boxing_sprite_centroid_and_score_ignored():
    f = boxing_like(2)
    f[0, 20:26, 30:34] = 214  # a 6x4 white boxer: centre (23, 32) in pixel-centre coordinates
    f[:, 1:4, 5:12] = 214  # the player's white score at the top: outside the search region
    pos, found = find_sprites(f, BOXING)
    assert found.tolist() == [True, False]
    np.testing.assert_allclose(pos[0], [23.0, 32.0])
    assert np.isnan(pos[1]).all()


def test_boxing_sprite_tolerates_blend_but_not_other_colours():
    f = boxing_like(5)
    f[0, 20:26, 30:34] = (170, 190, 150)  # mostly white blended with floor (resize edges): L1 112 < 150
    f[1, 20:26, 30:34] = (195, 144, 61)  # the orange ring colour
    f[2, 20:21, 30:32] = 214  # two pixels: fewer than min_frac of the frame
    f[3] = np.random.default_rng(0).integers(0, 256, f[3].shape)  # noise: many near-white pixels, scattered
    f[4, 10:16, 8:12] = f[4, 50:56, 52:56] = 214  # two blobs far apart: not one sprite
    assert find_sprites(f, BOXING)[1].tolist() == [True, False, False, False, False]


def test_boxing_punch_pose_by_width_at_any_resolution():
    for size, k in ((64, 1), (128, 2)):  # the same boxer at two resolutions: the pose is a fraction of the width
        f = boxing_like(3, size)
        f[0, 20 * k:28 * k, 30 * k:35 * k] = 214  # standing: 5 columns of 64
        f[1, 20 * k:28 * k, 30 * k:35 * k] = 214
        f[1, 23 * k:24 * k, 35 * k:41 * k] = 214  # an arm out: 11 columns of 64
        # frame 2: no boxer
        np.testing.assert_array_equal(sprite_pose(f, BOXING), [0.0, 1.0, np.nan])
    assert np.isnan(sprite_pose(boxing_like(1), TINY)).all() or TINY.pose_width == 0


def test_tiny_sprite_on_the_real_game_resized():
    from worldsim.envs.tiny import TinyGame
    from worldsim.eval.rollout import resize_frames

    g = TinyGame()
    frames, truth = [], []
    for seed in range(4):
        frames.append(g.reset(seed=seed))
        truth.append(g.true_state)
    small = resize_frames(np.stack(frames), 16)  # 64 -> 16: the 12px square becomes 3x3
    pos, found = find_sprites(small, TINY)
    assert found.all()
    s = g.tiny.sprite / 2
    want = np.array([[(t["y"] + s) / 4, (t["x"] + s) / 4] for t in truth])  # centre, in 16x16 pixels
    np.testing.assert_allclose(pos, want, atol=0.5)


def test_sprite_table_lookup():
    assert game_key("ALE/Boxing-v5") == game_key("BoxingNoFrameskip-v4") == "boxing"
    assert sprite_spec("worldsim/Tiny-v0") is TINY
    with pytest.raises(NoSpriteSpec, match="ALE/Tennis-v5.*boxing"):
        sprite_spec("ALE/Tennis-v5")


def test_sprite_errors_penalty_and_missing_reference():
    real_pos = np.array([[10.0, 10.0], [10.0, 10.0], [np.nan, np.nan]])
    real_found = np.array([True, True, False])
    pred_pos = np.array([[13.0, 14.0], [np.nan, np.nan], [1.0, 1.0]])
    pred_found = np.array([True, False, True])
    err, dist = sprite_errors(pred_pos, pred_found, real_pos, real_found, miss_penalty=16.0)
    np.testing.assert_allclose(err, [5.0, 16.0, np.nan])
    np.testing.assert_allclose(dist, [5.0, np.nan, np.nan])


# ---------------------------------------------------------------------------------------------
# rollout plumbing with an oracle engine


def test_plan_starts():
    assert plan_starts(T=30, context=4, horizon=6, n=3) == [0, 10, 20]  # last start 20: frame 29 is the last
    assert plan_starts(T=10, context=4, horizon=6, n=3) == [0]
    assert plan_starts(T=9, context=4, horizon=6, n=3) == []
    assert plan_starts(T=30, context=4, horizon=6, n=1) == [10]


def test_stratified_starts_one_per_part_and_seeded():
    draws = [plan_starts(T=3010, context=4, horizon=6, n=3, rng=np.random.default_rng(s)) for s in range(40)]
    for starts in draws:  # 3001 possible starts in three parts: 0-999, 1000-2000, 2001-3000
        assert len(starts) == 3 and 0 <= starts[0] < 1000 <= starts[1] <= 2000 < starts[2] <= 3000
    assert len({tuple(d) for d in draws}) > 30  # not a fixed phase
    assert plan_starts(T=9, context=4, horizon=6, n=3, rng=np.random.default_rng(0)) == []
    assert plan_starts(T=11, context=4, horizon=6, n=5, rng=np.random.default_rng(0)) == [0, 1]  # 2 possible starts
    # make_plan: seeded by the episode's name, so an episode keeps its starts beside any other
    eps = random_episodes(3, T=200)
    cfg = EvalConfig(context=3, horizon=5, starts=4)
    plan = make_plan(eps, cfg)
    assert make_plan(eps[1:], cfg) == [(i - 1, s) for i, s in plan if i > 0]
    assert make_plan(eps, EvalConfig(context=3, horizon=5, starts=4, seed=1)) != plan
    assert {s for _, s in make_plan(eps, EvalConfig(context=3, horizon=5, starts=4, spacing="even"))} == {0, 64, 128, 192}
    with pytest.raises(WorldsimError, match="--spacing"):
        EvalConfig(spacing="random").validate()


def test_unique_names_tell_same_named_episodes_apart():
    from pathlib import Path
    paths = [Path("data/boxing/heldout/ep_000000"), Path("data/boxing_scripted/heldout/ep_000000"),
             Path("data/boxing/heldout/ep_000001"), Path("/abs/train/ep_000002.npz"), Path("heldout/ep_000002")]
    assert unique_names(paths) == ["boxing_heldout_ep_000000", "boxing_scripted_heldout_ep_000000", "ep_000001",
                                   "train_ep_000002", "heldout_ep_000002"]
    same = [Path("a/ep"), Path("a/ep")]  # one episode given twice
    assert unique_names(same) == ["a_ep_0", "a_ep_1"]


class OracleEngine:
    """Returns the real next frames, after checking it was given actions aligned as the
    episode format has them (``actions[t]`` chosen after ``frames[t]``)."""

    def __init__(self, episodes, chunk, no_action, horizon=10**9):
        self.episodes, self.cfg, self.no_action, self.horizon = episodes, SimpleNamespace(chunk=chunk), no_action, horizon

    def reset(self, batch_size, seed=None):
        self.B = batch_size

    def prefill(self, frames, prev_actions):
        u8 = ((frames.permute(0, 1, 3, 4, 2) + 1) * 127.5).round().byte().numpy()  # (B, K, R, R, 3)
        self.where = []
        for b in range(len(u8)):
            for ep in self.episodes:  # find the context in its episode (random frames are unique)
                for s in range(len(ep.frames) - u8.shape[1] + 1):
                    if np.array_equal(ep.frames[s:s + u8.shape[1]], u8[b]):
                        want = ep.prev_actions(self.no_action)[s:s + u8.shape[1]]
                        assert prev_actions[b].tolist() == want.tolist()
                        self.where.append([ep, s + u8.shape[1] - 1, 0])  # latest frame, frames made
        assert len(self.where) == len(u8)

    def step(self, actions):
        out = []
        for b, (ep, t, made) in enumerate(self.where):
            frames = []
            for c in range(actions.shape[1]):
                if made < self.horizon:  # beyond it (a last chunk's padding) the frames are dropped
                    assert int(actions[b, c]) == int(ep.actions[t]), "step(a_t) must predict frame t+1"
                frames.append(ep.frames[min(t + 1, len(ep.frames) - 1)])
                t, made = t + 1, made + 1
            self.where[b][1:] = [t, made]
            out.append(np.stack(frames))
        x = torch.from_numpy(np.stack(out)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # (B, C, 3, R, R)
        return x


def random_episodes(n=2, T=20, R=16, seed=0, with_sprite=True):
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        frames = rng.integers(0, 60, (T, R, R, 3), dtype=np.uint8)  # dark noise: never a palette colour
        if with_sprite:
            for t in range(T):  # a red 3x3 square walking right
                x = (t + i) % (R - 3)
                frames[t, 5:8, x:x + 3] = (232, 72, 56)
        eps.append(EvalEpisode(f"ep{i}", None, frames, rng.integers(0, 6, T).astype(np.int64)))
    return eps


@pytest.mark.parametrize("chunk", [1, 2], ids=lambda c: f"C={c}")
def test_oracle_rollouts_score_perfectly(chunk):
    eps = random_episodes()
    cfg = EvalConfig(context=3, horizon=5, starts=3, batch=4)
    plan = make_plan(eps, cfg)
    engine = OracleEngine(eps, chunk, no_action=6, horizon=cfg.horizon)
    saved = []
    per_h = evaluate_model(engine, eps, plan, cfg, TINY, penalty=4.0, no_action=6,
                           on_rollout=lambda i, s, f: saved.append((i, s, f)))
    assert per_h["psnr"] == [PSNR_MAX_DB] * 5 and per_h["psnr_mse"] == pytest.approx([PSNR_MAX_DB] * 5)
    assert per_h["ssim"] == pytest.approx([1.0] * 5, abs=1e-6)
    assert per_h["sprite_err_px"] == [0.0] * 5 and per_h["sprite_miss_rate"] == [0.0] * 5
    assert len(saved) == len(plan) == 6
    for i, s, f in saved:  # horizon step h is frame s + K + h - 1
        np.testing.assert_array_equal(f, eps[i].frames[s + 3:s + 8])


def test_baselines_on_a_static_episode():
    eps = random_episodes(1, with_sprite=False)
    eps[0].frames[:] = eps[0].frames[0]  # nothing moves: copying the last frame is perfect
    cfg = EvalConfig(context=3, horizon=4, starts=2)
    b = evaluate_baselines(eps, make_plan(eps, cfg), cfg, None, 4.0, no_action=6)
    assert b["copy_last"]["psnr"] == [PSNR_MAX_DB] * 4
    assert b["mean_frame"]["psnr"] == [PSNR_MAX_DB] * 4  # the mean of identical frames is the frame
    assert "sprite_err_px" not in b["copy_last"]


def test_psnr_mse_pools_the_error_over_rollouts():
    """Two rollouts, one exact (per-frame PSNR at the 100 dB cap), one at MSE 0.01 (20 dB): the mean of
    PSNRs reads 60 dB, the PSNR of the mean error 10 log10(1 / 0.005) = 23.0 dB."""
    from worldsim.eval.rollout import HorizonMetrics, add_frame_metrics, summarize
    real = np.zeros((2, 3, 4, 4, 3), np.uint8)
    pred = real.copy()
    pred[1] = 26  # 26/255 ~ 0.102: MSE 0.0104
    m = HorizonMetrics()
    add_frame_metrics(m, pred, real)
    per_h = m.per_horizon()
    mse1 = (26 / 255) ** 2
    assert per_h["psnr"] == pytest.approx([(100 + 10 * math.log10(1 / mse1)) / 2] * 3, rel=1e-5)
    assert per_h["psnr_mse"] == pytest.approx([10 * math.log10(2 / mse1)] * 3, rel=1e-5)
    s = summarize(per_h, 3)
    assert s["psnr_mse_h1_8"] == pytest.approx(10 * math.log10(2 / mse1), rel=1e-5) and s["psnr_mse_h16"] is None


def test_free_play_reports_a_frozen_model():
    eps = random_episodes(1, T=30)

    class Frozen(OracleEngine):  # always shows the last context frame again
        def step(self, actions):
            ep, t, _ = self.where[0]
            return torch.from_numpy(ep.frames[t][None, None]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    cfg = EvalConfig(context=3, free_play=12, windows=3)
    ref = real_reference(eps, TINY, window=4)
    snaps = {}
    out = free_play(Frozen(eps, 1, 6), eps[0], 0, cfg, ["A"] * 6, TINY, ref, 6,
                    on_snapshot=lambda n, f: snaps.__setitem__(n, f), snapshot_at=[1, 12, 1000])
    assert [(w["first_frame"], w["last_frame"]) for w in out["windows"]] == [(1, 4), (5, 8), (9, 12)]
    assert all(w["temporal_change"] == 0.0 and w["sprite_found_rate"] == 1.0 for w in out["windows"])
    assert out["real"]["temporal_change"] > 0.05 and out["drift_last_window"]["temporal_change_ratio"] == 0.0
    assert sorted(snaps) == [1, 12]
    np.testing.assert_array_equal(snaps[12], eps[0].frames[2])


def test_free_play_reports_a_dropped_ball_beside_the_real_rate():
    """A world that loses its ball still shows the player: free play reports the ball found per window
    and at the end, next to the rate on real frames."""
    from worldsim.eval.sprites import SpriteSpec

    eps = random_episodes(1, T=30)
    ball = SpriteSpec("ball", ((255, 255, 255),), tol=30, min_frac=0.001)
    eps[0].frames[:, 12, 12] = 255  # a ball on every real frame (the rest is dark noise and the player)

    class NoBall(OracleEngine):  # shows the last context frame without its ball
        def step(self, actions):
            ep, t, _ = self.where[0]
            frame = ep.frames[t].copy()
            frame[12, 12] = 0
            return torch.from_numpy(frame[None, None]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    cfg = EvalConfig(context=3, free_play=8, windows=2)
    ref = real_reference(eps, TINY, window=4, ball=ball)
    assert ref["ball_found_rate"] == 1.0
    out = free_play(NoBall(eps, 1, 6), eps[0], 0, cfg, ["A"] * 6, None, ref, 6, ball=ball)
    assert [w["ball_found_rate"] for w in out["windows"]] == [0.0, 0.0]
    assert out["drift_last_window"]["ball_found_rate"] == 0.0
    assert out["drift_last_window"]["ball_found_rate_real"] == 1.0
    assert "sprite_found_rate" not in out["windows"][0]


def test_free_play_reports_items_that_came_back():
    """A counted state (Breakout's bricks): the real episode breaks its wall; a world that draws the full
    wall again reports the bricks that came back and is not ``kept``; one that holds the last context
    frame keeps them."""
    from worldsim.eval.counts import CountSpec

    eps = random_episodes(1, T=30)
    spec = CountSpec("bricks", ((255, 255, 255),), background=(0, 0, 0), rows=(12, 14), cols=(0, 16), native=(16, 16),
                     item_px=4)
    f = eps[0].frames
    f[:, 12:14] = 0
    for t in range(len(f)):
        f[t, 12:14, : 16 - t // 2] = 255  # the wall: 8 bricks of 2 x 2, one broken every 4 frames
    ref = real_reference(eps, None, window=4, counter=spec)
    assert ref["count_regrown"] == 0.0

    class Repaired(OracleEngine):  # draws the episode's first frame: the whole wall again
        def step(self, actions):
            return torch.from_numpy(f[0][None, None]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    class Frozen(OracleEngine):  # holds the last context frame
        def step(self, actions):
            ep, t, _ = self.where[0]
            return torch.from_numpy(ep.frames[t][None, None]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1

    cfg = EvalConfig(context=3, free_play=8, windows=2)
    start = 16
    back = free_play(Repaired(eps, 1, 6), eps[0], start, cfg, ["A"] * 6, None, ref, 6, counter=spec)["counts"]
    want = (16 - (start + 2) // 2) * 2 / 4  # bricks on the last context frame (frame 18): 3.5
    assert back["start"] == pytest.approx(want) and back["first_window"] == pytest.approx(8.0)
    assert back["regrown"] == pytest.approx(8.0 - want) and not back["kept"] and back["regrown_real"] == 0.0
    held = free_play(Frozen(eps, 1, 6), eps[0], start, cfg, ["A"] * 6, None, ref, 6, counter=spec)["counts"]
    assert held["regrown"] == 0.0 and held["kept"] and held["last_window"] == pytest.approx(want)


def test_opponent_metric_beside_the_players():
    """A game with an opponent entry gets ``opponent_*`` per horizon: copy-last's opponent error is the
    distance the opponent walked, the player's metric is untouched, and the table's summary has it."""
    from worldsim.eval.rollout import summarize
    from worldsim.eval.sprites import BOXING, BOXING_OPPONENT

    R, T = 32, 16
    frames = np.empty((T, R, R, 3), np.uint8)
    frames[:] = (110, 156, 66)  # Boxing's floor
    for t in range(T):
        frames[t, 8:11, 8:11] = (214, 214, 214)  # the player stands
        frames[t, 20:23, 4 + t:7 + t] = (0, 0, 0)  # the opponent walks right, 1 px a frame
    eps = [EvalEpisode("box", None, frames, np.zeros(T, np.int64))]
    cfg = EvalConfig(context=3, horizon=4, starts=2)
    plan = make_plan(eps, cfg)
    b = evaluate_baselines(eps, plan, cfg, BOXING, 4.0, no_action=6, opponent=BOXING_OPPONENT)["copy_last"]
    assert b["sprite_err_px"] == [0.0] * 4
    assert b["opponent_err_found_px"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert summarize(b, 4)["opponent_err_found_h8"] == pytest.approx(4.0)
    oracle = evaluate_model(OracleEngine(eps, 1, no_action=6, horizon=4), eps, plan, cfg, BOXING, 4.0, no_action=6,
                            opponent=BOXING_OPPONENT)
    assert oracle["opponent_err_found_px"] == [0.0] * 4 and oracle["opponent_miss_rate"] == [0.0] * 4
    # the player's punch in every frame after the context, so copying the last context frame never shows it
    one = EvalConfig(context=3, horizon=4, starts=1)
    punch = frames.copy()
    eps_p = [EvalEpisode("box", None, punch, np.zeros(T, np.int64))]
    plan = make_plan(eps_p, one)
    punch[plan[0][1] + 3:, 9:10, 11:15] = (214, 214, 214)  # an arm out: 7 of 32 columns (> 9.5 / 64 of the width)
    b = evaluate_baselines(eps_p, plan, one, BOXING, 4.0, no_action=6)["copy_last"]
    assert b["sprite_pose_rate"] == [0.0] * 4 and b["sprite_pose_rate_real"] == [1.0] * 4
    late = summarize(b, 4)
    assert (late["sprite_pose_late"], late["sprite_pose_late_real"]) == (0.0, 1.0)
    # without an opponent entry, no such key
    assert "opponent_err_found_px" not in evaluate_baselines(eps, plan, cfg, BOXING, 4.0, no_action=6)["copy_last"]
