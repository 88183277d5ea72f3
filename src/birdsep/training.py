"""The Lightning layer both trainers share (``train-separator``, ``train-classifier``).

* :class:`TrainOptions`: what every training takes (run folder, steps, batch, learning rate,
  checkpoints, resume, seed, data workers, threads, progress and Lightning's precision,
  accelerator, devices, strategy and nodes); :class:`SeparatorTrainOptions` and
  :class:`ClassifierTrainOptions` extend it (kept here, free of PyTorch, so that the command
  line can show their defaults without importing it).
* :func:`add_flags` puts those options on a command's parser (``birdsep.cli.options_from``
  reads them back, with the trainer's own flags, into the trainer's options class).
* :func:`start` settles a run folder (refusing to overwrite a run without ``--resume``),
  threads and Lightning's chatter; :func:`find_checkpoint` is the one place a resumed run
  finds the checkpoint it continues from; :func:`make_trainer` builds every ``Trainer`` with
  atomic checkpoints (:func:`checkpoints`), CSV and TensorBoard logs (:func:`loggers`) and a
  progress bar; :func:`fit` runs it.

Lightning is imported only when a training starts, so that ``--help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from birdsep.errors import UsageError

if TYPE_CHECKING:
    from birdsep.classification.augment import AugmentConfig

log = logging.getLogger(__name__)

#: ``--precision`` also takes the names ``separate`` uses.
PRECISION_ALIASES = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    out: str
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    checkpoint_every: int = 100
    resume: bool = False
    seed: int = 0
    workers: int = 0  # data loading processes
    precision: str = "32-true"  # Lightning's: 32-true, bf16-mixed, … (or fp32, bf16)
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    threads: int | None = None
    progress: bool = True


@dataclass(frozen=True, kw_only=True)
class SeparatorTrainOptions(TrainOptions):
    """``birdsep train-separator`` (:func:`birdsep.separation.train.train_separator`)."""

    steps: int = 10000
    batch_size: int = 4
    workers: int = 1
    preset: str = "small"
    sources: int | None = None
    clip_seconds: float | None = None
    exclude: tuple[str, ...] = ()
    snr_max: float = 30.0  # SNRmax of the thresholded SNR, dB (= separation.mixit.DEFAULT_SNR_MAX)
    sparsity: float = 0.0  # weight of the ℓ1/ℓ2 source-level sparsity loss (0: plain MixIT)
    init_from: str | None = None  # warm start: a model folder or run directory (M may differ)
    grad_clip: float = 5.0


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainOptions(TrainOptions):
    """``birdsep train-classifier`` (:func:`birdsep.classification.train.train_classifier`)."""

    noise: tuple[str, ...] = ()
    species_list: str | None = None
    taxonomy: str | None = None
    backbone: str = "b0"
    ensemble: int = 1
    no_augment: tuple[str, ...] = ()
    max_windows: int = 5
    augment: AugmentConfig = field(default_factory=lambda: _augment_config())  # built when used: NumPy


def _augment_config() -> AugmentConfig:
    from birdsep.classification.augment import AugmentConfig

    return AugmentConfig()


def add_flags(p, defaults: type[TrainOptions]) -> None:
    """The flags of :class:`TrainOptions`, with the defaults of the trainer's options class."""
    d = {f.name: f.default for f in dataclasses.fields(defaults)}
    p.add_argument("-o", "--out", required=True, help="run directory (checkpoints, logs, the model)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"total optimisation steps (default {d['steps']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"examples per step (default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"learning rate (default {d['lr']:g})")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"], help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="carry on from the run directory's last checkpoint")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--workers", type=int, default=d["workers"], help=f"data loading processes (default {d['workers']})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--precision", default=d["precision"],
                   help="Lightning precision: 32-true (fp32), bf16-mixed (bf16), … (default 32-true)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu | gpu | auto")
    p.add_argument("--devices", default="auto", help="Lightning devices (count or list, e.g. 2 or 0,1)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--num-nodes", type=int, default=1, help="machines taking part (Lightning)")
    p.add_argument("-q", "--quiet", dest="progress", action="store_false", help="no progress bar")


# ----------------------------------------------------------------------------- a run


def start(opts: TrainOptions, marker: Path) -> Path:
    """Check the options and the run folder (``marker``, a file a started run has, must not
    exist unless resuming); set threads and quieten Lightning. Returns the run folder."""
    if min(opts.steps, opts.batch_size, opts.checkpoint_every) < 1:
        raise UsageError("--steps, --batch-size and --checkpoint-every must be at least 1")
    out = Path(opts.out)
    if marker.exists() and not opts.resume and is_primary():
        raise UsageError(f"{out} already holds a training run; pass --resume to carry on, or choose another --out")
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    quiet_lightning()
    return out


def is_primary() -> bool:
    """Whether this is the first process of a training (global rank 0), or the only one.

    Read from the environment before any process group exists: a distributed training's other
    processes start the command from the beginning (Lightning relaunches it with ``LOCAL_RANK``
    for each further device; a launcher or scheduler sets ``NODE_RANK``, ``GROUP_RANK``
    (torchrun), ``RANK`` or ``SLURM_PROCID``). Only the first one checks the run folder and
    writes the run's own files (options, model), so that the others neither race it nor
    take the folder it has just started for someone else's run.
    """
    import os

    return all(os.environ.get(name, "0") in ("", "0")
               for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def find_checkpoint(folder: Path, opts: TrainOptions, who: str) -> Path | None:
    """The checkpoint a run continues from with ``--resume`` (None: start from scratch).

    ``folder`` holds the run's (or ensemble member's) checkpoints; ``who`` names it in the
    line that says where training resumes from.
    """
    last = folder / "last.ckpt"
    if not opts.resume:
        return None
    if not last.is_file():
        log.warning("%s: no checkpoint in %s yet, starting from scratch", who, folder)
        return None
    print(f"{who} resumes from {last}", flush=True)
    return last


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips, deprecations) off the
    user's terminal; progress, losses and real warnings still show (``-v`` shows all)."""
    import warnings

    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*", category=DeprecationWarning)
    for pattern in (".*LeafSpec.*", ".*weights_only.*", ".*litlogger.*", ".*does not have many workers.*",
                    ".*IterableDataset.*__len__.*"):
        warnings.filterwarnings("ignore", message=pattern)


def parse_devices(value: str):
    """``auto`` | a count (``2``) | a list (``0,1``) | Lightning's other spellings, as Lightning wants them."""
    value = str(value)
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value) if value.lstrip("-").isdigit() else value


def checkpoints(folder: Path, every: int, step_files: bool = False):
    """Lightning's checkpoint callback: ``folder/last.ckpt`` every ``every`` steps (and, with
    ``step_files``, the latest ``step-N.ckpt`` beside it)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if step_files:
        return ModelCheckpoint(dirpath=folder, filename="step-{step}", auto_insert_metric_name=False,
                               every_n_train_steps=every, save_last=True, save_top_k=1, monitor=None)
    return ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_last=True, save_top_k=0)


def loggers(folder: Path, csv: tuple[str, str | None], tensorboard: tuple[str, str | None],
            flush_every: int = 100) -> list:
    """A CSV log in ``folder/<name>/<version>/metrics.csv`` and TensorBoard events in
    ``folder/<name>/<version>/`` for ``csv`` and ``tensorboard`` = (name, version or None for
    the next free ``version_N``); TensorBoard is left out, with one warning, when it is not installed."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out = [CSVLogger(folder, name=csv[0], version=csv[1], flush_logs_every_n_steps=flush_every)]
    try:
        out.append(TensorBoardLogger(folder, name=tensorboard[0], version=tensorboard[1]))
    except ModuleNotFoundError:
        log.warning("tensorboard is not installed: CSV logs only")
    return out


def make_trainer(opts: TrainOptions, root: Path, callbacks: list, logger: list, **settings):
    """A Lightning ``Trainer`` for ``opts``: atomic checkpoints, a progress bar, no model summary.
    ``settings`` go to the Trainer as they are (e.g. ``gradient_clip_val``)."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=opts.steps, max_epochs=-1, precision=PRECISION_ALIASES.get(opts.precision, opts.precision),
        accelerator=opts.accelerator, devices=parse_devices(opts.devices), strategy=opts.strategy,
        num_nodes=opts.num_nodes, callbacks=callbacks + ([_progress_bar()] if opts.progress else []), logger=logger,
        plugins=[_atomic_checkpoint_io()], enable_progress_bar=opts.progress, enable_model_summary=False,
        default_root_dir=root, **settings)


def fit(trainer, module, loader, checkpoint: Path | None) -> None:
    """``trainer.fit``, resuming from ``checkpoint``; Lightning's own exit after Ctrl-C or
    SIGTERM is not an error (the caller looks at ``trainer.interrupted``)."""
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(checkpoint) if checkpoint else None)
    except SystemExit:
        pass


def _atomic_checkpoint_io():
    """Checkpoints written to a temporary file and renamed: a ``kill -9`` never leaves a
    half-written checkpoint under the final name."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from birdsep import files

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            with files.atomic(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)

    return AtomicCheckpointIO()


def _progress_bar():
    from lightning.pytorch.callbacks import TQDMProgressBar

    class Bar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):  # loss and it/s; no logger version number
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return metrics

    return Bar(refresh_rate=1)
