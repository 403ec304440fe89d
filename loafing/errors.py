"""The one exception type the CLI turns into a one-line error and exit code 2."""


class LoafingError(Exception):
    """A user-facing error: bad input, a missing file, a checkpoint that does not fit."""
