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
