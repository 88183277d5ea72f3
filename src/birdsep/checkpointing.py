"""Crash-safe checkpoints shared by both trainings: a ``kill -9`` never leaves a
half-written checkpoint under the final name (write to a temporary file, then rename)."""
from __future__ import annotations

from lightning.pytorch.plugins.io import TorchCheckpointIO

from birdsep import files


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with files.atomic(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips, deprecations) off the
    user's terminal; progress, losses and real warnings still show (``-v`` shows all)."""
    import logging
    import warnings

    if logging.getLogger().level <= logging.INFO:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*weights_only.*", ".*litlogger.*", ".*does not have many workers.*",
                    ".*IterableDataset.*__len__.*"):
        warnings.filterwarnings("ignore", message=pattern)
