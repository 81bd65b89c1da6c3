"""Small statistics helpers shared by the benchmarks (percentiles in milliseconds)."""

from __future__ import annotations

import numpy as np


def percentiles(values_ms, keys=(50, 95, 99)) -> dict:
    """{'p50':..., 'p95':..., 'p99':..., 'max':..., 'mean':...} of a list of milliseconds (NaN if empty)."""
    a = np.asarray(list(values_ms), dtype=np.float64)
    if a.size == 0:
        return {**{f"p{k}": float("nan") for k in keys}, "max": float("nan"), "mean": float("nan")}
    out = {f"p{k}": float(np.percentile(a, k)) for k in keys}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    return out
