"""The sprite-predictability yardstick on synthetic tracks: exact dynamics are learned and rolled out
exactly; unfound frames are skipped; copy-last's error is the distance travelled."""

import numpy as np
import pytest

from research.predictability import Track, fit_linear, fit_mlp, motion_rows, open_loop_errors

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


def exact_dynamics():
    train = [synthetic_track(200, s) for s in range(4)]
    held = [synthetic_track(120, 10)]
    X, Y = motion_rows(train, history=2, num_actions=5, resolution=64)
    lin = fit_linear(X, Y, ridge=1e-6)
    return X, Y, held, open_loop_errors(held, lin, history=2, num_actions=5, resolution=64, horizons=(1, 8))


def test_exact_dynamics_are_predicted_exactly_open_loop():
    *_, res = exact_dynamics()
    assert res[8]["starts"] > 5
    assert res[1]["model"] < 1e-3 and res[8]["model"] < 1e-2
    assert res[8]["copy_last"] > 1.0  # random actions move it: copy-last is off


@pytest.mark.slow  # 300 epochs of an MLP
def test_the_mlp_learns_exact_dynamics_to_well_under_copy_last():
    X, Y, held, res = exact_dynamics()
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


def test_direct_rows_regress_the_move_over_the_horizon_from_either_view():
    """direct_rows: the target is the move over the horizon; with exact key dynamics a linear fit on
    the tracks' features and one on the state's (RAM bits and bytes, positions, keys) both recover it."""
    from research.predictability import direct_rows

    def episode(seed, T=80, drop=()):  # a RAM that holds the step count: the state, not the keys
        tr = synthetic_track(T, seed, drop)
        both = Track(np.concatenate([tr.pos, tr.pos + 5.0], 1), tr.found, tr.actions)
        ram = np.zeros((T, 128), np.uint8)
        ram[:, 0] = np.arange(T)
        return both, ram

    train = [episode(s) for s in range(6)]
    xt, xs, y = direct_rows(train, horizon=4, history=2, num_actions=5, resolution=64)
    assert xt.shape[1] == 4 + 2 * 4 + 2 * 5 + 4 * 5 + 1 and xs.shape[1] == 128 * 8 + 128 + 4 + 4 * 5 + 1
    tr0 = train[0][0]
    np.testing.assert_allclose(y[0], tr0.pos[3 + 4, :2] - tr0.pos[3, :2])  # first row: t = history + 1
    held_t, held_s, held_y = direct_rows([episode(50)], horizon=4, history=2, num_actions=5, resolution=64)
    for X, H in ((xt, held_t), (xs, held_s)):
        assert np.abs(fit_linear(X, y, ridge=1e-6)(H) - held_y).max() < 1e-3
    # a body missing in the history (t = 20..23) or at t + horizon (t = 16) drops the row
    sparse = direct_rows([episode(7, drop=(20,))], horizon=4, history=2, num_actions=5, resolution=64, every=1)[2]
    assert len(sparse) == len(direct_rows([episode(7)], 4, 2, 5, 64)[2]) - 5
    with pytest.raises(ValueError, match="no frame"):
        direct_rows([episode(1, T=6)], horizon=4, history=2, num_actions=5, resolution=64)


@pytest.mark.slow  # the real emulator
def test_emulator_tracks_record_the_game_state_with_both_bodies():
    pytest.importorskip("ale_py")
    from research.predictability import emulator_tracks
    from worldsim.eval.sprites import opponent_spec, sprite_spec

    [(tr, ram)], n_act = emulator_tracks("ALE/Boxing-v5", [3], 40, 0.8, 64, sprite_spec("ALE/Boxing-v5"),
                                         opponent_spec("ALE/Boxing-v5"))
    assert n_act == 18 and ram.shape == (40, 128) and ram.dtype == np.uint8 and tr.pos.shape == (40, 4)
    assert tr.found.mean() > 0.9 and len(np.unique(ram, axis=0)) > 30  # the state changes every step
    [(again, ram2)], _ = emulator_tracks("ALE/Boxing-v5", [3], 40, 0.8, 64, sprite_spec("ALE/Boxing-v5"),
                                     opponent_spec("ALE/Boxing-v5"))
    np.testing.assert_array_equal(ram, ram2)  # seeded: the same play, the same states
    np.testing.assert_array_equal(tr.actions, again.actions)


@pytest.mark.slow  # the real emulator
def test_state_predictability_script_runs_on_the_real_game(tmp_path, capsys):
    """python -m research.state_predictability end to end on a few short episodes; an unknown game is one line."""
    pytest.importorskip("ale_py")
    import json

    from research import state_predictability as mod
    out = tmp_path / "sp.json"
    assert mod.main(["--train-episodes", "2", "--heldout-episodes", "1", "--steps", "120", "--fractions", "0.5,1",
                     "--epochs", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(f["view"], f["fraction"]) for f in res["fits"]] == [
        ("tracks+keys", 0.5), ("state+keys", 0.5), ("tracks+keys", 1.0), ("state+keys", 1.0)]
    assert res["copy_last_px"] > 0 and all(f["heldout_px"] > 0 for f in res["fits"])
    assert mod.main(["--env", "ALE/Nope-v5", "--train-episodes", "1"]) == 2
    assert "ALE/Nope-v5" in capsys.readouterr().err
