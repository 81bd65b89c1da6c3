"""Fused Triton noise-schedule update vs the torch reference, on Triton's CPU interpreter.

The kernel runs in one child process under TRITON_INTERPRET=1 (kernels/interpret_run.py says why).
With explicit noise the kernel does the reference's fp32 operations in the reference's order, so the
two agree up to fp32 rounding: fp32 outputs within 4 ulp, bf16/fp16 outputs within one ulp of the
output dtype (an fp32 ulp of difference, e.g. from FMA contraction on a GPU, can flip one rounding).
In-kernel noise (Philox, ``tl.randn``) cannot equal torch's generator; it must be deterministic per
seed, differ across seeds and rows, look standard normal, and enter the formula like explicit noise.
"""

from __future__ import annotations

import pytest
import torch

from kernels.schedule_update import SIGMA_MIN, noise_update_torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHAPE = (6, 3, 5, 7)  # (R, C, H, W): 105 elements per row, not a multiple of the kernel's block
SIGMA = torch.tensor([1.0, 0.8, 0.5, 0.25, 1e-4, 0.0])  # per row; the last two hit the SIGMA_MIN clamp
SIGMA_NEXT = torch.tensor([0.8, 0.5, 0.25, 0.0, 0.0, 0.0])
NOISE_SHAPE = (4, 3, 64, 64)  # 49,152 draws for the in-kernel noise statistics

EXPLICIT = [(mode, pt, dt) for mode in ("renoise", "euler") for pt in ("x0", "v") for dt in DTYPES]
# Scalar sigmas and a one-element tensor: the (R,) broadcast paths of the launcher.
SCALAR = [("renoise", "v", 0.6, torch.tensor([0.3])), ("euler", "x0", 0.6, 0.3)]


def explicit_inputs(i: int, dt: str):
    g = torch.Generator().manual_seed(100 + i)
    x, pred, noise = (torch.randn(SHAPE, generator=g) for _ in range(3))
    return x.to(DTYPES[dt]), pred.to(DTYPES[dt]), noise  # noise stays fp32, as the engine would draw it


def seeded_calls():
    """Calls for the in-kernel noise checks: {name: (args, kwargs)}. Only the first is full size: the
    offset is the flat element index, so a smaller tensor must draw a prefix of the same numbers."""
    full, one = torch.zeros(NOISE_SHAPE), torch.zeros((1,) + NOISE_SHAPE[1:])
    two = torch.zeros((2,) + NOISE_SHAPE[1:])
    return {
        "eps_seed5": ((full, full, 1.0, 1.0, "renoise"), dict(seed=5)),
        "eps_seed5_row0": ((one, one, 1.0, 1.0, "renoise"), dict(seed=5)),
        "eps_seed6_row0": ((one, one, 1.0, 1.0, "renoise"), dict(seed=6)),
        "renoise_seed5": ((two, renoise_x0(), 1.0, RENOISE_S_NEXT, "renoise"), dict(seed=5)),  # (1 - s') x0 + s' eps
        "eps_seed5_bf16": ((one.bfloat16(), one.bfloat16(), 1.0, 1.0, "renoise"), dict(seed=5)),
    }


RENOISE_S_NEXT = torch.tensor([0.3, 0.7])


def renoise_x0():
    return torch.randn((2,) + NOISE_SHAPE[1:], generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def outputs():
    pytest.importorskip("triton", reason="triton is not installed (Linux only)")
    from kernels.interpret_run import interpreter_unusable, run_interpreted

    if why := interpreter_unusable():
        pytest.skip(why)

    calls, keys = [], []
    for i, (mode, pt, dt) in enumerate(EXPLICIT):
        x, pred, noise = explicit_inputs(i, dt)
        calls.append(("noise_update", (x, pred, SIGMA, SIGMA_NEXT, mode), dict(noise=noise, pred_type=pt)))
        keys.append(("explicit", mode, pt, dt))
    for j, (mode, pt, s, s_next) in enumerate(SCALAR):
        x, pred, noise = explicit_inputs(50 + j, "fp32")
        calls.append(("noise_update", (x, pred, s, s_next, mode), dict(noise=noise, pred_type=pt)))
        keys.append(("scalar", mode, pt))
    for name, (args, kwargs) in seeded_calls().items():
        calls.append(("noise_update", args, kwargs))
        keys.append(name)
    return dict(zip(keys, run_interpreted(calls)))


def assert_matches(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    eps = torch.finfo(ref.dtype).eps * (4 if ref.dtype == torch.float32 else 1)
    diff = (out.float() - ref.float()).abs()
    bound = eps * ref.float().abs() + 1e-6
    assert bool((diff <= bound).all()), f"max |diff| {diff.max():.3e} (worst bound {bound.max():.3e})"


@pytest.mark.parametrize("mode,pred_type,dtype", EXPLICIT, ids=[f"{m}-{p}-{d}" for m, p, d in EXPLICIT])
def test_explicit_noise_matches_reference(outputs, mode, pred_type, dtype):
    i = EXPLICIT.index((mode, pred_type, dtype))
    x, pred, noise = explicit_inputs(i, dtype)
    ref = noise_update_torch(x, pred, SIGMA, SIGMA_NEXT, mode, noise=noise, pred_type=pred_type)
    assert_matches(outputs[("explicit", mode, pred_type, dtype)], ref)


@pytest.mark.parametrize("mode,pred_type,s,s_next", SCALAR, ids=["renoise-v-float,1-elem", "euler-x0-floats"])
def test_scalar_sigmas(outputs, mode, pred_type, s, s_next):
    j = SCALAR.index((mode, pred_type, s, s_next))
    x, pred, noise = explicit_inputs(50 + j, "fp32")
    ref = noise_update_torch(x, pred, s, s_next, mode, noise=noise, pred_type=pred_type)
    assert_matches(outputs[("scalar", mode, pred_type)], ref)


def test_sigma_min_clamp_is_the_references():
    """Oracle check: the euler/x0 rows with sigma below SIGMA_MIN divide by SIGMA_MIN."""
    x, pred, _ = explicit_inputs(0, "fp32")
    out = noise_update_torch(x, pred, SIGMA, SIGMA_NEXT, "euler", pred_type="x0")
    want = x[5] + (SIGMA_NEXT[5] - SIGMA[5]) * (x[5] - pred[5]) / SIGMA_MIN
    torch.testing.assert_close(out[5], want)


def test_in_kernel_noise_is_deterministic_per_seed(outputs):
    full, row0, other = outputs["eps_seed5"], outputs["eps_seed5_row0"], outputs["eps_seed6_row0"]
    assert torch.equal(row0, full[:1])  # same seed, same element index: same number (any tensor size)
    assert float((other == row0).float().mean()) < 1e-3  # another seed: another stream
    rows = full.flatten(1)  # (R, n): the offset is the flat index, so rows get different noise
    assert not torch.equal(rows[0], rows[1])


def test_in_kernel_noise_is_standard_normal(outputs):
    eps = outputs["eps_seed5"].flatten().double()
    n = eps.numel()
    assert torch.isfinite(eps).all()
    assert abs(float(eps.mean())) < 5 / n**0.5, f"mean {float(eps.mean()):.4f}"
    assert abs(float(eps.std()) - 1) < 5 * (0.5 / n) ** 0.5, f"std {float(eps.std()):.4f}"  # 5 sigma
    within1 = float((eps.abs() < 1).double().mean())  # 68.27% of a standard normal lies in (-1, 1)
    assert abs(within1 - 0.6827) < 5 * (0.6827 * 0.3173 / n) ** 0.5, f"P(|eps| < 1) = {within1:.4f}"
    lag = float((eps[1:] * eps[:-1]).mean())  # neighbouring elements are uncorrelated
    assert abs(lag) < 5 / n**0.5, f"lag-1 correlation {lag:.4f}"


def test_in_kernel_noise_enters_the_formula(outputs):
    """renoise with drawn noise == (1 - s') x0 + s' eps, eps the same seed's draw (per-row s')."""
    x0 = renoise_x0()
    ref = noise_update_torch(torch.zeros_like(x0), x0, 1.0, RENOISE_S_NEXT, "renoise", noise=outputs["eps_seed5"][:2])
    assert_matches(outputs["renoise_seed5"], ref)


def test_in_kernel_noise_bf16_output(outputs):
    out = outputs["eps_seed5_bf16"]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, outputs["eps_seed5"][:1].bfloat16())  # same draws, rounded to nearest even once
