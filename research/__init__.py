"""Analyses of the Boxing world model that are not part of the product: yardsticks for the sprite
target (how predictable the player is without pixels, from the tracks or from the emulator's whole
state), where a model's open-loop error lies in the frame, and the one-frame placement by noise level.

Not installed with the package (``pip install`` ships ``worldsim`` and ``kernels`` only): run from a
clone's root, ``python -m research.<analysis> --help``. README.md lists each analysis and its command.
"""
