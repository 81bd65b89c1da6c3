"""Triton block-causal attention vs the torch reference, on Triton's CPU interpreter; and the dispatch.

The kernel runs in a child process under TRITON_INTERPRET=1 (kernels/interpret_run.py says why),
once for all cases of this module; each case then compares here. Oracle: the torch reference in
fp32 on the fp32 inputs. Error = relative RMS, ||out - ref||_2 / ||ref||_2 (STYLE practice 12):
  * fp32: at most 1e-5 (both sides are fp32; the kernel's blocked online softmax sums in another order);
  * bf16/fp16: at most 2x torch's own error (the reference run in that dtype on the same
    rounded inputs) against the same fp32 oracle, plus a floor of 1e-4 for the rare case where
    torch is lucky; the bf16/fp16 inputs are the fp32 ones rounded.
Every case poisons the KV buffer past kv_len[b] with NaN: any read there would surface in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from kernels.attention import block_causal_attention_torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_TOL = 1e-5
LOW_PREC_RATIO = 2.0
LOW_PREC_FLOOR = 1e-4


@dataclass(frozen=True)
class Case:
    id: str
    B: int
    Hq: int
    Hkv: int
    M: int  # query tokens (the chunk(s) being generated)
    D: int  # head dim
    chunk: int  # chunk_tokens
    lens: tuple  # kv_len per batch row
    n_max: int  # KV buffer length (>= max(lens); the rest is NaN scratch)
    int_len: bool = False  # pass kv_len as an int (the engine's call) instead of a tensor
    scale: float | None = None
    strided_q: bool = False  # q as a transposed view, the way the model hands it over


SHAPES = [
    # One frame of 16 tokens after a 3-frame cache, chunk = one frame; int kv_len as the engine passes it.
    Case("D=64,frame-chunk,int-len", 1, 2, 2, 16, 64, 16, (64,), 80, int_len=True),
    # Ragged batch rows, GQA 4:2, non-power-of-two head dim, chunk = 1 frame of 8 tokens, 3 frames.
    Case("D=60,GQA4:2,ragged", 2, 4, 2, 24, 60, 8, (40, 70), 96),
    # M not a multiple of the chunk (63 = 4 chunks of 16 - 1), and M > BLOCK_M (two query blocks).
    Case("M=63,D=40,C=16", 2, 2, 1, 63, 40, 16, (63, 130), 150),
    Case("M=70,D=24,C=7", 1, 2, 2, 70, 24, 7, (200,), 230),
    # chunk_tokens = 1: token-causal; and chunk larger than the sequence: bidirectional block.
    Case("C=1,D=32,GQA2:1,L=65", 2, 2, 1, 20, 32, 1, (20, 65), 80),
    Case("C>M,D=24,bidirectional", 2, 3, 1, 12, 24, 1000, (12, 45), 64),
    # No cache at all (kv_len == M), head dim 16 (the tiny test model), a custom scale, strided q.
    Case("no-cache,D=16,scale,strided-q", 2, 2, 2, 32, 16, 8, (32, 32), 48, scale=0.3, strided_q=True),
    # Head dim 128 (the largest the kernel takes) and a key count that is not a block multiple.
    Case("D=128,Nmax=77", 1, 2, 1, 17, 128, 17, (77,), 77),
]
CASES = [(c, dt) for c in SHAPES for dt in DTYPES]


def make_inputs(c: Case, seed: int):
    g = torch.Generator().manual_seed(seed)
    if c.strided_q:
        q = torch.randn(c.B, c.M, c.Hq, c.D, generator=g).transpose(1, 2)  # (B, Hq, M, D), non-contiguous
    else:
        q = torch.randn(c.B, c.Hq, c.M, c.D, generator=g)  # (B, Hq, M, D)
    k = torch.randn(c.B, c.Hkv, c.n_max, c.D, generator=g)  # (B, Hkv, Nmax, D)
    v = torch.randn(c.B, c.Hkv, c.n_max, c.D, generator=g)
    lens = c.lens[0] if c.int_len else torch.tensor(c.lens)
    return q, k, v, lens


def poison(t: torch.Tensor, lens) -> torch.Tensor:
    t = t.clone()
    for b, L in enumerate(lens):
        t[b, :, L:] = float("nan")  # scratch past kv_len: must never be read
    return t


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def kernel_outputs():
    """All cases through the interpreted kernel in one child process: {case index: output}."""
    pytest.importorskip("triton", reason="triton is not installed (Linux only)")
    from kernels.interpret_run import interpreter_unusable, run_interpreted

    if why := interpreter_unusable():
        pytest.skip(why)

    calls = []
    for i, (c, dt) in enumerate(CASES):
        q, k, v, lens = make_inputs(c, seed=i)
        q, k, v = q.to(DTYPES[dt]), poison(k.to(DTYPES[dt]), c.lens), poison(v.to(DTYPES[dt]), c.lens)
        calls.append(("block_causal_attention", (q, k, v, lens, c.chunk, c.scale), {}))
    return dict(enumerate(run_interpreted(calls)))


@pytest.mark.parametrize("case,dtype", CASES, ids=[f"{c.id}-{dt}" for c, dt in CASES])
def test_attention_matches_reference(kernel_outputs, case, dtype):
    i = CASES.index((case, dtype))
    out = kernel_outputs[i]
    q, k, v, lens = make_inputs(case, seed=i)
    ref = block_causal_attention_torch(q, k, v, lens, case.chunk, case.scale)  # fp32 oracle, no poison
    assert out.shape == q.shape and out.dtype == DTYPES[dtype]
    assert torch.isfinite(out).all(), "NaN/inf in the output: the kernel read the poisoned tail or a 0/0"
    err = rel_rms(out, ref)
    if dtype == "fp32":
        assert err <= FP32_TOL, f"{case.id}: fp32 rel-RMS {err:.2e} > {FP32_TOL:.0e}"
        return
    lo = DTYPES[dtype]
    torch_out = block_causal_attention_torch(q.to(lo), poison(k.to(lo), case.lens), poison(v.to(lo), case.lens),
                                             lens, case.chunk, case.scale)
    torch_err = rel_rms(torch_out, ref)
    bound = max(LOW_PREC_RATIO * torch_err, LOW_PREC_FLOOR)
    assert err <= bound, f"{case.id}: {dtype} rel-RMS {err:.2e} > {LOW_PREC_RATIO} x torch's {torch_err:.2e}"


def test_reference_masks_as_documented():
    """The oracle itself against a dense loop over the docstring's rule, ragged rows, chunk 3."""
    g = torch.Generator().manual_seed(0)
    B, H, M, D, C, lens = 2, 2, 7, 8, 3, (9, 12)
    q, k, v = torch.randn(B, H, M, D, generator=g), torch.randn(B, H, 14, D, generator=g), torch.randn(B, H, 14, D, generator=g)
    out = block_causal_attention_torch(q, poison(k, lens), poison(v, lens), torch.tensor(lens), C)
    for b, L in enumerate(lens):
        for i in range(M):
            lim = min(L, L - M + (i // C + 1) * C)
            w = torch.softmax(torch.einsum("hd,hjd->hj", q[b, :, i], k[b, :, :lim]) / D**0.5, -1)  # (H, lim)
            torch.testing.assert_close(out[b, :, i], torch.einsum("hj,hjd->hd", w, v[b, :, :lim]), rtol=1e-5, atol=1e-6)


# ---- dispatch (in-process: predicates only, no kernel launch) ---------------------------------


def test_dispatch_picks_reference_on_cpu_and_honours_overrides(monkeypatch):
    import kernels
    from kernels import dispatch

    q = torch.randn(1, 2, 4, 16)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("WORLDSIM_KERNELS", "auto")
    assert not dispatch.use_triton(q)  # CPU tensor, no interpreter: the reference
    out = kernels.block_causal_attention(q, q, q, 4, 2)
    torch.testing.assert_close(out, block_causal_attention_torch(q, q, q, 4, 2))
    monkeypatch.setenv("WORLDSIM_KERNELS", "torch")
    assert not dispatch.use_triton(q)
    monkeypatch.setenv("WORLDSIM_KERNELS", "bogus")
    with pytest.raises(ValueError, match="WORLDSIM_KERNELS"):
        dispatch.use_triton(q)


def test_dispatch_triton_demand_raises_when_it_cannot_run(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed (Linux only)")
    from kernels import attention, dispatch

    q = torch.randn(1, 2, 4, 16)
    monkeypatch.setenv("WORLDSIM_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        dispatch.use_triton(q)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # predicate only: nothing is launched here
    assert dispatch.use_triton(q)
    big = torch.randn(1, 1, 4, 160)  # head dim past the kernel's range
    with pytest.raises(RuntimeError, match="head dim 160"):
        dispatch.use_triton(big, attention.unsupported(big, big, big))
    monkeypatch.setenv("WORLDSIM_KERNELS", "auto")  # auto: the same input falls back quietly
    assert not dispatch.use_triton(big, attention.unsupported(big, big, big))


def test_kernels_import_without_triton():
    """macOS has no Triton: the kernel modules must import and the references run."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('no triton here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, kernels\n"
        "from kernels import attention, schedule_update\n"
        "assert attention.triton is None and schedule_update.triton is None\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "print(kernels.block_causal_attention(q, q, q, 5, 2).shape)\n"
        "print(kernels.noise_update(q, q, 0.5, 0.25, 'renoise', seed=1).shape)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, WORLDSIM_KERNELS="auto")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["torch.Size([1, 2, 5, 8])"] * 2
