"""``worldsim bench <engine|latency|kernels>``: benchmarks print figures and write JSON; they assert nothing."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "engine": ("worldsim.bench.engine_bench", "engine speed per sampling setting: ms/frame, FPS, first-frame latency"),
    "latency": ("worldsim.bench.latency", "input-to-pixel latency of the real player loop at the game's own speed, "
                                          "headless: the tick and the ms to spare per tick"),
    "kernels": ("worldsim.bench.kernels_bench", "Triton kernels vs their torch references on a CUDA GPU: ms, TFLOP/s"),
}


def usage() -> str:
    lines = [f"usage: worldsim bench {{{','.join(BENCHES)}}} [options]", ""]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in BENCHES.items()]
    lines += ["", "e.g. worldsim bench engine --quick; worldsim bench latency --duration 10 --real ALE/Boxing-v5 --json out/latency.json",
              "Run 'worldsim bench <name> --help' for its options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        asked = bool(argv) and argv[0] in ("-h", "--help", "help")
        print(usage(), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:])
