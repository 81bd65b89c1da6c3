"""Environments: the built-in tiny game's dynamics, ALE games through gymnasium, ids and policies."""

import numpy as np
import pytest

from worldsim.envs import EnvConfig, TINY_ENV_ID, TinyConfig, TinyGame, check_env_id, make_env, make_policy
from worldsim.envs.policies import SCRIPTS, game_name
from worldsim.envs.tiny import PALETTE
from worldsim.errors import ConfigError, WorldsimError

ATARI = ["ALE/Boxing-v5", "ALE/Breakout-v5", "ALE/Pong-v5", "ALE/MsPacman-v5"]


def _has_ale():
    try:
        import ale_py  # noqa: F401
        import gymnasium  # noqa: F401
        return True
    except ImportError:
        return False


needs_ale = pytest.mark.skipif(not _has_ale(), reason="gymnasium + ale-py not installed")


# ---------------------------------------------------------------- tiny game


def test_tiny_interface_and_render_matches_state():
    env = make_env(TINY_ENV_ID)
    assert env.env_id == TINY_ENV_ID and env.num_actions == 6
    assert env.action_meanings[:2] == ["NOOP", "FIRE"]
    f = env.reset(seed=3)
    assert f.dtype == np.uint8 and f.shape == (64, 64, 3)
    s = env.true_state
    sprite = f[s["y"]:s["y"] + 12, s["x"]:s["x"] + 12]
    assert (sprite == PALETTE[s["color"]]).all()
    # nothing outside the sprite has the sprite's colour
    mask = (f == PALETTE[s["color"]]).all(-1)
    assert mask.sum() == 12 * 12


def test_tiny_moves_clamps_and_fires():
    env = TinyGame(TinyConfig())
    env.reset(seed=0)
    env.x, env.y, env.color = 20, 30, 0
    a = {n: i for i, n in enumerate(env.action_meanings)}
    env.step(a["RIGHT"]); assert (env.x, env.y) == (24, 30)
    env.step(a["UP"]); assert (env.x, env.y) == (24, 26)
    env.step(a["LEFT"]); env.step(a["DOWN"]); assert (env.x, env.y) == (20, 30)
    env.step(a["NOOP"]); assert (env.x, env.y, env.color) == (20, 30, 0)
    env.step(a["FIRE"]); assert (env.x, env.y, env.color) == (20, 30, 1)
    for _ in range(3):
        env.step(a["FIRE"])
    assert env.color == 1  # cycles through 3 colours
    for _ in range(40):
        env.step(a["LEFT"])
    assert env.x == env.lo == 2  # the wall stops it
    for _ in range(40):
        env.step(a["DOWN"])
    assert env.y == env.hi == 64 - 2 - 12


def test_tiny_deterministic_and_truncates():
    def run(seed):
        env = make_env(TINY_ENV_ID, max_episode_steps=20)
        frames = [env.reset(seed=seed)]
        rng = np.random.default_rng(0)
        for t in range(20):
            f, r, term, trunc = env.step(int(rng.integers(env.num_actions)))
            frames.append(f)
            assert r == 0.0 and not term
            assert trunc == (t == 19)
        return np.stack(frames)

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_tiny_rejects_bad_action():
    env = make_env(TINY_ENV_ID)
    env.reset(seed=0)
    with pytest.raises(WorldsimError, match="outside"):
        env.step(6)


# ---------------------------------------------------------------- ids and config


def test_unknown_game_suggests_close_names():
    with pytest.raises(WorldsimError, match="unknown game id 'worldsim/Tinny-v0'.*worldsim/Tiny-v0"):
        make_env("worldsim/Tinny-v0")
    if _has_ale():
        with pytest.raises(WorldsimError, match="ALE/Boxing-v5"):
            check_env_id("ALE/Boxng-v5")
        with pytest.raises(WorldsimError, match="ALE/Boxing-v5"):
            check_env_id("boxing")


def test_unknown_env_setting():
    with pytest.raises(ConfigError, match="did you mean 'frameskip'"):
        make_env(TINY_ENV_ID, frameskp=2)


def test_default_is_boxing():
    assert EnvConfig().env_id == "ALE/Boxing-v5"
    assert EnvConfig().repeat_action_probability == 0.0


# ---------------------------------------------------------------- Atari


@needs_ale
@pytest.mark.parametrize("env_id", ATARI)
def test_atari_games_play(env_id):
    env = make_env(env_id)
    f = env.reset(seed=0)
    assert f.shape == (210, 160, 3) and f.dtype == np.uint8
    assert env.action_meanings[0] == "NOOP" and env.num_actions == len(env.action_meanings)
    for _ in range(10):
        f, r, term, trunc = env.step(env.num_actions - 1)
        assert f.shape == (210, 160, 3)
    env.close()


@needs_ale
def test_atari_deterministic_with_seed_and_truncation():
    def run():
        env = make_env("ALE/Boxing-v5", max_episode_steps=30)
        out = [env.reset(seed=7)]
        rng = np.random.default_rng(1)
        truncs = []
        for _ in range(30):
            f, r, term, trunc = env.step(int(rng.integers(env.num_actions)))
            out.append(f)
            truncs.append(trunc)
        env.close()
        return np.stack(out), truncs

    a, ta = run()
    b, _ = run()
    assert np.array_equal(a, b)
    assert ta[-1] and not any(ta[:-1])
    assert not np.array_equal(a[0], a[-1])  # the game moved


@needs_ale
def test_atari_full_action_space_and_frameskip():
    env = make_env("ALE/Pong-v5", full_action_space=True, frameskip=2)
    assert env.num_actions == 18
    assert env.describe()["frameskip"] == 2


@needs_ale
def test_atari_bad_mode_is_one_line():
    with pytest.raises(WorldsimError, match="cannot create ALE/Boxing-v5"):
        make_env("ALE/Boxing-v5", mode=99)


# ---------------------------------------------------------------- policies


def test_policy_names_and_errors():
    env = make_env(TINY_ENV_ID)
    for name in ("random", "sticky", "scripted"):
        p = make_policy(name, env, seed=0)
        f = env.reset(seed=0)
        for _ in range(20):
            a = p(f)
            assert 0 <= a < env.num_actions
            f, *_ = env.step(a)
    with pytest.raises(WorldsimError, match="did you mean 'sticky'"):
        make_policy("stiky", env)
    with pytest.raises(WorldsimError, match="bad option for policy 'sticky'"):
        make_policy("sticky", env, repeat=0.5)

    class Fake:
        env_id, action_meanings = "ALE/Tennis-v5", ["NOOP", "FIRE"]

    with pytest.raises(WorldsimError, match="no scripted policy for ALE/Tennis-v5"):
        make_policy("scripted", Fake())


def test_sticky_repeats_and_reseeds():
    env = make_env(TINY_ENV_ID)
    p = make_policy("sticky", env, seed=1, repeat_prob=0.9)
    acts = [p(None) for _ in range(2000)]
    same = np.mean(np.array(acts[1:]) == np.array(acts[:-1]))
    assert 0.88 < same < 0.95  # repeat 0.9 plus 1/6 chance a fresh draw repeats
    p.reset(seed=4)
    a1 = [p(None) for _ in range(50)]
    p.reset(seed=4)
    assert a1 == [p(None) for _ in range(50)]


def test_tiny_sweep_covers_more_than_random():
    def coverage(name):
        env = make_env(TINY_ENV_ID, max_episode_steps=10_000)
        p = make_policy(name, env, seed=0)
        f = env.reset(seed=0)
        seen = set()
        for _ in range(300):
            f, *_ = env.step(p(f))
            seen.add((env.true_state["x"], env.true_state["y"]))
        return len(seen)

    assert coverage("scripted") > 1.3 * coverage("random")


def test_game_names():
    assert game_name("ALE/Boxing-v5") == "boxing"
    assert game_name("BreakoutNoFrameskip-v4") == "breakout"
    assert game_name(TINY_ENV_ID) == "tiny"
    assert {"boxing", "breakout", "pong", "mspacman", "tiny"} <= set(SCRIPTS)


@needs_ale
@pytest.mark.parametrize("env_id", ATARI)
def test_scripted_policies_play_atari(env_id):
    env = make_env(env_id)
    p = make_policy("scripted", env, seed=0)
    f = env.reset(seed=0)
    for _ in range(60):
        a = p(f)
        assert 0 <= a < env.num_actions
        f, r, term, trunc = env.step(a)
    # the same policy reads a resized (model-resolution) frame without failing
    from PIL import Image

    small = np.asarray(Image.fromarray(f).resize((64, 64), Image.BOX))
    assert 0 <= p(small) < env.num_actions


@needs_ale
@pytest.mark.slow
def test_scripted_beats_random_on_breakout_and_boxing():
    def score(env_id, name, steps=700):
        env = make_env(env_id, max_episode_steps=steps)
        total = 0.0
        for seed in (1, 2):
            p = make_policy(name, env, seed=seed)
            f = env.reset(seed=seed)
            while True:
                f, r, term, trunc = env.step(p(f))
                total += r
                if term or trunc:
                    break
        return total

    assert score("ALE/Breakout-v5", "scripted") > score("ALE/Breakout-v5", "random") + 5
    assert score("ALE/Boxing-v5", "scripted") > score("ALE/Boxing-v5", "sticky")
