"""User-facing errors: one line that names the thing and the fix.

The CLI prints ``WorldsimError`` messages without a traceback and exits with code 2.
"""


class WorldsimError(Exception):
    """An error caused by input the user can fix (a config key, a file, a game id)."""


class ConfigError(WorldsimError):
    pass


class CheckpointError(WorldsimError):
    pass


class DataError(WorldsimError):
    pass
