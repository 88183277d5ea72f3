"""Errors the CLI turns into one line on stderr and exit code 2 (never a traceback)."""
from birdsep.audio import AudioError


class UsageError(Exception):
    """A problem with what the user asked for (a missing model, a bad option, no usable data)."""


__all__ = ["AudioError", "UsageError"]
