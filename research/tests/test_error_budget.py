"""The error budget: each pixel's error lands in the right region, the regions sum to the frame's MSE,
and pasting a region's real pixels gives the PSNR the budget predicts."""

import numpy as np
import pytest

from research.error_budget import REGIONS, error_budget, grow, region_labels
from worldsim.eval.sprites import BOXING, BOXING_OPPONENT

FLOOR, WHITE, BLACK = (110, 156, 66), (214, 214, 214), (0, 0, 0)


def frame(player, opponent, score=0):
    f = np.empty((64, 64, 3), np.uint8)
    f[:] = FLOOR
    y, x = player
    f[y:y + 4, x:x + 4] = WHITE
    y, x = opponent
    f[y:y + 4, x:x + 4] = BLACK
    f[1:3, 10:10 + score] = WHITE  # a score bar in the top rows (outside the sprite region)
    return f


def test_grow_is_a_square_dilation():
    m = np.zeros((1, 7, 7), bool)
    m[0, 3, 3] = True
    assert grow(m, 1)[0].sum() == 9 and grow(m, 2)[0].sum() == 25


def test_labels_cover_where_the_sprite_is_and_where_it_was_drawn():
    real, pred = frame((20, 20), (40, 40))[None], frame((20, 26), (40, 40))[None]
    lab = region_labels(real, pred, BOXING, BOXING_OPPONENT, grow_px=0)
    assert (lab[0, 20:24, 20:24] == REGIONS.index("player")).all()
    assert (lab[0, 20:24, 26:30] == REGIONS.index("player")).all()
    assert (lab[0, 40:44, 40:44] == REGIONS.index("opponent")).all()
    assert (lab[0, :6] == REGIONS.index("top")).all()


def test_budget_puts_a_misplaced_player_in_the_player_region():
    H = 3
    real = np.stack([frame((20, 20 + h), (40, 40)) for h in range(H)])
    pred = np.stack([frame((20, 20), (40, 40)) for _ in range(H)])  # the player drawn standing
    last = frame((20, 20), (40, 40), score=4)  # copy-last also misses a score change
    out = error_budget([(pred, real, last)], BOXING, BOXING_OPPONENT, horizon=H)
    model, copy = out["sources"]["model"], out["sources"]["copy_last"]
    assert sum(model["share"].values()) == pytest.approx(1.0)
    assert model["share"]["player"] == pytest.approx(1.0)
    assert copy["share"]["top"] > 0  # the score bar
    # with the player pasted in, the model's frames are exact (the PSNR cap of the 1e-10 floor)
    assert out["oracle_psnr_mse"]["exact player"] == pytest.approx(100.0)
    # the figure agrees with a direct computation (horizon 1 is exact: only horizons 2-3 count)
    mse = [((pred[h] / 255.0 - real[h] / 255.0) ** 2).mean() for h in range(H)]
    direct = np.mean([10 * np.log10(1.0 / max(m, 1e-10)) for m in mse])
    assert model["psnr_mse"] == pytest.approx(direct)
    with pytest.raises(ValueError, match="--horizon 4"):
        error_budget([(pred, real, last)], BOXING, BOXING_OPPONENT, horizon=4)


def test_unknown_games_name_the_table_to_extend():
    from worldsim.eval.sprites import NoSpriteSpec, opponent_spec, sprite_spec

    assert opponent_spec("ALE/Boxing-v5") is BOXING_OPPONENT
    with pytest.raises(NoSpriteSpec, match="OPPONENTS"):
        opponent_spec("worldsim/Tiny-v0")
    with pytest.raises(NoSpriteSpec, match="'ALE/Tennis-v5'.*SPRITES"):
        sprite_spec("ALE/Tennis-v5")


def test_sample_spread_tells_bias_from_uncertainty():
    from research.error_budget import sample_spread

    H = 2
    real = np.stack([frame((20, 20), (40, 40))] * H)
    left, right = np.stack([frame((20, 17), (40, 40))] * H), np.stack([frame((20, 23), (40, 40))] * H)
    specs = {"player": BOXING, "opponent": BOXING_OPPONENT}
    # a confident, wrong model: both samples in the same wrong place
    biased = sample_spread([(left, left, real)], specs, H)
    assert biased["sprites"]["player"]["between_samples_px"] == [0.0, 0.0]
    assert biased["sprites"]["player"]["to_real_px"] == pytest.approx([3.0, 3.0])
    assert biased["mse_between_samples"] == [0.0, 0.0] and biased["mse_to_real"][0] > 0
    # an uncertain one: the samples straddle the truth, twice as far from each other as from it
    spread = sample_spread([(left, right, real)], specs, H)
    assert spread["sprites"]["player"]["between_samples_px"] == pytest.approx([6.0, 6.0])
    assert spread["sprites"]["opponent"]["to_real_px"] == [0.0, 0.0]
    # their average is a blur nearer the truth in squared error than either sample
    assert spread["psnr_mse_average_of_two"] > spread["psnr_mse_sample"]
    assert biased["psnr_mse_average_of_two"] == pytest.approx(biased["psnr_mse_sample"])


def test_separation_bins_split_touching_from_apart_boxers():
    from research.error_budget import error_by_separation

    H = 2
    # apart: the opponent 30 px away; the model draws the player 2 px off, copy-last 4 px
    last = frame((20, 10), (20, 40))
    real = np.stack([frame((20, 12), (20, 40)), frame((20, 14), (20, 40))])
    pred = np.stack([frame((20, 12), (20, 40)), frame((20, 12), (20, 40))])
    # touching: the opponent comes within 6 px at horizon 1; the model 3 px off, copy-last 1 px
    last2 = frame((30, 20), (30, 30))
    real2 = np.stack([frame((30, 20), (30, 26)), frame((30, 21), (30, 30))])
    pred2 = np.stack([frame((30, 20), (30, 30)), frame((30, 24), (30, 30))])
    out = error_by_separation([(pred, real, last), (pred2, real2, last2)], BOXING, BOXING_OPPONENT, horizon=H)
    near, mid, far = out["bins"]
    assert out["rollouts"] == 2 and mid["rollouts"] == 0 and mid["model_px"] is None
    assert near["rollouts"] == 1 and near["min_separation_px"] == [0.0, 10.0]
    assert near["model_px"] == pytest.approx(3.0) and near["copy_last_px"] == pytest.approx(1.0)
    assert far["model_px"] == pytest.approx(2.0) and far["copy_last_px"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="--horizon 3"):
        error_by_separation([(pred, real, last)], BOXING, BOXING_OPPONENT, horizon=3)
