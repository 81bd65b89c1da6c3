"""The arcade without trained models: the game table (names, assets, keys), the scripted collection
policies on the real emulator (Pong and Breakout serve with FIRE, Ms. Pac-Man travels the maze), the
player locators against the emulator's RAM, and the control check's directions per game through the
counterfactual machinery with a micro random model."""

from pathlib import Path

import numpy as np
import pytest

from worldsim.envs.games import (GAMES, NotShipped, UnknownGame, control_directions, find_game, get_game,
                                 shipped_games, shipped_model)
from worldsim.errors import WorldsimError

ALE = pytest.importorskip("ale_py", reason="ale-py is not installed (pip install gymnasium ale-py)")

MEANINGS = {"pong": ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"],
            "breakout": ["NOOP", "FIRE", "RIGHT", "LEFT"],
            "mspacman": ["NOOP", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT"]}


# -- the table ------------------------------------------------------------------------------------

def test_games_are_found_by_short_name_title_or_env_id():
    for text in ("pong", "Pong", "ALE/Pong-v5", "PongNoFrameskip-v4", " PONG "):
        assert get_game(text).name == "pong"
    assert get_game("Ms. Pac-Man").env_id == get_game("ALE/MsPacman-v5").env_id == "ALE/MsPacman-v5"
    assert find_game("ALE/Tennis-v5") is None
    with pytest.raises(UnknownGame, match=r"unknown game 'pongg'; did you mean 'pong'\? games: boxing, pong"):
        get_game("pongg")


def test_shipped_games_and_the_line_for_a_game_that_does_not_ship(tmp_path):
    (tmp_path / "assets").mkdir()
    assert shipped_games(tmp_path) == []
    (tmp_path / "assets" / "default.safetensors").write_bytes(b"x")
    assert [g.name for g in shipped_games(tmp_path)] == ["boxing"]
    assert shipped_model("boxing", tmp_path)[1] == tmp_path / "assets" / "default.safetensors"
    with pytest.raises(NotShipped) as e:
        shipped_model("pong", tmp_path)
    line = str(e.value)
    assert "\n" not in line and "no model of Pong ships" in line and "shipped: boxing" in line
    assert "worldsim collect --config configs/collect_pong_fs2.yaml" in line and "scripts/reproduce_pong.sh" in line
    assert isinstance(e.value, WorldsimError)


def test_every_game_names_configs_that_exist_and_its_real_action_set():
    from worldsim.envs import make_env

    for g in GAMES.values():
        for path in g.collect:
            assert Path(path).is_file(), path
        if g.name in MEANINGS:
            assert make_env(g.env_id).action_meanings == MEANINGS[g.name]


def test_control_directions_come_from_the_action_meanings():
    assert control_directions("ALE/Pong-v5", MEANINGS["pong"]) == {"UP": "RIGHT", "DOWN": "LEFT"}
    assert control_directions("ALE/Breakout-v5", MEANINGS["breakout"]) == {"LEFT": "LEFT", "RIGHT": "RIGHT"}
    assert control_directions("ALE/MsPacman-v5", MEANINGS["mspacman"]) == {d: d for d in ("UP", "DOWN", "LEFT", "RIGHT")}
    from worldsim.eval.response import held_keys

    assert held_keys(MEANINGS["pong"], "ALE/Pong-v5") == {"NOOP": "NOOP", "UP": "RIGHT", "DOWN": "LEFT"}
    assert held_keys(MEANINGS["pong"]) == {"NOOP": "NOOP", "RIGHT": "RIGHT", "LEFT": "LEFT"}  # without the game


# -- the emulator, RAM and the locators ---------------------------------------------------------

def play(env_id, actions, seed=0):
    """Frames (after each step) and RAM of the real game under a list of action names."""
    from worldsim.envs import make_env

    env = make_env(env_id)
    env.reset(seed=seed)
    frames, rams = [], []
    for name in actions:
        f, *_ = env.step(env.action_meanings.index(name))
        frames.append(f)
        rams.append(env._env.unwrapped.ale.getRAM().copy())
    env.close()
    return np.stack(frames), np.stack(rams)


def scripted_play(env_id, steps, **env_kw):
    """Frames (after each step) and rewards of the game's scripted policy, to the episode's end at most."""
    from worldsim.envs import make_env, make_policy

    env = make_env(env_id, **env_kw)
    policy = make_policy("scripted", env, seed=0)
    frame, frames, rewards = env.reset(seed=0), [], []
    for _ in range(steps):
        frame, r, term, trunc = env.step(policy(frame))
        frames.append(frame)
        rewards.append(r)
        if term or trunc:
            break
    env.close()
    return np.stack(frames), np.asarray(rewards)


def locate(frames, env_id, resolution=None):
    from worldsim.data.frames import resize_frames
    from worldsim.eval.sprites import find_sprites, sprite_spec

    f = frames if resolution is None else resize_frames(frames, resolution)
    return find_sprites(f, sprite_spec(env_id))


def test_pong_locator_follows_the_right_paddle_as_ram_places_it():
    acts = ["FIRE"] * 5 + ["RIGHT"] * 3 + ["NOOP"] * 2 + ["LEFT"] * 4 + ["NOOP"] * 2
    frames, ram = play("ALE/Pong-v5", acts)
    pos, found = locate(frames, "ALE/Pong-v5")
    assert found.all()
    np.testing.assert_allclose(pos[:, 1], 142.0)  # columns 140-143, pixel centres at +0.5
    whole = (pos[:, 0] > 34 + 8) & (pos[:, 0] < 194 - 8)  # the paddle not under a border
    assert whole.sum() >= 10
    assert np.abs(pos[whole, 0] - (ram[whole, 51].astype(float) - 5.5)).max() <= 1.5  # RAM[51]: the paddle's row
    dy = np.diff(pos[:, 0])
    assert (dy[5:7] < -5).all() and (dy[10:13] > 5).all()  # RIGHT moves it up, LEFT down, as the game does
    pos64, found64 = locate(frames, "ALE/Pong-v5", 64)
    assert found64.all()
    np.testing.assert_allclose(pos64[:, 0] * 210 / 64, pos[:, 0], atol=6)


def test_pong_ball_locator_follows_the_ball_as_ram_places_it():
    """The ball (free play's ball found rate): where RAM holds a ball it is found at RAM[54] - 12 (row),
    RAM[49] - 48 (column); without one (RAM[54] = 0: before the serve, after a point) it is not; at
    64x64 it is found on most frames that show it, and nowhere else."""
    from worldsim.data.frames import resize_frames
    from worldsim.eval.sprites import ball_spec, find_sprites, opponent_spec

    frames, ram = play("ALE/Pong-v5", ["FIRE"] * 3 + ["NOOP"] * 80)
    spec = ball_spec("ALE/Pong-v5")
    pos, found = find_sprites(frames, spec)
    in_play = ram[:, 54] > 0
    assert 20 <= found.sum() and not (found & ~in_play).any() and (~in_play).sum() >= 10
    np.testing.assert_allclose(pos[found], np.stack([ram[found, 54] - 12.0, ram[found, 49] - 48.0], -1), atol=1)
    pos64, found64 = find_sprites(resize_frames(frames, 64), spec)
    assert found64[found].mean() >= 0.75 and (found64 & ~found).sum() <= 1
    # the opponent's paddle (drawn from the game's 15th frame) at 64x64 as at the native resolution: the
    # border's blended edge row is no second paddle
    opponent, shown = opponent_spec("ALE/Pong-v5"), frames[20:]
    assert find_sprites(shown, opponent)[1].all() and find_sprites(resize_frames(shown, 64), opponent)[1].all()
    both = found64 & found
    np.testing.assert_allclose(pos64[both] * [210 / 64, 160 / 64], pos[both], atol=3)


def test_breakout_brick_count_follows_the_bricks_the_ball_breaks():
    """The counted state of free play: from a full wall (108 bricks), the bricks shown fall by one per
    brick the scripted player breaks (a reward), exactly at the native resolution and within half a brick
    at 64x64, and never rise in real play by more than the count's tolerance."""
    from worldsim.data.frames import resize_frames
    from worldsim.eval.counts import count_items, count_spec, regrown

    frames, rewards = scripted_play("ALE/Breakout-v5", 600)
    spec = count_spec("ALE/Breakout-v5")
    left = 108 - np.cumsum(np.asarray(rewards) > 0)
    assert left[-1] <= 100  # the script broke bricks
    np.testing.assert_allclose(count_items(frames, spec), left, atol=0.25)
    at64 = count_items(resize_frames(frames, 64), spec)
    np.testing.assert_allclose(at64, left, atol=0.5)
    assert regrown(at64) <= spec.tol and count_spec("ALE/Pong-v5") is None


def test_mspacman_pellet_count_follows_the_pellets_she_eats():
    """Pellets share the walls' colour and are counted against the maze the game draws at reset: the count
    falls by one per pellet eaten (a reward of 10), within a pellet on average at the native resolution
    and at 64x64, rises in real play by no more than its tolerance, and a world that draws the full maze
    again is not ``kept``."""
    from worldsim.data.frames import resize_frames
    from worldsim.eval.counts import count_items, count_spec, count_summary, regrown, reset_frame

    frames, rewards = scripted_play("ALE/MsPacman-v5", 500, frameskip=2)
    spec = count_spec("ALE/MsPacman-v5")
    left = 150 - np.cumsum(np.asarray(rewards) == 10)
    assert left[-1] <= 135  # she ate pellets
    assert count_items(reset_frame(spec.env_id)[None], spec)[0] == pytest.approx(150)
    native, at64 = count_items(frames, spec), count_items(resize_frames(frames, 64), spec)
    assert np.abs(native - left).mean() <= 1.0 and np.abs(at64 - left).mean() <= 1.0
    assert regrown(at64, spec.smooth) <= spec.tol
    assert count_summary(at64, at64[0], 50, spec)["kept"]
    back = count_items(resize_frames(np.repeat(reset_frame(spec.env_id)[None], 20, 0), 64), spec)
    refilled = count_summary(np.concatenate([at64, back]), at64[0], 50, spec)
    assert not refilled["kept"] and refilled["regrown"] >= 150 - left[-1] - 2


def test_components_label_four_connected_shapes():
    from worldsim.eval.counts import components

    mask = np.zeros((5, 6), bool)
    mask[0, :3] = True  # 3 in a row
    mask[2:4, 4:6] = True  # a 2 x 2 block
    mask[4, 0] = mask[3, 1] = True  # diagonal neighbours: two shapes
    labels, sizes = components(mask)
    assert sorted(sizes[1:].tolist()) == [1, 1, 3, 4] and (labels > 0).sum() == mask.sum()
    assert len(set(labels[2:4, 4:6].ravel().tolist())) == 1


def test_breakout_locator_follows_the_paddle_by_the_games_own_step():
    acts = ["FIRE"] * 2 + ["RIGHT"] * 2 + ["NOOP"] * 2 + ["LEFT"] * 4 + ["NOOP"] * 2
    frames, ram = play("ALE/Breakout-v5", acts)
    pos, found = locate(frames, "ALE/Breakout-v5")
    assert found.all()
    clear = (pos[:, 1] > 16) & (pos[:, 1] < 144)  # away from the walls' red feet
    assert clear.sum() >= 8
    # RAM[72] is the paddle's x; ball frames may pull the centroid a pixel or two
    assert np.median(np.abs(pos[clear, 1] - (ram[clear, 72].astype(float) - 38.5))) <= 0.5
    dx = np.diff(pos[:, 1])
    ram_dx = np.diff(ram[:, 72].astype(float))
    moved = clear[1:] & clear[:-1] & (ram_dx != 0)
    assert moved.sum() >= 4
    np.testing.assert_allclose(dx[moved], ram_dx[moved], atol=2)  # the paddle moves as far as the game moves it
    assert ram_dx[2] > 0 and ram_dx[6] < 0  # held RIGHT moves it right, LEFT left
    pos64, found64 = locate(frames, "ALE/Breakout-v5", 64)
    assert found64[clear].all()
    np.testing.assert_allclose(pos64[clear, 1] * 160 / 64, pos[clear, 1], atol=3)


def test_mspacman_locator_follows_her_through_the_maze():
    acts = ["NOOP"] * 66 + ["LEFT"] * 10 + ["RIGHT"] * 12 + ["DOWN"] * 6
    frames, ram = play("ALE/MsPacman-v5", acts)
    pos, found = locate(frames, "ALE/MsPacman-v5")
    assert found.all()
    np.testing.assert_allclose(pos[:, 0], ram[:, 16].astype(float) + 5.9, atol=2.0)
    np.testing.assert_allclose(pos[:, 1], ram[:, 10].astype(float) - 8.0, atol=2.0)
    x = pos[:, 1]
    assert x[75] < x[66] - 10 and x[87] > x[76] + 10  # LEFT then RIGHT carry her along the corridor
    pos64, found64 = locate(frames, "ALE/MsPacman-v5", 64)
    assert found64.mean() >= 0.8
    ok = found64
    assert np.median(np.abs(pos64[ok, 1] * 160 / 64 - pos[ok, 1])) <= 3


def test_boxing_locator_matches_ram():
    acts = ["NOOP"] * 2 + ["RIGHT"] * 6 + ["DOWN"] * 6
    frames, ram = play("ALE/Boxing-v5", acts)
    pos, found = locate(frames, "ALE/Boxing-v5")
    assert found.all()
    # RAM[32] / RAM[34]: the player's x / y; the white boxer's centroid keeps a fixed offset from them
    off = pos - np.stack([ram[:, 34], ram[:, 32]], 1).astype(float)
    assert np.ptp(off[:, 1]) <= 3 and np.ptp(off[:, 0]) <= 4
    assert pos[7, 1] > pos[1, 1] + 5 and pos[13, 0] > pos[8, 0] + 5


# -- collection policies ------------------------------------------------------------------------

def run_policy(env_id, steps, seed=0):
    from worldsim.envs import make_env, make_policy

    env = make_env(env_id)
    policy = make_policy("scripted", env, seed=seed)
    frame, names, total = env.reset(seed=seed), [], 0.0
    rams = []
    for _ in range(steps):
        a = policy(frame)
        names.append(env.action_meanings[a])
        frame, r, term, trunc = env.step(a)
        total += r
        rams.append(env._env.unwrapped.ale.getRAM().copy())
        if term or trunc:
            break
    env.close()
    return names, total, np.stack(rams)


def test_breakout_script_launches_the_ball_and_breaks_bricks():
    names, score, _ = run_policy("ALE/Breakout-v5", 300)
    assert names[0] == "FIRE" and score >= 3  # a brick is worth 1-7 points


def test_pong_script_serves_and_returns_the_ball():
    names, score, ram = run_policy("ALE/Pong-v5", 400)
    assert names[0] == "FIRE" and {"RIGHT", "LEFT"} <= set(names)
    assert np.ptp(ram[:, 51]) > 80  # the paddle travels the field after the ball


def test_mspacman_script_travels_the_maze():
    names, score, ram = run_policy("ALE/MsPacman-v5", 600)
    cells = {(int(x) // 8, int(y) // 8) for x, y in zip(ram[:, 10], ram[:, 16])}
    assert len(cells) >= 25 and score >= 200  # pellets are worth 10


# -- control per game: the counterfactual machinery with a micro random model ----------------------

def micro_checkpoint(path, env_id, meanings, resolution=64):
    import torch

    from worldsim.checkpoint import save_checkpoint
    from worldsim.config import to_dict
    from worldsim.engine import EngineConfig
    from worldsim.model import ModelConfig, WorldDiT

    torch.manual_seed(0)
    m = WorldDiT(ModelConfig(resolution=resolution, patch=16, dim=32, depth=2, heads=2, kv_heads=1,
                             num_actions=len(meanings)))
    meta = {"role": "student", "stage": "test", "step": 0, "model_config": to_dict(m.cfg), "env_id": env_id,
            "action_meanings": list(meanings), "resolution": resolution,
            "engine": to_dict(EngineConfig(window=4, sink=1, steps=1))}
    save_checkpoint(path, {f"model.{k}": v for k, v in m.state_dict().items()}, meta)
    return path


def collected(tmp_path, game, steps=120):
    from worldsim.data.collect import CollectConfig, collect
    from worldsim.envs import EnvConfig
    from worldsim.eval.rollout import load_eval_episodes

    g = get_game(game)
    out = tmp_path / game
    collect(CollectConfig(env=EnvConfig(env_id=g.env_id, max_episode_steps=steps), policy="scripted", steps=steps,
                          out=str(out), workers=0, heldout_episodes=0, seed=3), progress=False)
    return out, load_eval_episodes([out], 64, g.env_id, MEANINGS[game])


EXPECT = {"pong": {"UP": (-1, 0), "DOWN": (1, 0)}, "breakout": {"LEFT": (0, -1), "RIGHT": (0, 1)},
          "mspacman": {"UP": (-1, 0), "DOWN": (1, 0), "LEFT": (0, -1), "RIGHT": (0, 1)}}


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_the_real_game_under_each_direction_moves_the_player_that_way(tmp_path, game):
    """The control check's ground truth per game: its directions (Pong's UP is RIGHT), the real game replayed
    to each context and played on under each key moves the located player that way, and a model that drew
    those frames would read move ratio 1 and error 0."""
    from worldsim.eval.counterfactual import held_frames
    from worldsim.eval.response import counterfactual_scores, held_keys
    from worldsim.eval.sprites import find_sprites, sprite_spec

    g, meanings = get_game(game), MEANINGS[game]
    _, eps = collected(tmp_path, game)
    keys = held_keys(meanings, g.env_id)
    assert list(keys) == ["NOOP", *EXPECT[game]]
    items = [(0, s) for s in (30, 60, 90)]
    real = held_frames(eps, items, 4, {k: meanings.index(a) for k, a in keys.items()}, 4)
    spec = sprite_spec(g.env_id)
    ends = {k: find_sprites(v[:, -1], spec)[0] for k, v in real.items()}
    for label, sign in EXPECT[game].items():
        move = np.nanmean(ends[label] - ends["NOOP"], 0)  # (dy, dx) at 64x64
        axis = 0 if sign[0] else 1
        assert move[axis] * sum(sign) > 1.0, (label, move)
    perfect = counterfactual_scores(ends, real, spec)
    assert perfect["mean_ratio_cf"] == pytest.approx(1.0) and perfect["mean_cf_err_px"] == pytest.approx(0.0)


@pytest.mark.slow
@pytest.mark.parametrize("game", ["pong", "breakout", "mspacman"])
def test_evaluate_reports_control_for_each_games_directions(tmp_path, game):
    """The same ``evaluate`` call (``worldsim eval``) for every game with a locator: a micro random model,
    the game's directions held against the real game."""
    import torch

    from worldsim.eval import EvalConfig, evaluate
    from worldsim.eval import cli
    from worldsim.eval.response import held_keys
    from worldsim.eval.sprites import sprite_spec

    g, meanings = get_game(game), MEANINGS[game]
    _, eps = collected(tmp_path, game)
    ckpt = micro_checkpoint(tmp_path / "m.safetensors", g.env_id, meanings)
    model, _, base = cli.load_for_eval(ckpt, torch.device("cpu"), torch.float32, [])
    cfg = EvalConfig(context=4, horizon=2, starts=3, batch=3, free_play=6, windows=2, action_response=4,
                     realism_frames=0)
    report = evaluate(model, eps, [("1x1", base)], cfg, g.env_id, meanings, say=lambda line: None)
    # what free play watches besides the player: Pong's ball, Breakout's bricks, Ms. Pac-Man's pellets
    stability, row = report.settings[0].stability, report.yardstick()[1]
    counted = {"breakout": "bricks", "mspacman": "pellets"}.get(game)
    assert (stability["ball_found_rate"] is not None) == (game == "pong") == (row["ball_found_end"] is not None)
    assert (stability["counts"] or {}).get("what") == counted and (row["regrown"] is not None) == bool(counted)
    header = cli.format_yardstick(report).splitlines()[1]
    assert ("ball found (real)" in header) == (game == "pong") and ("regrown (real)" in header) == bool(counted)
    assert report.counterfactual["available"] and report.counterfactual["keys"] == ["NOOP", *EXPECT[game]]
    assert report.sprite["available"] and report.sprite["what"] == sprite_spec(g.env_id).what
    ctl = report.settings[0].control
    assert ctl["available"] and set(ctl["move_ratio"]) == set(EXPECT[game])
    assert set(ctl["error_px"]) == {"NOOP", *EXPECT[game]}
    resp = report.settings[0].action_response["actions"]
    assert {k: v["action"] for k, v in resp.items()} == {k: a for k, a in held_keys(meanings, g.env_id).items()
                                                         if k != "NOOP"}
