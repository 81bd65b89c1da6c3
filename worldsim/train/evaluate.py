"""Few-step quality of a trained causal model on held-out episodes, beside copy-last-frame.

Boundary: a model + engine settings + episode paths in, a dict of PSNR figures out. The rollouts
and metrics are ``worldsim.eval``'s (the same numbers ``worldsim eval`` prints): K real context
frames, then H frames under the recorded actions, PSNR per horizon step against the real frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from worldsim.engine import Engine, EngineConfig


@dataclass
class EvalSpec:
    context: int = 2  # real context frames per rollout
    horizon: int = 8  # predicted frames compared with the real ones
    starts: int = 4  # rollouts per episode
    batch: int = 16
    seed: int = 0
    max_episodes: int = 0  # 0: every held-out episode
    steps: list[int] = field(default_factory=lambda: [1, 2, 4])  # few-step settings evaluated


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def load_heldout(paths: Sequence[str], resolution: int, env_id: str, action_meanings, split: str | None,
                 max_episodes: int = 0):
    from worldsim.errors import DataError
    from worldsim.eval.rollout import load_eval_episodes

    try:
        return load_eval_episodes(list(paths), resolution, env_id, action_meanings, split=split,
                                  max_episodes=max_episodes), split
    except DataError:
        if split is None:
            raise
        return load_eval_episodes(list(paths), resolution, env_id, action_meanings, split=None,
                                  max_episodes=max_episodes), None


def pooled_psnr(mse_sum: np.ndarray, n: np.ndarray) -> float:
    """PSNR of the mean squared error (pixels in [0, 1])."""
    return float(10 * np.log10(1.0 / max(float(mse_sum.sum() / max(n.sum(), 1)), 1e-10)))


@torch.no_grad()
def evaluate_model(model, engine_cfg: EngineConfig, episodes, spec: EvalSpec, steps_list: Sequence[int] | None = None,
                   device="cpu", dtype=torch.float32, action_meanings: Sequence[str] | None = None) -> dict:
    """PSNR (dB) per setting and for copy-last-frame on the same rollouts.

    ``psnr`` is the PSNR of the mean squared error over every rollout and horizon step (``per_h``: per
    step). The mean of per-frame PSNRs (``psnr_frame_mean``, capped at 100 dB as ``worldsim eval`` does)
    is reported too, but it is not the headline: on a game where half the frames repeat the previous
    one exactly, copy-last-frame scores the 100 dB cap on those frames and the mean of PSNRs says
    little about how far off the frames are.
    """
    from worldsim.eval.metrics import mse as frame_mse
    from worldsim.eval.metrics import psnr as frame_psnr
    from worldsim.eval.metrics import to_unit
    from worldsim.eval.rollout import EvalConfig, batch_inputs, make_plan, rollout

    ecfg = EvalConfig(context=spec.context, horizon=spec.horizon, starts=spec.starts, batch=spec.batch, seed=spec.seed)
    plan = make_plan(episodes, ecfg)
    no_action = model.cfg.num_actions
    H = spec.horizon
    out: dict = {"rollouts": len(plan), "context": spec.context, "horizon": H}
    model = model.to(device).eval()
    settings = [("default", engine_cfg)]
    if steps_list:
        settings = [(f"steps={s}", dataclasses.replace(engine_cfg, steps=s)) for s in steps_list]
    batches = [batch_inputs(episodes, plan[lo:lo + spec.batch], ecfg, no_action)
               for lo in range(0, len(plan), spec.batch)]

    def score(preds) -> dict:
        se, n, fp = np.zeros(H), np.zeros(H), []
        for (ctx, prev, acts, real), pred in zip(batches, preds):
            B = real.shape[0]
            p = to_unit(np.broadcast_to(pred, real.shape).reshape(B * H, *real.shape[2:]))
            r = to_unit(real.reshape(B * H, *real.shape[2:]))
            err = frame_mse(p, r)
            se += err.view(B, H).numpy().sum(0)
            n += B
            fp.append(frame_psnr(p, r, err=err).view(B, H).numpy())
        per_h = [pooled_psnr(se[h:h + 1], n[h:h + 1]) for h in range(H)]
        return {"psnr": pooled_psnr(se, n), "psnr_h1": per_h[0], "per_h": per_h,
                "psnr_frame_mean": float(np.concatenate(fp).mean())}

    for name, cfg in settings:
        eng = Engine(model, cfg, device=device, dtype=dtype, action_meanings=action_meanings)
        preds = [rollout(eng, ctx, prev, acts, seed=spec.seed + b) for b, (ctx, prev, acts, _) in enumerate(batches)]
        out[name] = {**score(preds), "engine": dataclasses.asdict(cfg)}
    out["copy_last"] = score([ctx[:, -1:] for ctx, _, _, _ in batches])
    return out
