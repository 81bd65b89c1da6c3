"""Action guidance at play time (worldsim.engine.guidance): the contrast tables, and an engine whose
guided frames are u + w (c - u) of two plain engines, which leaves keys without the button alone."""

import pytest
import torch

from worldsim.engine import Engine, EngineConfig
from worldsim.engine.guidance import contrast_table
from worldsim.errors import ConfigError
from worldsim.runtime.testing import ALE_ACTIONS

from test_engine import frames, tiny_model

MEANINGS = ["NOOP", "FIRE", "UP", "DOWN", "UPFIRE"]  # the tiny model's 5 actions; 5 = no action
NOOP, FIRE, UP, DOWN, UPFIRE = range(5)


def test_button_contrast_drops_fire_and_keeps_the_direction():
    table = contrast_table("button", ALE_ACTIONS, len(ALE_ACTIONS))
    name = {i: n for i, n in enumerate(ALE_ACTIONS)}
    assert name[table[ALE_ACTIONS.index("FIRE")]] == "NOOP"
    assert name[table[ALE_ACTIONS.index("UPRIGHTFIRE")]] == "UPRIGHT"
    assert name[table[ALE_ACTIONS.index("DOWNLEFT")]] == "DOWNLEFT"  # no button: its own contrast
    assert table[len(ALE_ACTIONS)] == len(ALE_ACTIONS)  # "no action" stays itself
    # Breakout's minimal set has FIRE but no RIGHTFIRE
    assert contrast_table("button", ["NOOP", "FIRE", "RIGHT", "LEFT"], 4) == [0, 0, 2, 3, 4]
    assert contrast_table("none", ["NOOP", "FIRE"], 2) == [2, 2, 2]


@pytest.mark.parametrize("kind,meanings,match", [
    ("button", None, "needs the model's action meanings"),
    ("button", ["NOOP", "UP", "DOWN"], "have no FIRE"),
    ("button", ["NOOP", "FIRE"], "2 action meanings for a model of 3"),
    ("sideways", ["NOOP", "FIRE"], "is not one of button, none"),
])
def test_bad_contrasts_say_what_to_set(kind, meanings, match):
    with pytest.raises(ConfigError, match=match):
        contrast_table(kind, meanings, 3 if match.startswith("2 action") else (len(meanings) if meanings else 3))


def test_engine_config_checks_guidance():
    with pytest.raises(ConfigError, match="engine.guidance must be in"):
        EngineConfig(guidance=-1.0).validate()
    with pytest.raises(ConfigError, match="guidance_contrast"):
        EngineConfig(guidance=2.0, guidance_contrast="all").validate()
    with pytest.raises(ConfigError, match="no FIRE"):
        Engine(tiny_model(), EngineConfig(guidance=2.0), action_meanings=["NOOP", "UP", "DOWN", "LEFT", "RIGHT"])


def session(model, cfg, keys, seed=3, meanings=MEANINGS):
    eng = Engine(model, cfg, action_meanings=meanings)
    eng.reset(1, seed=seed)
    eng.prefill(frames(1, 3), torch.tensor([[5, UP, FIRE]]))
    return eng, [eng.step(k) for k in keys]


@pytest.mark.parametrize("anchor", [False, "input2"], ids=["plain", "anchor-input-2"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_guided_frames_are_the_plain_frames_extrapolated(anchor, fuse):
    m = tiny_model(anchor=anchor)
    w = 4.0
    # One Euler step: the frame is the x0 of one forward, so guided = u + w (c - u) exactly, with c and u
    # from plain engines with the same noise. The second frame (UPFIRE) goes through the fused cache write.
    cfg = EngineConfig(steps=1, sampler="euler", window=8, sink=1, fuse_cache_write=fuse)
    guided_cfg = EngineConfig(**{**cfg.__dict__, "guidance": w})
    eng, got = session(m, guided_cfg, [FIRE, NOOP, UPFIRE])
    g = torch.Generator().manual_seed(3)  # the guided session's noise: one draw per frame at one step
    noise = [torch.randn(1, 1, 3, 16, 16, generator=g) for _ in range(3)]

    def x0(past, prev, key, eps):  # a plain engine's x0 (before clamping) from ``past`` under one key
        e = Engine(m, cfg)
        e.reset(1)
        e.prefill(past, prev)
        with torch.no_grad():
            return e._model_forward(eps, torch.ones(1, 1), torch.tensor([[key]]), e.cache.next_positions(1),
                                    e._next_anchor(1))

    def guided(past, prev, key, bare, eps):
        u = x0(past, prev, bare, eps)
        return (u + w * (x0(past, prev, key, eps) - u)).clamp(-1, 1)

    ctx, prev = frames(1, 3), torch.tensor([[5, UP, FIRE]])
    torch.testing.assert_close(got[0], guided(ctx, prev, FIRE, NOOP, noise[0]), atol=1e-5, rtol=1e-4)
    assert (got[0] - x0(ctx, prev, FIRE, noise[0]).clamp(-1, 1)).abs().max() > 1e-3  # the button was scaled
    # Frame 2 is NOOP, no button: the plain frame. Frame 3, UPFIRE against UP, comes from the fused cache
    # write of frame 2: the guided session's past, written into a plain engine, gives the same frame.
    past, prev = torch.cat([ctx, got[0], got[1]], 1), torch.tensor([[5, UP, FIRE, FIRE, NOOP]])
    torch.testing.assert_close(got[1], x0(past[:, :4], prev[:, :4], NOOP, noise[1]).clamp(-1, 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], guided(past, prev, UPFIRE, UP, noise[2]), atol=1e-4, rtol=1e-4)
    assert eng.cache.B == 1  # the contrast shares the player's past: one cache


@pytest.mark.parametrize("steps,sampler", [(2, "euler"), (2, "renoise")])
def test_keys_without_the_button_play_as_unguided(steps, sampler):
    m = tiny_model(anchor="input2")
    cfg = EngineConfig(steps=steps, sampler=sampler, window=4, sink=1)
    keys = [NOOP, UP, DOWN, UP, NOOP, DOWN, DOWN, UP]  # past the window: the cache rolls
    _, plain = session(m, cfg, keys)
    _, guided = session(m, EngineConfig(**{**cfg.__dict__, "guidance": 6.0}), keys)
    torch.testing.assert_close(torch.cat(guided, 1), torch.cat(plain, 1), atol=1e-5, rtol=1e-4)


def test_classifier_free_contrast_is_a_stream_without_keys():
    """guidance_contrast=none: the contrast stream is the model with every key dropped, past ones too (as
    action dropout trained it), so the first guided frame extrapolates from a session played without keys."""
    m = tiny_model(anchor="input2")
    w = 2.5
    cfg = EngineConfig(steps=1, sampler="euler", window=8, sink=1)
    eng, (got,) = session(m, EngineConfig(**{**cfg.__dict__, "guidance": w, "guidance_contrast": "none"}), [UP])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 1, 3, 16, 16, generator=g)

    def x0(prev, key):
        e = Engine(m, cfg)
        e.reset(1)
        e.prefill(frames(1, 3), prev)
        with torch.no_grad():
            return e._model_forward(noise, torch.ones(1, 1), torch.tensor([[key]]), e.cache.next_positions(1),
                                    e._next_anchor(1))

    c, u = x0(torch.tensor([[5, UP, FIRE]]), UP), x0(torch.full((1, 3), 5), 5)
    torch.testing.assert_close(got, (u + w * (c - u)).clamp(-1, 1), atol=1e-5, rtol=1e-4)
