"""The sprite-predictability yardstick on synthetic tracks: exact dynamics are learned and rolled out
exactly; unfound frames are skipped; copy-last's error is the distance travelled."""

import numpy as np
import pytest

from worldsim.eval.predictability import Track, fit_linear, fit_mlp, motion_rows, open_loop_errors

MOVES = np.array([[0.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])  # NOOP, UP, RIGHT, LEFT, DOWN


def synthetic_track(T, seed, drop=()):
    """The move into frame t+1 is MOVES[actions[t]] exactly (no walls: positions far from any)."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 5, T)
    pos = np.zeros((T, 2))
    pos[0] = [32.0, 32.0]
    for t in range(T - 1):
        pos[t + 1] = pos[t] + MOVES[acts[t]]
    found = np.ones(T, bool)
    found[list(drop)] = False
    pos[~found] = np.nan
    return Track(pos, found, acts)


def test_exact_dynamics_are_predicted_exactly_open_loop():
    train = [synthetic_track(200, s) for s in range(4)]
    held = [synthetic_track(120, 10)]
    X, Y = motion_rows(train, history=2, num_actions=5, resolution=64)
    lin = fit_linear(X, Y, ridge=1e-6)
    res = open_loop_errors(held, lin, history=2, num_actions=5, resolution=64, horizons=(1, 8))
    assert res[8]["starts"] > 5
    assert res[1]["model"] < 1e-3 and res[8]["model"] < 1e-2
    assert res[8]["copy_last"] > 1.0  # random actions move it: copy-last is off
    # the MLP learns them too, to well under copy-last
    mlp = fit_mlp(X, Y, epochs=300, width=64, batch=128)
    assert open_loop_errors(held, mlp, 2, 5, 64, horizons=(8,))[8]["model"] < 0.5 * res[8]["copy_last"]


def test_rows_skip_frames_without_the_sprite():
    full = motion_rows([synthetic_track(30, 0)], history=2, num_actions=5, resolution=64)[0]
    holed = motion_rows([synthetic_track(30, 0, drop=[10])], history=2, num_actions=5, resolution=64)[0]
    # frame 10 unfound removes every row whose window (t-3 .. t+1) contains it: t = 9..13
    assert len(full) - len(holed) == 5
    with pytest.raises(ValueError, match="lower --history"):
        motion_rows([synthetic_track(5, 0)], history=4, num_actions=5, resolution=64)


def two_body_track(T, seed):
    """The player moves by its action; the second body follows the player's last move one frame late."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 5, T)
    pos = np.zeros((T, 4))
    pos[0] = [32.0, 32.0, 20.0, 20.0]
    for t in range(T - 1):
        pos[t + 1, :2] = pos[t, :2] + MOVES[acts[t]]
        pos[t + 1, 2:] = pos[t, 2:] + (MOVES[acts[t - 1]] if t > 0 else 0.0)
    return Track(pos, np.ones(T, bool), acts)


def test_two_bodies_are_predicted_and_rolled_together():
    train = [two_body_track(200, s) for s in range(4)]
    X, Y = motion_rows(train, history=2, num_actions=5, resolution=64)
    assert Y.shape[1] == 4  # both bodies' moves
    lin = fit_linear(X, Y, ridge=1e-6)
    res = open_loop_errors([two_body_track(120, 10)], lin, 2, 5, 64, horizons=(8,))[8]
    # the player's error is the metric; the second body's is reported beside it, and both are exact
    assert res["model"] < 1e-2 and res["other_model"] < 1e-2
    assert res["copy_last"] > 1.0 and res["other_copy_last"] > 1.0
    # the MLP's output has the second body's columns too
    assert fit_mlp(X[:64], Y[:64], epochs=1, width=8)(X[:3]).shape == (3, 4)
