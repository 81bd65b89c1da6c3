r"""Block-causal attention of a query chunk against a KV cache plus the chunk's own keys.

Layout. ``k``/``v`` hold ``kv_len[b]`` valid keys per batch row: the cached keys followed by the
keys of the ``M`` query tokens themselves (so the queries sit at positions
``kv_len[b] - M + i``). Everything at or past ``kv_len[b]`` is scratch and is never read.

Mask. Queries are grouped into chunks of ``chunk_tokens``; query ``i`` sees key ``j`` iff

    j < min(kv_len[b],  kv_len[b] - M + (i // chunk_tokens + 1) * chunk_tokens)

i.e. all of the cache, every earlier chunk of the query block, and its own chunk (block-causal;
``chunk_tokens >= M`` makes the block bidirectional).

Formula (online softmax over key blocks, fp32 accumulation):
    out_i = sum_j softmax_j(scale * q_i . k_j) v_j,   scale = 1/sqrt(D) unless given.

Grouped KV heads: ``Hq`` must be a multiple of ``Hkv``; query head ``h`` reads KV head
``h // (Hq // Hkv)``.

Shapes: q (B, Hq, M, D); k, v (B, Hkv, Nmax, D); kv_len int or int tensor (B,); out (B, Hq, M, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Guarded: without Triton (macOS) triton/tl are None and the reference still runs.
from kernels.triton_utils import jit as _jit, on_device_of, round_to_out, tl, triton


def _kv_len_tensor(kv_len, batch: int, device) -> torch.Tensor:
    if isinstance(kv_len, int):
        return torch.full((batch,), kv_len, dtype=torch.long, device=device)
    return kv_len.to(device=device, dtype=torch.long)


def _check(q, k, v, kv_len, chunk_tokens):
    B, Hq, M, D = q.shape
    if k.shape != v.shape or k.dim() != 4 or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)}/{tuple(v.shape)} do not fit q {tuple(q.shape)}")
    if Hq % k.shape[1]:
        raise ValueError(f"query heads {Hq} must be a multiple of KV heads {k.shape[1]}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    lens = kv_len if isinstance(kv_len, int) else None
    if lens is not None and not (M <= lens <= k.shape[2]):
        raise ValueError(f"kv_len {lens} must lie in [M={M}, Nmax={k.shape[2]}]")


def attention_mask(M: int, kv_len: torch.Tensor, n_keys: int, chunk_tokens: int) -> torch.Tensor:
    """Boolean mask (B, 1, M, n_keys), True where query i may attend to key j."""
    i = torch.arange(M, device=kv_len.device)
    j = torch.arange(n_keys, device=kv_len.device)
    limit = kv_len[:, None] - M + (i[None, :] // chunk_tokens + 1) * chunk_tokens  # (B, M)
    limit = torch.minimum(limit, kv_len[:, None])
    return (j[None, None, :] < limit[:, :, None])[:, None]


def block_causal_attention_torch(q, k, v, kv_len, chunk_tokens: int, scale: float | None = None):
    """Torch reference (CPU production path and test oracle)."""
    _check(q, k, v, kv_len, chunk_tokens)
    B, Hq, M, D = q.shape
    Hkv = k.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    gqa = Hq != Hkv
    if isinstance(kv_len, int) and M <= 4 * chunk_tokens:
        # Fast path (inference): one valid length and a few query chunks, each of which sees a prefix
        # of the keys: one maskless SDPA per chunk, no mask to build, no copy.
        outs = []
        for c0 in range(0, M, chunk_tokens):
            end = min(kv_len, kv_len - M + c0 + chunk_tokens)
            outs.append(F.scaled_dot_product_attention(q[:, :, c0:c0 + chunk_tokens], k[:, :, :end], v[:, :, :end],
                                                       scale=scale, enable_gqa=gqa))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    lens = _kv_len_tensor(kv_len, B, q.device)
    n = int(lens.max())
    mask = attention_mask(M, lens, n, chunk_tokens)
    # Scratch past kv_len may hold anything (NaN included): zero it so 0 * NaN cannot leak through.
    kk, vv = k[:, :, :n], v[:, :, :n]
    if not isinstance(kv_len, int) and bool((lens < n).any()):
        valid = (torch.arange(n, device=q.device)[None, :] < lens[:, None])[:, None, :, None]
        kk = torch.where(valid, kk, torch.zeros((), dtype=kk.dtype, device=kk.device))
        vv = torch.where(valid, vv, torch.zeros((), dtype=vv.dtype, device=vv.device))
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=scale, enable_gqa=gqa)




# ----------------------------------------------------------------------------------------------
# Triton kernel. One program = one block of BLOCK_M queries of one (batch row, query head); it
# streams the key blocks it may see through an online softmax (running max m_i, running sum l_i,
# fp32 accumulator). Precision: every load is cast to fp32 at once (the interpreter gets bf16/fp16
# arithmetic wrong, and the compiled path does the same so both run one code). The two dots take
# fp32 operands: ``ieee`` for fp32 inputs (fp32 means fp32), ``tf32`` tensor cores for bf16/fp16
# inputs, where the cast is exact (tf32 holds every bf16 and fp16 value), so q.k is exact to fp32
# accumulation and p.v rounds p to 10 mantissa bits (finer than the usual bf16 p of flash attention).
# ----------------------------------------------------------------------------------------------


@_jit
def _block_causal_attn_fwd(
    Q, K, V, KV_LEN, OUT,  # pointers; KV_LEN: int32 (B,)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    Hq, GROUP, M, N_MAX, D, CHUNK,  # GROUP = Hq // Hkv; CHUNK = min(chunk_tokens, M)
    qk_scale,  # scale * log2(e): the softmax runs in base 2 (exp2)
    BLOCK_M: tl.constexpr,  # queries per program (>= 16: tl.dot's minimum)
    BLOCK_N: tl.constexpr,  # keys per inner step
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two; lanes d >= D are masked to 0
    DOT_PRECISION: tl.constexpr,  # "ieee" (fp32 inputs) or "tf32" (bf16/fp16 inputs, exact after the cast)
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)  # int64 base offsets: large caches overflow int32 strides
    h = pid_bh % Hq
    hkv = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    L = tl.minimum(tl.load(KV_LEN + b), N_MAX)  # valid keys of this batch row (never read past)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query index i in [0, M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    # Per-query key limit (module docstring): j < min(L, L - M + (i // CHUNK + 1) * CHUNK).
    limit = tl.minimum(L - M + (offs_m // CHUNK + 1) * CHUNK, L)  # (BLOCK_M,)
    # The block's last real query sees the most keys; key blocks past that are skipped entirely.
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, M) - 1
    hi = tl.minimum(L - M + (last // CHUNK + 1) * CHUNK, L)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < M) & d_ok[None, :], other=0.0).to(tl.float32)  # (BM, BD)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max of the base-2 logits
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        n = start_n + offs_n  # (BN,)
        # Only keys < hi <= L are loaded: the scratch tail (NaN in the tests) is never touched.
        kv_mask = (n[:, None] < hi) & d_ok[None, :]
        k = tl.load(k_base + n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        k = k.to(tl.float32)  # (BN, BD)
        v = v.to(tl.float32)  # (BN, BD)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BM, BN)
        s = tl.where(n[None, :] < limit[:, None], s, float("-inf"))
        # Key 0 lies in the first block and every query sees it (limit >= 1 when M <= L), so m_new
        # is finite from the first block on and exp2(-inf - m_new) = 0 never meets -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BM,)
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.exp2(s - m_new[:, None])  # (BM, BN)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, round_to_out(out, OUT.dtype.element_ty), mask=(offs_m[:, None] < M) & d_ok[None, :])


MAX_HEAD_DIM = 128  # larger head dims fall back to the reference (kernels.dispatch)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def attention_config(D: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Launch configuration for head dim ``D`` and input ``dtype``. These tile shapes are the only ones
    shipped (tests/test_kernels_compile.py compiles each for sm_90 and sm_80, every dtype); D = 128
    takes narrower key blocks, and in fp32 twice the warps, so the tiles stay within registers."""
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is outside the Triton kernel's range [1, {MAX_HEAD_DIM}]")
    block_d = max(32, _next_pow2(D))  # 16 would do for D <= 16, but one config fewer to ship
    if block_d <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=4, num_stages=2)
    # D = 128, H100 (`worldsim bench kernels`): in fp32 (ieee dots, no tensor cores) 4 warps ran at 180 ms
    # on the large shape (13.7x torch's time), 8 warps at 13.1 ms (0.93x); bf16 ran better on 4 warps
    # (2.55 vs 3.52 ms).
    warps = 8 if dtype == torch.float32 else 4
    return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_D=block_d, num_warps=warps, num_stages=2)


def unsupported(q, k, v) -> str | None:
    """Why the Triton kernel cannot take these tensors (None if it can): the dispatch predicate."""
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype} (need one of fp32, fp16, bf16 for all three)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    return None


def _attention_launch(q, k, v, kv_len, chunk_tokens: int, scale: float | None):
    """(grid, args, meta, out) of one launch, shared by the launcher and kernels/compile_check.py."""
    _check(q, k, v, kv_len, chunk_tokens)
    why = unsupported(q, k, v)
    if why:
        raise ValueError(f"Triton attention cannot take {why}")
    B, Hq, M, D = q.shape
    Hkv, n_max = k.shape[1], k.shape[2]
    cfg = attention_config(D, q.dtype)
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    if isinstance(kv_len, int):  # one small fill, no host sync
        lens = torch.full((B,), kv_len, dtype=torch.int32, device=q.device)
    else:  # no bounds check here (it would sync); the kernel clamps to Nmax so it never reads out of bounds
        lens = kv_len.to(device=q.device, dtype=torch.int32).reshape(-1)
        lens = (lens.expand(B) if lens.numel() == 1 else lens).contiguous()
        if lens.shape != (B,):
            raise ValueError(f"kv_len has shape {tuple(kv_len.shape)}, expected ({B},)")
    out = torch.empty((B, Hq, M, D), dtype=q.dtype, device=q.device)  # (B, Hq, M, D)
    grid = (-(-M // cfg["BLOCK_M"]), B * Hq)
    args = (q, k, v, lens, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            Hq, Hq // Hkv, M, n_max, D, min(chunk_tokens, M),  # chunk >= M is bidirectional: same mask, no overflow
            scale * math.log2(math.e))
    meta = dict(DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **cfg)
    return grid, args, meta, out


def block_causal_attention_triton(q, k, v, kv_len, chunk_tokens: int, scale: float | None = None):
    """Triton forward (no autograd: the training path uses the torch reference)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    grid, args, meta, out = _attention_launch(q, k, v, kv_len, chunk_tokens, scale)
    if out.numel():
        with on_device_of(q):
            _block_causal_attn_fwd[grid](*args, **meta)
    return out
