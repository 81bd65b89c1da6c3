"""Analyses of the world models that are not part of the product: yardsticks for the sprite
target (how predictable the player is without pixels, from the tracks or from the emulator's whole
state), where a model's open-loop error lies in the frame, and the one-frame placement by noise level.

Not installed with the package (``pip install`` ships ``worldsim`` and ``kernels`` only): run from a
clone's root, ``python -m research.<analysis> --help``. README.md lists each analysis and its command.
"""

import sys


def run_command(name: str, measure, argv) -> int:
    """``measure(argv)``'s exit code; a bad input (no such checkpoint or dataset, a game without a sprite
    entry) is one line on stderr, ``research.<name>: ...``, and exit 2, never a traceback."""
    from worldsim.errors import WorldsimError

    try:
        return measure(argv)
    except (WorldsimError, ValueError) as e:
        print(f"research.{name}: {e}", file=sys.stderr)
        return 2
