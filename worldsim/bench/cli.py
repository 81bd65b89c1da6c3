"""``worldsim bench <engine|latency>``: benchmarks print figures and write JSON; they assert nothing."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "engine": "worldsim.bench.engine_bench",
    "latency": "worldsim.bench.latency",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: worldsim bench {{{','.join(BENCHES)}}} [options]  (e.g. worldsim bench engine --quick)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:])
