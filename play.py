"""Play a worldsim world model in real time: ``python play.py --help``.

Thin entry: everything lives in ``worldsim.app`` (player, kiosk, replay) and ``worldsim.runtime``.
"""

import sys

from worldsim.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
