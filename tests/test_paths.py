"""The repository's own files from any working directory: a booth's service or a player that starts
``python /path/to/play.py`` elsewhere still gets the kiosk config, the shipped models and the arcade."""

from pathlib import Path

import pytest

from worldsim.paths import REPO, repo_file

SHIPPED = REPO / "assets" / "default.safetensors"


def test_repo_file_prefers_the_working_directory_then_the_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_file("configs/kiosk.yaml") == REPO / "configs" / "kiosk.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kiosk.yaml").write_text("idle_timeout_s: 5\n")
    assert repo_file("configs/kiosk.yaml") == Path("configs/kiosk.yaml")  # the user's own file wins
    assert repo_file("configs/nope.yaml") == Path("configs/nope.yaml")  # missing: reported by its own name
    assert repo_file(tmp_path / "x") == tmp_path / "x"  # absolute paths stay as given


def test_play_from_another_directory_reads_the_clones_kiosk_config(tmp_path, monkeypatch):
    from worldsim.app.cli import build_parser, load_configs

    clone, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    (clone / "configs").mkdir(parents=True)
    elsewhere.mkdir()
    (clone / "configs" / "kiosk.yaml").write_text("banner: WELCOME TO THE BOOTH\nidle_timeout_s: 12\n")
    (clone / "configs" / "play.yaml").write_text("speed: 0.5\n")
    monkeypatch.setattr("worldsim.paths.REPO", clone)
    monkeypatch.chdir(elsewhere)
    _, kiosk = load_configs(build_parser().parse_args(["--kiosk"]))
    assert (kiosk.banner, kiosk.idle_timeout_s) == ("WELCOME TO THE BOOTH", 12.0)
    play, _ = load_configs(build_parser().parse_args([]))
    assert play.speed == 0.5


def test_play_from_another_directory_finds_the_shipped_games(tmp_path, monkeypatch):
    from worldsim.app.cli import build_parser, load_configs
    from worldsim.envs.games import shipped_games

    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is absent (a clone without the shipped model)")
    monkeypatch.chdir(tmp_path)
    assert "boxing" in [g.name for g in shipped_games()]
    for argv in ([], ["--kiosk"], ["--game", "boxing"]):
        play, _ = load_configs(build_parser().parse_args(argv))
        assert Path(play.checkpoint) == SHIPPED, argv
