"""Is model B better than model A on the same held-out rollouts, or is the difference noise?

    python scripts/compare_evals.py out/eval_a.json out/eval_b.json [--a-setting 1x2] [--b-setting copy_last]

Both JSONs from ``worldsim eval`` with the same episodes, split, context, horizon, starts and seed.
Thin entry over ``worldsim.eval.compare``: prints B - A for MSE-PSNR h1-8 and the sprite error at h8
with paired-bootstrap 95% intervals (``--json OUT`` writes them).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from worldsim.errors import WorldsimError
    from worldsim.eval.compare import compare_files, format_comparison

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="worldsim eval JSON of model A")
    ap.add_argument("b", help="worldsim eval JSON of model B")
    ap.add_argument("--a-setting", help="A's setting, e.g. 1x2 (default: its first), or copy_last / mean_frame")
    ap.add_argument("--b-setting", help="the same for B")
    ap.add_argument("--draws", type=int, default=2000, help="bootstrap draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the comparison here")
    args = ap.parse_args(argv)
    if args.draws < 100:
        print("compare_evals: --draws must be at least 100", file=sys.stderr)
        return 2
    try:
        c = compare_files(args.a, args.b, args.a_setting, args.b_setting, args.draws, args.seed)
    except WorldsimError as e:
        print(f"compare_evals: {e}", file=sys.stderr)
        return 2
    print(format_comparison(c))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(c, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
