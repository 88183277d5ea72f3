"""``python tests/ddp_probe.py train-separator ...``: birdsep's command line with a record of
what each process of a distributed training does, for the DDP tests (never used otherwise).

Into the folder ``$BIRDSEP_PROBE``, each process appends at every training step
``step sha1-of-its-batch`` to ``rank-<global rank>.txt``, and every Lightning checkpoint
serialised (``torch.save`` of a dict with a ``global_step``, however the trainer writes it
out) appends ``<global rank> <file>`` to ``saves.txt``. Lightning starts the other processes of a
``--devices N --strategy ddp`` run by running this same script again, so they record too.
"""
import hashlib
import os
import sys
from pathlib import Path

import torch

from birdsep.cli import main
from birdsep.separation.train import MixITModule

PROBE = Path(os.environ["BIRDSEP_PROBE"])


def _append(name: str, line: str) -> None:
    with open(PROBE / name, "a") as f:
        f.write(line + "\n")


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


_training_step = MixITModule.training_step


def training_step(self, batch, batch_idx):
    _append(f"rank-{self.global_rank}.txt", f"{self.global_step} {hashlib.sha1(batch.numpy().tobytes()).hexdigest()}")
    return _training_step(self, batch, batch_idx)


_save = torch.save


def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "global_step" in obj:
        _append("saves.txt", f"{_rank()} {getattr(f, 'name', f)}")
    return _save(obj, f, *args, **kwargs)


MixITModule.training_step = training_step
torch.save = save

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
