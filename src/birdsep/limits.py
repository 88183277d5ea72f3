"""The numbers birdsep accepts, checked in one place for the command line, the Python API and
the page, so that no value can make a command hang, allocate terabytes or fail deep inside a
library: each refusal is one :class:`InvalidValue` line naming the value and the range.

    sample rates        whole numbers of Hz from MIN_SAMPLE_RATE to MAX_SAMPLE_RATE (also an
                        audio file's header: :func:`birdsep.audio.info`)
    --block             BLOCK_SECONDS (seconds), --block-overlap a fraction in (0, 0.5]
    --window            WINDOW_SECONDS (classify, detect-activity, evaluate), and with
                        --overlap at least MIN_HOP_SECONDS between window starts
    --clip-seconds      CLIP_SECONDS (the mixtures of train-separator and eval-separator)
    --lr, --threads     a positive learning rate; at least one thread

``name`` is how the caller calls the value (``--block`` on the command line, ``block_seconds``
in the API). Imports nothing heavy.
"""
from __future__ import annotations

import math
import numbers

from birdsep.errors import UsageError

MIN_SAMPLE_RATE = 1000  # Hz: below, a few KB of header-declared audio would be hours long
MAX_SAMPLE_RATE = 768_000
BLOCK_SECONDS = (1.0, 600.0)  # below, the model sees too little and a file takes ages; above, memory
MAX_OVERLAP = 0.5
WINDOW_SECONDS = (0.1, 86_400.0)
MIN_HOP_SECONDS = 0.1
CLIP_SECONDS = (0.5, 60.0)  # a training or evaluation mixture (train-separator, eval-separator)


class InvalidValue(UsageError, ValueError):
    """A number outside what birdsep accepts: one line for the command line (a UsageError) and a
    ValueError for Python callers."""


def number(value, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float in [low, high] (either bound may be None), else InvalidValue."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real):
        raise InvalidValue(f"{name} must be a number, not {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise InvalidValue(f"{name} must be a finite number, not {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        span = (f"from {low:g} to {high:g}" if low is not None and high is not None
                else f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise InvalidValue(f"{name} must be {span}, not {x:g}")
    return x


def sample_rate(value, name: str = "sample_rate") -> int:
    """A sample rate: a whole number of Hz from MIN_SAMPLE_RATE to MAX_SAMPLE_RATE."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or float(value) != int(value):
        raise InvalidValue(f"{name} must be a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}, "
                           f"not {value!r}")
    rate = int(value)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidValue(f"{name} must be from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, not {rate}")
    return rate


def blocks(block_seconds, overlap, names: tuple[str, str] = ("block_seconds", "overlap")) -> tuple[float, float]:
    """(block length in seconds, overlap as a fraction of a block) of chunked separation."""
    block = number(block_seconds, names[0], *BLOCK_SECONDS)
    share = number(overlap, names[1])
    if not 0 < share <= MAX_OVERLAP:
        raise InvalidValue(f"{names[1]} must be a fraction in (0, {MAX_OVERLAP:g}], not {share:g}")
    return block, share


def window(seconds, name: str = "window") -> float:
    """A scoring or activity window in seconds."""
    return number(seconds, name, *WINDOW_SECONDS)


def windows(seconds, overlap, names: tuple[str, str] = ("window", "overlap")) -> tuple[float, float]:
    """(window, overlap) in seconds: 0 ≤ overlap < window, leaving MIN_HOP_SECONDS between starts."""
    w = window(seconds, names[0])
    o = number(overlap, names[1])
    if not 0 <= o < w:
        raise InvalidValue(f"{names[1]} must be in [0, {w:g}) seconds (less than {names[0]}), not {o:g}")
    if w - o < MIN_HOP_SECONDS:
        raise InvalidValue(f"{names[1]} must leave at least {MIN_HOP_SECONDS:g} s between windows "
                           f"(at most {w - MIN_HOP_SECONDS:g} with {names[0]} {w:g}), not {o:g}")
    return w, o


def clip(seconds, name: str = "--clip-seconds") -> float:
    """The length of a training or evaluation mixture in seconds."""
    return number(seconds, name, *CLIP_SECONDS)


def positive(value, name: str) -> float:
    """A finite number above 0 (e.g. a learning rate)."""
    x = number(value, name)
    if x <= 0:
        raise InvalidValue(f"{name} must be above 0, not {x:g}")
    return x


def threads(value, name: str = "--threads") -> int | None:
    """A thread count: None (the default) or at least 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise InvalidValue(f"{name} must be at least 1, not {value!r}")
    return value


__all__ = ["InvalidValue", "number", "sample_rate", "blocks", "window", "windows", "clip", "positive", "threads", "MIN_SAMPLE_RATE",
           "MAX_SAMPLE_RATE", "BLOCK_SECONDS", "WINDOW_SECONDS"]
