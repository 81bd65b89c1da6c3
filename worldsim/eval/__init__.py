"""Evaluation against real episodes, as a player sees it: realism, control, stability, and open-loop figures.

``evaluate(model, episodes, settings, cfg, env_id, action_meanings) -> EvalReport`` is the library call
(``report``); ``worldsim eval`` (``cli``) is a thin layer over it. Layers below it: ``metrics`` (PSNR,
SSIM, colour histograms, frame statistics; pure functions), ``realism`` (the classifier two-sample
test), ``sprites`` (the player's sprite by colour, a per-game table), ``rollout`` (drives an engine over
real contexts and recorded actions; free play), ``counterfactual`` and ``response`` (the real game and
the model holding each key from the same states), ``compare`` (two evaluations on the same rollouts).
"""

from worldsim.eval.metrics import psnr, ssim
from worldsim.eval.realism import RealismConfig, RealismResult, degrade, two_sample_accuracy
from worldsim.eval.report import EvalReport, SettingReport, evaluate
from worldsim.eval.rollout import EvalConfig, EvalEpisode, evaluate_baselines, evaluate_model, free_play
from worldsim.eval.sprites import SPRITES, NoSpriteSpec, SpriteSpec, find_sprites, sprite_spec

__all__ = ["evaluate", "EvalReport", "SettingReport", "EvalConfig", "EvalEpisode", "psnr", "ssim", "RealismConfig",
           "RealismResult", "degrade", "two_sample_accuracy", "evaluate_model", "evaluate_baselines", "free_play",
           "SPRITES", "SpriteSpec", "NoSpriteSpec", "find_sprites", "sprite_spec"]
