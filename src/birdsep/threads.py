"""How many threads this process computes with: PyTorch's intra-op threads and BirdNET's LiteRT
interpreters (one single-threaded interpreter per thread) share one number, set once per
command (``--threads``, or a batch worker's share of the cores).

PyTorch is imported only where it is needed: ``classify --mode mix`` with BirdNET never loads
it (its import alone costs ~1.5 s and ~500 MB of resident memory with a CUDA build). So the
number is kept here, and handed to PyTorch now if it is loaded, or through ``OMP_NUM_THREADS``
(which it reads when it loads, capped at the cores) if it is not.
"""
from __future__ import annotations

import os
import sys


def use(n: int | None) -> None:
    """Compute with ``n`` threads from now on (None or 0: leave the default)."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(int(n))  # read by PyTorch (and OpenMP) when they load
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(n))


def count() -> int:
    """The threads this process computes with: PyTorch's if it is loaded, else ``OMP_NUM_THREADS``
    (set by :func:`use`), else the cores this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: glibc's malloc arenas for the whole process (its default: 8 per core)
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """At most ``arenas`` glibc malloc arenas, as ``MALLOC_ARENA_MAX`` would (unless that is set).

    glibc gives each thread that allocates an arena of its own, which keeps what that thread
    freed: the thread working ahead, BirdNET's interpreters and PyTorch's threads each held
    freed pieces of audio (~90 MB at the peak of ``classify --mode mix+separated``, at the same
    speed; benchmarks/README.md §9). For the command line only: a library leaves its host's
    allocator alone. Does nothing where the C library has no ``mallopt`` (musl, macOS)."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, int(arenas))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass
