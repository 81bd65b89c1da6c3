"""Recording and replay: a headless session played with real key events is written in the dataset
format, validates with ``worldsim data validate``'s checks, lines up frames and actions with what
the engine produced (``actions[t]`` produced ``frames[t+1]``), starts a new episode at every reset, and replays."""

import os

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.app.player import PlayConfig  # noqa: E402
from worldsim.app.recorder import Recorder  # noqa: E402
from worldsim.app.replay import replay  # noqa: E402
from worldsim.app.synthetic import build_player, post_key  # noqa: E402
from worldsim.data.episode import list_episodes, read_episode  # noqa: E402
from worldsim.data.validate import validate  # noqa: E402
from worldsim.runtime import load_playable  # noqa: E402
from worldsim.runtime.testing import SpyBackend, write_random_checkpoint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as play.py on 2 cores


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", context_frames=4)


def contexts(events):
    """Split the spy's event log into one list of (action, frames) per context."""
    out = []
    for e in events:
        if e[0] == "reset":
            out.append([])
        else:
            out[-1].append((e[1], e[2]))
    return out


def test_record_validate_align_and_replay(ckpt, tmp_path):
    playable = load_playable(ckpt, dtype="fp32")
    spy = SpyBackend(playable.backend)
    rec_dir = tmp_path / "rec"
    meta = {"env_id": playable.env_id, "action_meanings": playable.action_meanings, "source": "play",
            "policy": "human", "checkpoint": playable.path, "checkpoint_hash": playable.file_hash}
    recorder = Recorder(rec_dir, meta, flush_every_s=0.2)
    p = build_player(spy, PlayConfig(start_screen=False, speed=4), recorder=recorder)
    K = pygame
    t = {"n": 0}

    def tick(player, now):
        t["n"] += 1
        n = player.frames_presented
        if n == 5 and "a" not in t:
            t["a"] = post_key("down", K.K_RIGHT)
        if n == 12 and "b" not in t:
            t["b"] = (post_key("up", K.K_RIGHT), post_key("down", K.K_SPACE), post_key("up", K.K_SPACE))
        if n == 20 and "r" not in t:
            t["r"] = (post_key("down", K.K_r), post_key("up", K.K_r))  # reset: a second episode
        if spy.log["resets"] >= 2 and n >= 45:
            player.request_quit("done")

    p.tick_hook = tick
    pygame.event.clear()
    p.cfg.max_seconds = 20
    p.run()
    assert p.quit_reason == "done"

    assert validate(rec_dir) == []
    paths = list_episodes(rec_dir)
    assert len(paths) == 2 and recorder.episodes == paths
    ctx = playable.backend.context
    per_context = contexts(spy.log["events"])
    total = 0
    for path, steps in zip(paths, per_context):
        ep = read_episode(path)
        assert ep.complete and ep.meta["checkpoint_hash"] == playable.file_hash
        assert ep.meta["context_frames"] == 4 and ep.meta["sampling"]["steps"] == 2
        T = len(ep)
        assert T >= 10
        # the seed frames, with their recorded actions, then the frames the engine produced
        np.testing.assert_array_equal(ep.frames[:4], ctx.frames)
        np.testing.assert_array_equal(ep.actions[:3], ctx.actions[:3])
        for j in range(T - 4):
            action, frames = steps[j]
            np.testing.assert_array_equal(ep.frames[4 + j], frames[0])
            assert ep.actions[3 + j] == action  # actions[t] produced frames[t+1]
        assert np.all(np.diff(ep.timestamps_ns) >= 0)
        gen = ep.extras["action_to_pixel_ms"][4:]
        assert np.all(np.isfinite(gen)) and np.all(gen > 0)
        assert np.isnan(ep.extras["action_to_pixel_ms"][:4]).all()
        total += T
    first = read_episode(paths[0])
    assert first.latency_ms is not None and np.isfinite(first.latency_ms).sum() >= 3  # the key events
    assert 3 in first.actions and 1 in first.actions  # RIGHT was held, FIRE tapped

    screen_player = build_player(spy, PlayConfig(start_screen=False))  # only for its headless screen
    shown = []
    out = replay(rec_dir, screen_player.screen, speed=0, on_frame=lambda t, ep: shown.append(t))
    assert out["episodes"] == 2 and out["frames"] == total
    assert out["actions"] == [int(a) for pth in paths for a in read_episode(pth).actions]
