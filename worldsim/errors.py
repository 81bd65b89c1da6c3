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


def check_readable(path, what: str, error: type[WorldsimError] = WorldsimError) -> None:
    """Raise ``error`` with one line when ``path`` cannot be opened for reading (permission, I/O), so
    that a file the user may not read is never reported as a corrupt one."""
    try:
        open(path, "rb").close()
    except PermissionError:
        raise error(f"cannot read {what} '{path}': permission denied; make it readable (chmod a+r) or run as "
                    f"its owner") from None
    except OSError as e:
        raise error(f"cannot read {what} '{path}' ({e.strerror or e}); check the disk and the path") from None
