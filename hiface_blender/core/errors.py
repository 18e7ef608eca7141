"""Errors whose message is meant for the artist, one line, no traceback."""


class HiFaceError(Exception):
    """A failure the user can act on (bad input, missing model files...)."""


class Cancelled(HiFaceError):
    """The job was cancelled by the user."""

    def __init__(self, message: str = "Cancelled") -> None:
        super().__init__(message)
