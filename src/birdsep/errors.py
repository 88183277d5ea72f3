"""The errors a user can fix: each becomes one line (never a traceback).

    InputError              something the user gave us cannot be used
    ├── AudioError          an audio file: unreadable, empty, too short, NaN-filled …
    ├── UsageError          what was asked for: an option, a model or run folder, a table,
    │                       a species list, a taxonomy CSV, a missing optional extra
    └── StorageError        an output cannot be written: the disk (or the user's quota) is full,
                            no permission, a read-only file system, a file where a folder goes

``Stopped`` (a ``KeyboardInterrupt``) is a run the user stopped that has already said so on
one line (where it stopped, how to carry on): the command adds nothing. ``Terminated`` is
SIGTERM where Ctrl-C would be a ``KeyboardInterrupt``: the same clean stop. The exit code is
128 + the signal (:func:`exit_code`): 130 after Ctrl-C, 143 after SIGTERM.

A command stops on an ``InputError`` with exit code 2; a batch reports an ``InputError``
raised for one of its files as that file's line in ``errors.log`` and goes on. Anything else
is an internal error (a bug): a batch logs its traceback. This module imports nothing heavy.
"""
from __future__ import annotations

import os


class InputError(Exception):
    """Something the user gave us cannot be used; ``str(err)`` is one line."""


class AudioError(InputError):
    """An audio file that cannot be used; ``str(err)`` is ``<path>: <reason>``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UsageError(InputError):
    """A problem with what the user asked for (a missing model, a bad option or file, no usable data)."""

    @classmethod
    def of(cls, path: str | os.PathLike, reason: str) -> "UsageError":
        """An error about a file the user named that is not audio: ``<path>: <reason>``."""
        return cls(f"{path}: {reason}")


class StorageError(InputError):
    """An output cannot be written (a full file system or quota, no permission, read-only, a file
    where a folder should be); ``str(err)`` is ``<path>: <reason>``.
    The file's previous version, if any, is intact (every write is atomic)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


SIGINT, SIGTERM = 2, 15


class Stopped(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C, SIGTERM) that has already said where it stopped;
    ``signum`` is the signal that stopped it."""

    def __init__(self, *args, signum: int = SIGINT):
        super().__init__(*args)
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler ending its job, a container stopping), raised where Ctrl-C
    raises ``KeyboardInterrupt``: the run stops as cleanly, and exits with 143."""

    signum = SIGTERM


def exit_code(stop: KeyboardInterrupt) -> int:
    """The exit code of a command stopped by ``stop``: 128 + its signal (130 for Ctrl-C, 143 for
    SIGTERM), as a shell reports a process its signal ended."""
    return 128 + getattr(stop, "signum", SIGINT)


def require(module: str, extra: str, what: str) -> None:
    """Raise a one-line UsageError when ``module`` (from the optional ``extra``) is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f'{what} needs the {extra} extra: pip install "birdsep[{extra}]"')


__all__ = ["InputError", "AudioError", "UsageError", "StorageError", "Stopped", "Terminated", "exit_code", "require"]
