"""Shared timing statistics (worldsim.stats): what play's meter and the benchmarks both report, and
the layering that lets both use them (the app never imports the benchmarks)."""

import json
import math
import re
from pathlib import Path

import pytest

from worldsim.stats import json_safe, percentiles


def test_percentiles_of_a_known_list():
    p = percentiles(range(1, 101))  # 1..100 ms
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert p["max"] == 100.0 and p["mean"] == pytest.approx(50.5)
    assert set(percentiles([3.0], (50, 90))) == {"p50", "p90", "max", "mean"}


def test_no_values_give_nan_and_strict_json_gets_null():
    p = percentiles([])
    assert all(math.isnan(v) for v in p.values())
    text = json.dumps(json_safe({"latency_ms": p, "rows": [1.5, float("inf")], "n": 0}))
    assert json.loads(text) == {"latency_ms": {"p50": None, "p95": None, "p99": None, "max": None, "mean": None},
                                "rows": [1.5, None], "n": 0}


def test_the_app_does_not_import_the_benchmarks():
    import worldsim.app

    app = Path(worldsim.app.__file__).parent
    offenders = [f"{f.name}:{n}" for f in sorted(app.glob("*.py"))
                 for n, line in enumerate(f.read_text().splitlines(), 1) if re.search(r"\bworldsim\.bench\b", line)]
    assert offenders == []  # bench imports the app (it times play); the app may not import bench back
