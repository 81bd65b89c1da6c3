"""``worldsim bench kernels``: the Triton kernels against their torch references, on a CUDA GPU.

For each shape it times the Triton launch and the torch reference on the same inputs (median of
CUDA-event timings after warm-up) and reports milliseconds, the speed-up, and achieved throughput:
TFLOP/s for attention (the FLOPs of the keys each query may see, 4 * D per query-key pair) and GB/s
for the noise update (bytes read and written). It also reports the largest difference between the two
outputs, so a fast wrong kernel cannot pass as a win. Shapes: the engine's own launches (the shipped
student, one frame or a 3-frame chunk against a full cache) and larger training-size ones.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from worldsim.device import dtype_name

# (name, B, Hq, Hkv, M, D, chunk_tokens, kv_len): kv_len includes the M query tokens.
ATTENTION = [
    ("engine frame, cache 14+1 frames", 1, 2, 2, 64, 64, 64, 15 * 64),
    ("engine chunk 3, cache 14+3 frames", 1, 2, 2, 192, 64, 64, 17 * 64),
    ("engine frame, batch 16 (eval)", 16, 2, 2, 64, 64, 64, 15 * 64),
    ("training clip 8 frames, batch 8", 8, 2, 2, 512, 64, 64, 512),
    ("large: 16 frames x 256 tokens, D 64", 4, 8, 8, 4096, 64, 256, 4096),
    ("large: 16 frames x 256 tokens, D 128, GQA 8:2", 4, 8, 2, 4096, 128, 256, 4096),
]
NOISE = [("engine frame 3x64x64", (1, 3, 64, 64)), ("batch 64 x 3x256x256", (64, 3, 256, 256))]


def time_cuda(fn, warmup: int = 10, reps: int = 50) -> float:
    """Median milliseconds of ``fn()`` by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def attention_flops(M: int, D: int, chunk: int, kv_len: int, B: int, Hq: int) -> float:
    seen = sum(min(kv_len, kv_len - M + (i // chunk + 1) * chunk) for i in range(M))  # keys per query, summed
    return 4.0 * D * seen * B * Hq


def bench_attention(dtype: torch.dtype) -> list[dict]:
    from kernels.attention import block_causal_attention_torch, block_causal_attention_triton

    rows = []
    for name, B, Hq, Hkv, M, D, chunk, kv_len in ATTENTION:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, Hq, M, D, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(B, Hkv, kv_len, D, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(B, Hkv, kv_len, D, device="cuda", dtype=dtype, generator=g)
        tri = time_cuda(lambda: block_causal_attention_triton(q, k, v, kv_len, chunk))
        ref = time_cuda(lambda: block_causal_attention_torch(q, k, v, kv_len, chunk))
        diff = (block_causal_attention_triton(q, k, v, kv_len, chunk).float()
                - block_causal_attention_torch(q, k, v, kv_len, chunk).float()).abs().max().item()
        fl = attention_flops(M, D, chunk, kv_len, B, Hq)
        rows.append({"kernel": "attention", "shape": name, "dtype": dtype_name(dtype),
                     "triton_ms": tri, "torch_ms": ref, "speedup": ref / tri, "triton_tflops": fl / tri / 1e9,
                     "torch_tflops": fl / ref / 1e9, "max_abs_diff": diff})
    return rows


def bench_noise(dtype: torch.dtype) -> list[dict]:
    from kernels.schedule_update import noise_update_torch, noise_update_triton

    rows = []
    for name, shape in NOISE:
        x = torch.randn(shape, device="cuda", dtype=dtype)
        pred = torch.randn(shape, device="cuda", dtype=dtype)
        sig, sig_next = torch.full((shape[0],), 0.7, device="cuda"), torch.full((shape[0],), 0.3, device="cuda")
        tri = time_cuda(lambda: noise_update_triton(x, pred, sig, sig_next, "euler"))
        ref = time_cuda(lambda: noise_update_torch(x, pred, sig, sig_next, "euler"))
        tri_rn = time_cuda(lambda: noise_update_triton(x, pred, sig, sig_next, "renoise", seed=1))
        ref_rn = time_cuda(lambda: noise_update_torch(x, pred, sig, sig_next, "renoise", seed=1))
        diff = (noise_update_triton(x, pred, sig, sig_next, "euler").float()
                - noise_update_torch(x, pred, sig, sig_next, "euler").float()).abs().max().item()
        nbytes = 3 * x.numel() * x.element_size()  # read x and pred, write out
        rows.append({"kernel": "noise_update", "shape": name, "dtype": dtype_name(dtype),
                     "triton_ms": tri, "torch_ms": ref, "speedup": ref / tri, "triton_gbps": nbytes / tri / 1e6,
                     "renoise_triton_ms": tri_rn, "renoise_torch_ms": ref_rn, "max_abs_diff_euler": diff})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="worldsim bench kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bf16,fp32", help="comma list of bf16, fp16, fp32")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("worldsim bench kernels: needs a CUDA GPU (on CPU the Triton kernels run only under "
              "TRITON_INTERPRET=1, in the tests); use 'worldsim bench engine' here")
        return 2
    from kernels.triton_utils import triton

    if triton is None:
        print("worldsim bench kernels: triton is not installed; pip install triton")
        return 2
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    try:
        dtypes = [names[d.strip()] for d in args.dtypes.split(",")]
    except KeyError as e:
        ap.error(f"--dtypes: unknown dtype {e}; use bf16, fp16, fp32")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    print(f"{'kernel':<12} {'shape':<46} {'dtype':<8} {'triton ms':>9} {'torch ms':>9} {'speedup':>7} {'throughput':>14} {'max|diff|':>9}")
    for dt in dtypes:
        for r in bench_attention(dt) + bench_noise(dt):
            rows.append(r)
            tp = (f"{r['triton_tflops']:.1f} TFLOP/s" if r["kernel"] == "attention" else f"{r['triton_gbps']:.0f} GB/s")
            d = r.get("max_abs_diff", r.get("max_abs_diff_euler"))
            print(f"{r['kernel']:<12} {r['shape']:<46} {r['dtype']:<8} {r['triton_ms']:>9.4f} {r['torch_ms']:>9.4f} "
                  f"{r['speedup']:>6.2f}x {tp:>14} {d:>9.2e}")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(math.isfinite(r["triton_ms"]) for r in rows) else 1
