"""Summary statistics of timings, shared by play's meter (``worldsim.app``) and the benchmarks
(``worldsim.bench``): percentiles of a list of milliseconds, and the same summaries made fit for
strict JSON.

Boundary: plain numbers in, plain dicts out; no torch, no clocks, nothing above it imported.
"""

from __future__ import annotations

import math

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


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by None: a run with no inputs has no percentiles, and
    strict JSON readers (jq, browsers) reject the bare ``NaN`` that ``json.dumps`` would write."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
