"""Suite-wide settings and helpers.

No play run by a test starts a background compile of its model (``play.compile``'s default comes
from WORLDSIM_COMPILE; tests of the compiled path ask for it).

Tiers (declared in pyproject.toml): the plain ``python -m pytest -q`` is the fast tier (pytest's
default options leave out tests marked ``slow``; the same as ``-m 'not slow'``), ``-m slow`` the
slow tier; .ci/run runs both. Tests wait on conditions with generous deadlines
(``worldsim.runtime.testing.wait_for``) and never count frames that arrive within a fixed sleep;
the stall watchdog runs on ``manual_clock`` instead of wall time.
"""

import os

import pytest

os.environ.setdefault("WORLDSIM_COMPILE", "off")


class ManualClock:
    """A nanosecond clock that moves only when a test says so (``advance``); inject it as ``Session.clock``
    so that a generation counts as stalled exactly when the test decides, however loaded the machine is."""

    def __init__(self, start_s: float = 1000.0):
        self.t = int(start_s * 1e9)

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


@pytest.fixture
def manual_clock():
    return ManualClock()


@pytest.fixture(scope="module")
def one_torch_thread():
    """As play.py does on 2 cores: one torch thread for the module's tests, so a busy machine does not stall
    every op (the count before is restored after). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
