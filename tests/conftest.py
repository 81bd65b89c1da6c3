"""Suite-wide settings: no play run by a test starts a background compile of its model
(``play.compile``'s default comes from WORLDSIM_COMPILE; tests of the compiled path ask for it)."""

import os

os.environ.setdefault("WORLDSIM_COMPILE", "off")
