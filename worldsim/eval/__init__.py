"""Evaluation against real episodes: open-loop rollouts, per-horizon metrics, long free play.

Layers: ``metrics`` (PSNR, SSIM, colour histograms, frame statistics; pure functions),
``sprites`` (the player's sprite by colour, a per-game table), ``rollout`` (drives an engine over
real contexts and recorded actions), ``cli`` (``worldsim eval``: flags, table, JSON).
"""

from worldsim.eval.metrics import psnr, ssim
from worldsim.eval.rollout import EvalConfig, EvalEpisode, evaluate_baselines, evaluate_model, free_play
from worldsim.eval.sprites import SPRITES, NoSpriteSpec, SpriteSpec, find_sprites, sprite_spec

__all__ = ["psnr", "ssim", "EvalConfig", "EvalEpisode", "evaluate_model", "evaluate_baselines", "free_play",
           "SPRITES", "SpriteSpec", "NoSpriteSpec", "find_sprites", "sprite_spec"]
