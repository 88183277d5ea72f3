"""One file's work as a task: what every executor runs and hands back to the batch runner.

The three executors (in this process and in worker processes, :mod:`birdsep.batch`; on Ray,
:mod:`birdsep.cluster`) run a command's ``work`` through :func:`guarded` and return its
:data:`Result`, or :class:`Lost` when the worker died under the file. Both modules import these
from here, so the runner and the Ray executor do not import each other.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from birdsep.errors import InputError


@dataclass(frozen=True)
class Done:
    """One file's result: its seconds of audio and, for printing commands, its output lines."""

    seconds: float
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lost:
    """A file whose worker died under it (it goes back to the queue)."""

    path: str
    reason: str


Progress = Callable[[float], None]  # the fraction of a file done, 0 to 1
Work = Callable[[Path, "Path | None", Progress], Done]
Result = tuple[str, "Done | None", "str | None", "str | None"]  # path, result, error line, traceback


def guarded(work: Work, path: str, target: str | None, progress: Progress) -> Result:
    """Run ``work`` on one file; a failure becomes one line (and a traceback for internal errors)."""
    try:
        return path, work(Path(path), Path(target) if target else None, progress), None, None
    except InputError as exc:
        return path, None, str(exc), None
    except Exception as exc:  # keep the batch going; the details go to errors.log
        return path, None, f"{path}: internal error ({type(exc).__name__}: {exc})", traceback.format_exc()
