"""Errors whose message is meant for the artist, one line, no traceback."""


class HiFaceError(Exception):
    """A failure the user can act on (bad input, missing model files...)."""


class Cancelled(HiFaceError):
    """The job was cancelled by the user."""

    def __init__(self, message: str = "Cancelled") -> None:
        super().__init__(message)


def is_out_of_memory(e: BaseException) -> bool:
    """Host memory, or a torch device's (torch raises a RuntimeError subclass)."""
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()
