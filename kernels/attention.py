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


def block_causal_attention_triton(q, k, v, kv_len, chunk_tokens: int, scale: float | None = None):
    raise NotImplementedError("Triton attention kernel not written yet")
