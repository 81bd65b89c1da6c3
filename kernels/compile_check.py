"""Compile every shipped Triton kernel configuration for a CUDA target, no GPU needed.

    python -m kernels.compile_check --arch 90      # or 80; --json for one JSON line per kernel

Each case goes through the real launcher's argument builder (``_attention_launch``/``_noise_launch``)
on meta tensors, so the compiled signature is the one a launch would use; integer and pointer
arguments are specialised as Triton's runtime does (an int equal to 1 becomes a constant, ints and
pointers divisible by 16 carry the divisibility hint). ``triton.compile`` then lowers the kernel to
a cubin with the ptxas shipped in the Triton wheel, and the shared memory each kernel asks for
(``metadata.shared``) is checked against the per-block opt-in maximum of the architecture.

The cases cover each (dtype, launch configuration) pair and the head dims in use: 16 (the tiny
test model), 64 (the default student), 40 (not a multiple of 16: no vectorisation hint) and 128 (the
largest the kernel takes), and every constexpr branch of the noise update.
Exit status: 0 all compiled and fit, 1 otherwise, 3 when this machine cannot compile for CUDA at all
(a trivial probe kernel fails: no CUDA backend or no ptxas; the reason is printed). Runs in its own process (the test spawns it):
a crash in the compiler cannot take the test session down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

# Per-block shared memory maximum with opt-in (which Triton requests itself above 48 KB): 227 KB on
# sm_90 (of 228 KB per SM) and 163 KB on sm_80 (of 164 KB per SM).
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
_TT_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
             torch.int64: "i64"}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _specialize(value):
    """(signature type, constexpr value or None, divisible by 16) the way Triton's runtime sees an argument."""
    if isinstance(value, torch.Tensor):
        return "*" + _TT_DTYPE[value.dtype], None, value.data_ptr() % 16 == 0  # meta tensors: 0, aligned
    if isinstance(value, bool):
        return "i1", None, False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        return ("i32" if -2**31 <= value < 2**31 else "i64"), None, value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"cannot specialise argument {value!r}")


def attention_cases():
    from kernels.attention import _attention_launch

    for D in (16, 40, 64, 128):
        for dtype in DTYPES:
            mk = lambda *s: torch.empty(*s, dtype=dtype, device="meta")
            # One frame of 64 tokens against a 20-frame cache, GQA 2:1 (the engine's call).
            q, k = mk(1, 4, 64, D), mk(1, 2, 64 * 21, D)
            yield f"attention D={D}", dtype, _attention_launch(q, k, k, 64 * 21, 64, None)


def noise_cases():
    from kernels.schedule_update import _noise_launch

    variants = [("renoise", "x0", False), ("renoise", "x0", True), ("renoise", "v", False), ("renoise", "v", True),
                ("euler", "x0", False), ("euler", "v", False)]
    for mode, pred_type, explicit in variants:
        for dtype in DTYPES:
            x = torch.empty(4, 3, 64, 64, dtype=dtype, device="meta")
            noise = torch.empty(4, 3, 64, 64, device="meta") if explicit else None
            sig = torch.empty(4, device="meta")
            drawn = "" if mode == "euler" else f" noise={'given' if explicit else 'drawn'}"
            name = f"noise_update {mode} pred={pred_type}{drawn}"
            yield name, dtype, _noise_launch(x, x, sig, sig, mode, noise, 12345, pred_type)


def compile_one(kernel, args, meta, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
    constexprs = {k: v for k, v in meta.items() if k not in options}
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, list(args) + [None] * len(constexprs))):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        ty, const, div16 = _specialize(value)
        signature[name] = ty
        if const is not None:
            constexprs[name] = const
        if div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _probe(arch: int) -> str | None:
    """Why this machine cannot compile any kernel for CUDA (None if it can)."""
    try:
        from kernels.schedule_update import _noise_update_kernel, _noise_launch

        x = torch.empty(8, 16, device="meta")
        _, args, meta, _ = _noise_launch(x, x, 0.5, 0.25, "euler", None, 0, "v")
        compile_one(_noise_update_kernel, args, meta, arch)
    except Exception as e:
        return f"triton cannot compile for sm_{arch} here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def run(arch: int, as_json: bool) -> int:
    from kernels.attention import _block_causal_attn_fwd
    from kernels.schedule_update import _noise_update_kernel

    why = _probe(arch)
    if why:
        print(json.dumps({"probe_error": why}) if as_json else why, flush=True)
        return 3
    limit, failures = SMEM_LIMIT[arch], 0
    cases = [(_block_causal_attn_fwd, c) for c in attention_cases()] + [(_noise_update_kernel, c) for c in noise_cases()]
    for kernel, (name, dtype, (_, args, meta, _)) in cases:
        t0 = time.perf_counter()
        row = dict(kernel=name, dtype=_TT_DTYPE[dtype], arch=f"sm_{arch}",
                   config={k: v for k, v in meta.items() if k.startswith(("BLOCK", "num_"))}, smem_limit=limit)
        try:
            compiled = compile_one(kernel, args, meta, arch)
            row.update(shared=int(compiled.metadata.shared), cubin_bytes=len(compiled.asm["cubin"]))
            row["ok"] = row["shared"] <= limit
        except Exception as e:  # report every failing configuration, not just the first
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        row["seconds"] = round(time.perf_counter() - t0, 2)
        failures += not row["ok"]
        if as_json:
            print(json.dumps(row), flush=True)
        else:
            status = f"shared {row['shared']:>6} B" if "shared" in row else row["error"]
            print(f"{row['arch']} {name:<44} {row['dtype']:<5} {status}  {'ok' if row['ok'] else 'FAIL'}"
                  f"  ({row['seconds']} s)", flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, choices=sorted(SMEM_LIMIT), required=True, help="CUDA compute capability")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    a = p.parse_args(argv)
    return run(a.arch, a.json)


if __name__ == "__main__":
    sys.exit(main())
