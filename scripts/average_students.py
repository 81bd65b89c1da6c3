"""Average students fine-tuned from one parent into one checkpoint (a "model soup").

    python scripts/average_students.py A.safetensors B.safetensors --out runs/soup/stage1/final.safetensors

Thin entry over ``worldsim.train.average``; the result is a checkpoint of the same stage, for
``worldsim eval --checkpoint`` or the ship step.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from worldsim.errors import WorldsimError
    from worldsim.train.average import average_students

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="two or more stage outputs of the same model")
    ap.add_argument("--out", required=True, help="where to write the average (.safetensors)")
    args = ap.parse_args(argv)
    try:
        path = average_students(args.checkpoints, args.out)
    except WorldsimError as e:
        print(f"average_students: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
