"""Training batches drawn by step number: a resumed run trains on the batches an uninterrupted one would.

Batch number ``k`` of a run is ``draw(p, rng)`` with ``p = k · world + rank`` (its place among
all the batches of all the processes of a distributed run) and
``rng = numpy.random.default_rng([seed, p])``. It depends on nothing else: not on how many
loader workers share the work, nor on where the run was stopped and resumed (the stream
starts at the checkpoint's step). ``draw`` must be picklable (a module-level function, a
``functools.partial`` of one or a bound method) for loader workers started by ``spawn``.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np
import torch

Draw = Callable[[int, np.random.Generator], Any]


class StepBatches(torch.utils.data.IterableDataset):
    """The endless stream of batches from step ``first_step`` on; loader worker ``w`` of ``W``
    draws steps ``first_step + w``, ``+ W``, … (the loader interleaves them back in order)."""

    def __init__(self, draw: Draw, seed: int, first_step: int = 0):
        super().__init__()
        self.draw, self.seed, self.first_step = draw, seed, first_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
            else (0, 1)
        for step in itertools.count(self.first_step + worker, workers):
            place = step * world + rank
            yield self.draw(place, np.random.default_rng([self.seed, place]))


def _leave_sigterm_to_the_trainer(worker: int) -> None:
    """A loader worker ignores SIGTERM. ``kill -- -PGID``, a batch scheduler ending its job or a
    container stopping send it to every process at once; the trainer then finishes its step,
    writes its checkpoint and shuts its workers down, rather than dying mid-step on a lost worker."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(draw: Draw, seed: int, first_step: int, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`StepBatches` (``draw`` makes whole batches)."""
    return torch.utils.data.DataLoader(StepBatches(draw, seed, first_step), batch_size=None, num_workers=workers,
                                       persistent_workers=workers > 0, worker_init_fn=_leave_sigterm_to_the_trainer)
