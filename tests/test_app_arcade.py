"""Several games in one player, headless with real key events, on two micro checkpoints passed through a
games mapping (``worldsim.app.arcade.Arcade``): the start screen lists them and the arrows choose, the
chosen game's model plays with its own keys, pace and window title; the kiosk's attract loop rotates
through them, a visitor picks one, the session log names it, and a game whose model will not open or
whose worker keeps failing leaves the rotation while the others play on."""

import io
import json
import os
import time

import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from test_app import Script, run  # noqa: E402
from worldsim.app.arcade import Arcade, game_bindings  # noqa: E402
from worldsim.app.kiosk import KioskConfig  # noqa: E402
from worldsim.app.player import PlayConfig  # noqa: E402
from worldsim.app.synthetic import build_player, post_key  # noqa: E402
from worldsim.errors import CheckpointError  # noqa: E402
from worldsim.gametime import Pace  # noqa: E402
from worldsim.runtime import SessionConfig, load_playable  # noqa: E402
from worldsim.runtime.testing import SpyBackend, write_random_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("games")
    return {name: write_random_checkpoint(d / f"{name}.safetensors", context_frames=4, seed=i)
            for i, name in enumerate(("one", "two"))}


class Raising(SpyBackend):
    """A backend whose every step raises (its restarts too): a game whose model keeps failing."""

    def fresh(self):
        return Raising(self.inner.fresh(), self.log)

    def step(self, action):
        raise RuntimeError("injected model fault")


def opener(path, label, wrap=SpyBackend):
    def open_game():
        p = load_playable(path, dtype="fp32")
        return wrap(p.backend), label, {"env_id": p.env_id}, Pace(speed=4)
    return open_game


def arcade(ckpts, extra=None):
    openers = {name: opener(path, f"{name}.safetensors") for name, path in ckpts.items()}
    openers.update(extra or {})
    return Arcade(openers, lambda pace: SessionConfig(fps=pace.rate), {n: n.title() for n in openers})


def player_on(games, first="one", kiosk=None, **play):
    """A headless Player (or Kiosk) that plays ``first`` of ``games``, built as play.py builds one."""
    entry = games.open(first)
    cfg = PlayConfig(speed=4, max_seconds=30, **play)
    log = io.StringIO()
    if kiosk is not None:
        kiosk = KioskConfig(play=PlayConfig(fullscreen=True, hud=False, start_screen=False, speed=4, max_seconds=30),
                            **kiosk)
    p = build_player(entry.session.backend, cfg, kiosk=kiosk, model_label=entry.label, pace=entry.pace,
                     log_stream=log, env_id="worldsim/Tiny-v0")
    p.arcade, p.game, p.picked = games, first, first
    return p, log


def lines(log):
    return [json.loads(x) for x in log.getvalue().splitlines()]


def test_game_bindings_give_pongs_up_arrow_its_right_action():
    pong = game_bindings("ALE/Pong-v5")
    assert pong[pygame.K_UP] == "RIGHT" and pong[pygame.K_DOWN] == "LEFT" and pong[pygame.K_SPACE] == "FIRE"
    assert game_bindings("ALE/Boxing-v5")[pygame.K_UP] == "UP"


def test_start_screen_lists_the_games_and_the_arrows_choose(ckpts):
    games = arcade(ckpts)
    p, _ = player_on(games, start_screen=True)
    seen = {}

    def panel(p):
        return p.overlay(time.perf_counter_ns()).get("panel", ("", []))[1]

    def first_frame_of_two(p):
        seen["label"], seen["caption"] = p.model_label, pygame.display.get_caption()[0]
        seen["frames"] = p.frames_presented

    run(p, Script([
        (lambda p: p.state == "start", lambda p: seen.update(before=panel(p)) or post_key("down", pygame.K_DOWN)),
        (lambda p: p.picked == "two", lambda p: seen.update(after=panel(p)) or post_key("down", pygame.K_SPACE)),
        (lambda p: p.state == "play" and p.game == "two", first_frame_of_two),
        (lambda p: p.frames_presented >= seen["frames"] + 5, lambda p: None),
    ]))
    assert ">\tOne" in seen["before"] and " \tTwo" in seen["before"]
    assert ">\tTwo" in seen["after"] and " \tOne" in seen["after"]
    assert seen["label"] == "two.safetensors" and seen["caption"] == "worldsim - Two"
    assert p.game == "two" and p.session.backend.inner.name == "two.safetensors"


def test_one_game_shows_no_choice(ckpts):
    games = arcade({"one": ckpts["one"]})
    p, _ = player_on(games, start_screen=True)
    assert not p.choosing() and not p.pick_key(pygame.K_DOWN)
    p.state = "start"  # as run() sets it
    assert "choose a game" not in " ".join(p.overlay(time.perf_counter_ns())["panel"][1])


def test_kiosk_rotates_the_attract_loop_and_a_visitor_picks_a_game(ckpts):
    games = arcade(ckpts)
    k, log = player_on(games, kiosk=dict(attract_game_s=0.5, idle_timeout_s=0.8, attract_reset_s=0))

    def rotations():
        return [r["game"] for r in lines(log) if r["event"] == "game"]

    run(k, Script([
        (lambda k: len(rotations()) >= 3 and k.game == "one" and k.frames_presented > 0,
         lambda k: post_key("down", pygame.K_a)),  # attract -> the list of games
        (lambda k: k.state == "pick", lambda k: post_key("down", pygame.K_DOWN)),
        (lambda k: k.picked == "two", lambda k: post_key("down", pygame.K_RETURN)),
        (lambda k: k.state == "visitor" and k.game == "two", lambda k: None),
        (lambda k: k.state == "attract", lambda k: None),  # idle: back to attract
    ]))
    assert rotations()[:3] == ["two", "one", "two"]
    start = [r for r in lines(log) if r["event"] == "kiosk_start"][0]
    assert start["games"] == ["one", "two"] and start["game"] == "one"
    sessions = [r for r in lines(log) if r["event"] == "session"]
    assert len(sessions) == 1 and sessions[0]["game"] == "two" and sessions[0]["end_reason"] == "idle"


def test_kiosk_a_game_that_will_not_open_leaves_the_rotation(ckpts, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")

    def broken():
        load_playable(bad)
        raise AssertionError("a corrupt file loaded")

    games = arcade(ckpts, {"bad": broken})
    k, log = player_on(games, kiosk=dict(attract_game_s=0.3, attract_reset_s=0))
    run(k, Script([(lambda k: [r["game"] for r in lines(log) if r["event"] == "game"].count("one") >= 2
                    and k.frames_presented > 5, lambda k: None)]))
    faults = [r for r in lines(log) if r["event"] == "game_fault"]
    assert [f["game"] for f in faults] == ["bad"] and "bad.safetensors" in faults[0]["error"]
    assert games.playable == ["one", "two"]
    with pytest.raises(CheckpointError):
        load_playable(bad)


def test_kiosk_a_game_whose_worker_keeps_failing_leaves_the_rotation(ckpts):
    games = arcade(ckpts, {"faulty": opener(ckpts["one"], "faulty.safetensors", Raising)})
    k, log = player_on(games, first="faulty", kiosk=dict(attract_game_s=60, game_faults=2, attract_reset_s=0))
    k.cfg.backoff_initial_s = 0.05
    run(k, Script([(lambda k: k.game == "one" and k.frames_presented > 5, lambda k: None)]))
    recs = lines(log)
    assert [r["game"] for r in recs if r["event"] == "game_fault"] == ["faulty"]
    assert len([r for r in recs if r["event"] == "fault"]) == 2
    assert "faulty" in games.broken and games.playable == ["one", "two"]


def test_play_py_names_what_ships_for_a_game_that_does_not(capsys, tmp_path, monkeypatch):
    from worldsim.app import cli

    monkeypatch.chdir(tmp_path)  # a clone where only Boxing ships
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "default.safetensors").write_bytes(b"")
    assert cli.main(["--game", "pong", "--headless"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model of Pong ships" in err[0] and "shipped: boxing" in err[0]
    assert "configs/collect_pong_fs2.yaml" in err[0] and "assets/pong.safetensors" in err[0]
    assert cli.main(["--game", "tetris", "--headless"]) == 2
    assert "unknown game 'tetris'; games: boxing, pong, breakout, mspacman" in capsys.readouterr().err
    assert cli.main(["--game", "boxing", "--checkpoint", "x.safetensors", "--headless"]) == 2
    assert "name two models" in capsys.readouterr().err


def test_play_real_takes_the_short_name():
    pytest.importorskip("ale_py")
    from worldsim.app import cli

    backend, label, meta, pace = cli.build_real_session("pong", PlayConfig())
    assert label == meta["env_id"] == "ALE/Pong-v5" and pace.label().startswith("Pong, 15 steps/s")
    backend.env.close()


def test_a_booth_whose_first_model_will_not_open_plays_the_next_shipped_game(ckpts, tmp_path, monkeypatch):
    import shutil

    from worldsim.app import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "default.safetensors").write_bytes(b"not a checkpoint")
    shutil.copy(ckpts["two"], tmp_path / "assets" / "pong.safetensors")
    play = PlayConfig(checkpoint="assets/default.safetensors", dtype="fp32")
    with pytest.raises(CheckpointError):  # a player: the one line, as ever
        cli.open_first_game(play, booth=False)
    play2, (backend, label, meta, pace), broken = cli.open_first_game(play, booth=True)
    assert play2.checkpoint == "assets/pong.safetensors" and play2.game == "pong" and label.startswith("pong.")
    assert broken[0] == "boxing" and "default.safetensors" in broken[1]
