"""The exception the CLI turns into a one-line error and exit code 2, and the warning it prints as one line."""


class LoafingError(Exception):
    """A user-facing error: bad input, a missing file, a checkpoint that does not fit."""


class AgreedError(LoafingError):
    """An error that every torchrun process raises alike; rank 0 prints it, the others stop quietly."""


class LoafingWarning(UserWarning):
    """Something a user should know that does not stop the work (e.g. a checkpoint with non-finite weights)."""
