"""The Lightning layer both trainers share (``train-separator``, ``train-classifier``).

* :class:`TrainOptions`: what every training takes (run folder, steps, a time budget, batch,
  learning rate, checkpoints, resume, seed, data workers, threads, progress and Lightning's precision,
  accelerator, devices, strategy and nodes); :class:`SeparatorTrainOptions` and
  :class:`ClassifierTrainOptions` extend it (kept here, free of PyTorch, so that the command
  line can show their defaults without importing it).
* :func:`add_flags` puts those options on a command's parser (``birdsep.cli.options_from``
  reads them back, with the trainer's own flags, into the trainer's options class).
* :func:`start` settles a run folder (refusing to overwrite a run without ``--resume``),
  threads and Lightning's chatter.
* Resuming: :func:`stored_run` compares the options with those the run was started with
  (changes that keep the model and its data are reported, the others refused unless
  ``--allow-changed-options``); :func:`find_checkpoint` is the one place a resumed run finds
  its checkpoint: the newest by the step stored inside, whatever its name, damaged ones
  skipped. Batches are drawn by step (:mod:`birdsep.stepbatches`) and random operations in a step
  seeded by it, so a resumed run trains exactly as an uninterrupted one.
* :func:`make_trainer` builds every ``Trainer``: checkpoints written atomically and durably,
  always to ``last.ckpt`` (never ``last-v1.ckpt``), a final one when training ends or is
  stopped (first Ctrl-C, SIGTERM or a spent ``--minutes`` budget: after the current step), a
  changed ``--lr`` applied, CSV and TensorBoard logs (:func:`loggers`) and a progress bar
  (steps, steps/s, time left); :func:`fit` runs it and turns a full disk into one line. Only
  rank 0 writes files; every rank resumes from the same one.

Lightning is imported only when a training starts, so that ``--help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, NamedTuple

from birdsep import files, limits
from birdsep.errors import SIGINT, SIGTERM, StorageError, Stopped, UsageError

if TYPE_CHECKING:
    from birdsep.classification.augment import AugmentConfig

log = logging.getLogger(__name__)

#: ``--precision`` also takes the names ``separate`` uses.
PRECISION_ALIASES = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    #: options a resumed run may change: they change neither the model nor the data it sees
    FREE: ClassVar[frozenset[str]] = frozenset({"steps", "lr", "checkpoint_every", "workers", "precision",
                                                "accelerator", "devices", "strategy", "num_nodes", "threads",
                                                "progress"})
    #: options never compared when a run resumes (``minutes``: the budget of one invocation)
    UNCOMPARED: ClassVar[frozenset[str]] = frozenset({"out", "resume", "allow_changed_options", "minutes"})
    #: options naming files or folders (compared as the paths they resolve to)
    PATHS: ClassVar[frozenset[str]] = frozenset()

    out: str
    steps: int = 2000
    minutes: float | None = None  # wall-clock budget of this invocation (None: none); then stop as after Ctrl-C
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
    allow_changed_options: bool = False  # resume even when options that change the model or data differ


@dataclass(frozen=True, kw_only=True)
class SeparatorTrainOptions(TrainOptions):
    """``birdsep train-separator`` (:func:`birdsep.separation.train.train_separator`)."""

    UNCOMPARED = TrainOptions.UNCOMPARED | {"init_from"}  # only a new run starts from it

    steps: int = 10000
    batch_size: int = 4
    workers: int = 1
    preset: str = "stft"
    sources: int | None = None
    clip_seconds: float | None = None
    exclude: tuple[str, ...] = ()
    snr_max: float = 30.0  # SNRmax of the thresholded SNR, dB (= separation.mixit.DEFAULT_SNR_MAX)
    sparsity: float = 0.0  # weight of the ℓ1/ℓ2 source-level sparsity loss (0: plain MixIT)
    references: int = 2  # reference mixtures per MoM in some batches (2: the paper's MixIT)
    references_share: float = 0.5  # share of the batches with `references` mixtures, when it is above 2
    noise_share: float = 0.0  # share of the MoMs whose last reference is a window's stationary noise floor
    song_share: float = 0.0  # share of the batches that are scenes of known sources (cut songs over a background)
    level_gap: float = 0.0  # dB: references below the first by U(0, level_gap) (0: independent levels)
    init_from: str | None = None  # warm start: a model folder or run directory (M may differ)
    grad_clip: float = 5.0


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainOptions(TrainOptions):
    """``birdsep train-classifier`` (:func:`birdsep.classification.train.train_classifier`)."""

    UNCOMPARED = TrainOptions.UNCOMPARED | {"augment"}  # not a flag: follows from --no-augment
    PATHS = frozenset({"noise", "species_list", "taxonomy"})

    noise: tuple[str, ...] = ()
    species_list: str | None = None
    taxonomy: str | None = None
    backbone: str = "b0"
    ensemble: int = 1
    no_augment: tuple[str, ...] = ()
    max_windows: int = 5
    augment: AugmentConfig = field(default_factory=lambda: _augment_config())  # built when used: NumPy
    # --embeddings birdnet: heads on pretrained embeddings (birdsep.classification.heads_train)
    embeddings: str | None = None  # None: the EfficientNet trained from scratch
    tracks: bool = False  # embeddings of the separated tracks too (3.5x the CPU time; no gain measured yet)
    separator: str | None = None  # the separator of the tracks (None: the shipped default)
    cache: str | None = None  # embedding cache folder (None: ~/.cache/birdsep/embeddings)


def _augment_config() -> AugmentConfig:
    from birdsep.classification.augment import AugmentConfig

    return AugmentConfig()


def add_flags(p, defaults: type[TrainOptions]) -> None:
    """The flags of :class:`TrainOptions`, with the defaults of the trainer's options class."""
    d = {f.name: f.default for f in dataclasses.fields(defaults)}
    p.add_argument("-o", "--out", required=True, help="run directory (checkpoints, logs, the model)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"total optimisation steps (default {d['steps']})")
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="wall-clock budget of this invocation: when it is spent, training stops after the current "
                        "step with a checkpoint and the model (exit code 0; --resume carries on)"
                        + ("; with --embeddings, the whole training, embeddings included" if "embeddings" in d else ""))
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"examples per step (default {d['batch_size']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"learning rate (default {d['lr']:g})")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"], help="steps between checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="carry on from the run directory's newest checkpoint (changing options that keep the model "
                        "and its data: --steps, --lr, --checkpoint-every, --workers, --threads, --precision, devices)")
    p.add_argument("--allow-changed-options", action="store_true",
                   help="with --resume: carry on even though options that change the model or its data differ from "
                        "the run's (the model's design stays the run's)")
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

#: when :func:`start` last ran: the ``--minutes`` budget counts from there
_started: float | None = None


def start(opts: TrainOptions, marker: Path) -> Path:
    """Check the options and the run folder (``marker``, a file a started run has, must not
    exist unless resuming); set threads and quieten Lightning. Returns the run folder."""
    if min(opts.steps, opts.batch_size, opts.checkpoint_every) < 1:
        raise UsageError("--steps, --batch-size and --checkpoint-every must be at least 1")
    limits.positive(opts.lr, "--lr")
    if opts.minutes is not None:
        limits.positive(opts.minutes, "--minutes")
    limits.threads(opts.threads)
    global _started
    _started = time.monotonic()
    out = Path(opts.out)
    if marker.exists() and not opts.resume and is_primary():
        raise UsageError(f"{out} already holds a training run; pass --resume to carry on, or choose another --out")
    if opts.resume and out.is_dir() and is_primary():
        files.remove_stale_temps(out)  # left by a run killed while writing
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    quiet_lightning()
    return out


def deadline(opts: TrainOptions) -> float | None:
    """The ``time.monotonic()`` at which ``--minutes`` is spent (None: no budget), counted from
    :func:`start` (loading the data is part of the run's time)."""
    if opts.minutes is None:
        return None
    return (time.monotonic() if _started is None else _started) + opts.minutes * 60


def is_primary() -> bool:
    """Whether this is the first process of a training (global rank 0), or the only one.

    Read from the environment before any process group exists: a distributed training's other
    processes start the command from the beginning (Lightning relaunches it with ``LOCAL_RANK``
    for each further device; a launcher or scheduler sets ``NODE_RANK``, ``GROUP_RANK``
    (torchrun), ``RANK`` or ``SLURM_PROCID``). Only the first one checks the run folder and
    writes the run's own files (options, model), so that the others neither race it nor
    take the folder it has just started for someone else's run.
    """
    return all(os.environ.get(name, "0") in ("", "0")
               for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def say(line: str, error: bool = False) -> None:
    """One line for the user (stdout, or stderr for ``error``), from rank 0 only."""
    if is_primary():
        print(line, file=sys.stderr if error else sys.stdout, flush=True)


def write_run(path: Path, blob: dict) -> None:
    """The run file (``options.json``, ``run.json``): written by rank 0 only, atomically."""
    if is_primary():
        files.write_json(path, blob, indent=1)


# ----------------------------------------------------------------------------- resuming


class Checkpoint(NamedTuple):
    """A checkpoint a run resumes from: its file and the optimisation step stored inside."""

    path: Path
    step: int


def find_checkpoint(folder: Path, opts: TrainOptions, who: str) -> Checkpoint | None:
    """The checkpoint a run continues from with ``--resume`` (None: start from scratch).

    The newest of ``folder``'s ``*.ckpt`` files by the step stored inside, whatever their
    names (``last.ckpt``, ``last-v1.ckpt`` of older versions, ``step-N.ckpt``); ``last.ckpt``
    wins a tie. A file that does not load (truncated, corrupt) is skipped with one line; when
    none loads, the run stops rather than start again over them. ``who`` begins these lines.
    Every rank of a distributed run picks the same file; rank 0 alone speaks and deletes the
    temporary files a run killed while writing left behind.
    """
    if not opts.resume:
        return None
    if is_primary() and folder.is_dir():
        files.remove_stale_temps(folder)
    found, damaged = [], []
    for path in sorted(folder.glob("*.ckpt")):
        try:
            found.append(Checkpoint(path, _stored_step(path)))
        except Exception as exc:  # whatever torch.load makes of a damaged file
            damaged.append(path)
            say(f"{who} skipped {path}: damaged checkpoint ({_first_line(exc)})", error=True)
    if not found:
        if damaged:
            raise UsageError.of(folder, "no checkpoint here loads; move the damaged ones away to start the run again")
        say(f"{who} no checkpoint in {folder} yet, starting from scratch", error=True)
        return None
    best = max(found, key=lambda c: (c.step, c.path.name == "last.ckpt", c.path.stat().st_mtime))
    say(f"{who} resumes from {best.path} (step {best.step})")
    return best


def _stored_step(path: Path) -> int:
    """The step inside a checkpoint, read as Lightning will load it (tensors mapped, not read)."""
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):  # its directory is at the end: missing when cut short
        raise ValueError("truncated, or not a checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    if not isinstance(step, int) or "state_dict" not in ckpt:
        raise ValueError("not a training checkpoint")
    return step


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def stored_run(path: Path, opts: TrainOptions, data: list[str], who: str,
               effective: Callable[[dict], dict] = lambda options: options) -> dict | None:
    """The run file (``options.json``, ``run.json``) of the run ``opts`` resumes, or None (not
    resuming, or none written yet), once its options agree with ``opts``.

    The options in ``FREE`` of ``opts``' class may change: the changes are reported on one
    line. Any other difference (the model or its data would change; ``data`` included) is
    refused with one :class:`UsageError` line unless ``--allow-changed-options``. An option
    the file lacks (written by an older birdsep) counts as its default; ``effective`` fills in,
    on both sides, what a value left to a default stands for (e.g. a preset's source count).
    """
    if not opts.resume or not path.is_file():
        return None
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        stored = dict(blob["options"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError.of(path, f"unreadable run file ({exc})") from None
    fields = [f for f in dataclasses.fields(opts) if f.name not in opts.UNCOMPARED]
    now = effective({f.name: getattr(opts, f.name) for f in fields})
    before = effective({f.name: stored.get(f.name, _default(f)) for f in fields})
    changes = [(name, before[name], now[name]) for name in now
               if not _same(before[name], now[name], paths=name in opts.PATHS)]
    if "data" in blob and not _same(_listed(blob["data"]), list(data), paths=True):
        changes.append(("data", _listed(blob["data"]), list(data)))
    fixed = [c for c in changes if c[0] not in opts.FREE]
    if fixed and not opts.allow_changed_options:
        raise UsageError(f"{opts.out} was started with {_changes(fixed, started=True)}: that would change the model "
                         "or its data; resume with the run's values, or add --allow-changed-options to carry on "
                         "with the new ones (the model's design stays the run's)")
    if fixed:
        say(f"{who} carries on with options that change the model or its data (--allow-changed-options; the "
            f"model's design stays the run's): {_changes(fixed)}")
    if len(changes) > len(fixed):
        say(f"{who} resumes with changed options: {_changes([c for c in changes if c not in fixed])}")
    return blob


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _listed(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def _same(a, b, paths: bool = False) -> bool:
    a, b = (json.loads(json.dumps(v, default=str)) for v in (a, b))  # tuples → lists
    if a == b:
        return True
    if not paths or a is None or b is None:
        return False
    real = lambda v: [os.path.realpath(p) for p in _listed(v)]  # noqa: E731
    return real(a) == real(b)


def _changes(changes: list[tuple[str, object, object]], started: bool = False) -> str:
    """``--steps 10 → 20, …`` (``started``: ``--preset stft (now small), …``)."""
    def flag(name):
        return {"data": "data", "progress": "progress bar"}.get(name, "--" + name.replace("_", "-"))

    def show(v):
        if isinstance(v, (list, tuple)):
            return ", ".join(map(str, v)) if len(v) <= 3 else f"{len(v)} entries"
        if isinstance(v, bool) or v is None:
            return {True: "on", False: "off", None: "default"}[v]
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{flag(n)} {show(a)} (now {show(b)})" if started else f"{flag(n)} {show(a)} → {show(b)}"
                     for n, a, b in changes)


# ----------------------------------------------------------------------------- the trainer


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
                    ".*IterableDataset.*__len__.*", ".*exists and is not empty.*", ".*dataloader is not resumable.*",
                    ".*callbacks used to create the checkpoint.*"):  # checkpoints of older birdsep versions
        warnings.filterwarnings("ignore", message=pattern)


def parse_devices(value: str):
    """``auto`` | a count (``2``) | a list (``0,1``) | Lightning's other spellings, as Lightning wants them."""
    value = str(value)
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value) if value.lstrip("-").isdigit() else value


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


def make_trainer(opts: TrainOptions, root: Path, checkpoints: Path, callbacks: list, logger: list,
                 step_files: bool = False, **settings):
    """A Lightning ``Trainer`` for ``opts`` that checkpoints into ``checkpoints`` (``last.ckpt``
    every ``--checkpoint-every`` steps and when training ends or is stopped, and with
    ``step_files`` the latest ``step-N.ckpt`` beside it), stops after the step on which
    ``--minutes`` is spent, shows a progress bar and no model summary. ``settings`` go to the
    Trainer as they are (e.g. ``gradient_clip_val``)."""
    import lightning.pytorch as pl

    end = deadline(opts)
    return pl.Trainer(
        max_steps=opts.steps, max_epochs=-1, precision=PRECISION_ALIASES.get(opts.precision, opts.precision),
        accelerator=opts.accelerator, devices=parse_devices(opts.devices), strategy=opts.strategy,
        num_nodes=opts.num_nodes, logger=logger, plugins=[_atomic_checkpoint_io()], enable_progress_bar=opts.progress,
        callbacks=callbacks + _callbacks(opts, checkpoints, step_files, end)
        + ([_progress_bar(end)] if opts.progress else []),
        enable_model_summary=False, default_root_dir=root, **settings)


def fit(trainer, module, loader, resume: Checkpoint | None, who: str) -> bool:
    """``trainer.fit``, resuming from ``resume``; True when it reached its last step. A full
    disk is one :class:`StorageError` line; a run stopped before its last step says so on one
    line, and then raises :class:`~birdsep.errors.Stopped` (Ctrl-C, SIGTERM) or returns False
    (its ``--minutes`` budget spent: a success, checkpointed like the others)."""
    saved = getattr(getattr(trainer, "checkpoint_callback", None), "dirpath", None)
    with resumable_writes(Path(saved) if saved else None):
        try:
            trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume.path) if resume else None)
        except SystemExit:  # Lightning's own exit after Ctrl-C or SIGTERM
            pass
    if trainer.global_step >= trainer.max_steps:
        return True
    sigterm = getattr(trainer, "received_sigterm", False)
    budget = next((c for c in trainer.callbacks if getattr(c, "spent", False)), None)  # _callbacks' Budget
    asked = any(getattr(c, "asked", False) for c in trainer.callbacks)  # Ctrl-C (StopCleanly)
    if budget is not None and not sigterm and not asked:
        say(f"{who} stopped at step {trainer.global_step} of {trainer.max_steps}: --minutes {budget.minutes:g} "
            "spent; carry on with --resume")
        return False
    say(f"{who} stopped at step {trainer.global_step} of {trainer.max_steps}; carry on with --resume", error=True)
    raise Stopped(signum=SIGTERM if sigterm else SIGINT)


@contextmanager
def resumable_writes(checkpoints: Path | None = None) -> Iterator[None]:
    """A full disk inside (a checkpoint, the model, a log) is one :class:`StorageError` line
    that says the last checkpoint is intact and how to carry on (or, when the folder
    ``checkpoints`` holds none yet, that the run must start again)."""
    try:
        yield
    except Exception as exc:
        full = _no_space(exc)
        if full is None:
            raise
        if checkpoints is not None and not any(checkpoints.glob("*.ckpt")):
            raise StorageError(full.path, f"{full.reason}; no checkpoint was written yet: free some space, then "
                                          "start the run again") from None
        raise StorageError(full.path, f"{full.reason}; the last checkpoint is intact: free some space, then "
                                      "carry on with --resume") from None


def _no_space(exc: BaseException | None) -> StorageError | None:
    """The full disk behind ``exc`` or what it interrupted, if any: the first write that failed
    (Lightning's clean-up after a failed checkpoint may fail to write its logs too)."""
    first, e = None, exc
    for _ in range(64):  # along the chain of exceptions raised while handling others
        if e is None:
            break
        if isinstance(e, StorageError):
            first = e
        e = e.__cause__ or e.__context__
    if first is not None:
        return first
    full = files.full_disk(exc)
    return None if full is None else StorageError(full.filename or "the run's logs",
                                                  f"cannot be written: {os.strerror(full.errno).lower()}")


def _callbacks(opts: TrainOptions, folder: Path, step_files: bool, end: float | None = None) -> list:
    """What every training has: checkpoints (:func:`_checkpoints`), a final one, random
    operations seeded by the step, a changed ``--lr`` applied, a clean stop on Ctrl-C and, with
    ``end`` (a ``time.monotonic()``), once ``--minutes`` is spent."""
    import math
    import signal
    import threading

    import lightning.pytorch as pl
    import numpy as np
    import torch
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class FinalCheckpoint(pl.Callback):
        """``last.ckpt`` at the step training ends on: finished, or stopped after a whole step
        by Ctrl-C (:class:`StopCleanly`), the budget (:class:`Budget`) or SIGTERM (Lightning)."""

        def on_train_end(self, trainer, pl_module) -> None:
            trainer.save_checkpoint(folder / "last.ckpt")

        def on_exception(self, trainer, pl_module, exception) -> None:
            if isinstance(exception, SIGTERMException):
                trainer.save_checkpoint(folder / "last.ckpt")

    class StepSeed(pl.Callback):
        """Random operations of step k (dropout, drop-path) seeded by (seed, k, rank), like its
        batch (:mod:`birdsep.stepbatches`): a resumed run repeats them as an uninterrupted one would."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            entropy = [opts.seed, trainer.global_step, trainer.global_rank]
            torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    class NewLearningRate(pl.Callback):
        """A run resumed with another ``--lr``: the optimizer restored from the checkpoint and
        its schedule take it from there on (Lightning would keep the old one)."""

        def on_train_start(self, trainer, pl_module) -> None:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    base = group.get("initial_lr", group["lr"])
                    if base and not math.isclose(base, opts.lr):
                        group["lr"] *= opts.lr / base
                        if "initial_lr" in group:
                            group["initial_lr"] = opts.lr
            for config in trainer.lr_scheduler_configs:
                if hasattr(config.scheduler, "base_lrs"):
                    config.scheduler.base_lrs = [opts.lr] * len(config.scheduler.base_lrs)

    class StopCleanly(pl.Callback):
        """The first Ctrl-C ends training after the current step (checkpointed by
        :class:`FinalCheckpoint`); a second one stops at once."""

        def __init__(self):
            self.asked, self.previous = False, None

        def on_train_start(self, trainer, pl_module) -> None:
            if threading.current_thread() is threading.main_thread():
                self.previous = signal.signal(signal.SIGINT, self.ask)

        def ask(self, signum, frame) -> None:
            self.asked = True
            signal.signal(signal.SIGINT, self.previous)
            say("\nstopping after this step (Ctrl-C again to stop at once)", error=True)

        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.strategy.reduce_boolean_decision(self.asked, all=False):
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module) -> None:
            if self.previous is not None and signal.getsignal(signal.SIGINT) == self.ask:
                signal.signal(signal.SIGINT, self.previous)

        def on_exception(self, trainer, pl_module, exception) -> None:
            self.on_train_end(trainer, pl_module)

    class Budget(pl.Callback):
        """Training ends after the step on which ``--minutes`` is spent (every rank at the same
        step), checkpointed by :class:`FinalCheckpoint`; at least one step per invocation."""

        def __init__(self):
            self.minutes, self.spent = opts.minutes, False

        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.strategy.reduce_boolean_decision(time.monotonic() >= end, all=False):
                self.spent = trainer.should_stop = True

    return [_checkpoints(folder, opts.checkpoint_every, step_files), FinalCheckpoint(), StepSeed(),
            NewLearningRate(), StopCleanly()] + ([Budget()] if end is not None else [])


def _checkpoints(folder: Path, every: int, step_files: bool):
    """Lightning's checkpoint callback: ``folder/last.ckpt`` every ``every`` steps, always
    overwritten (never a ``last-v1.ckpt`` beside it), with ``step_files`` the latest
    ``step-N.ckpt`` too. Its state is found again whatever ``--checkpoint-every`` a resumed
    run is given, so that it still removes the step files it wrote before."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Checkpoints(ModelCheckpoint):
        @property
        def state_key(self) -> str:
            return "birdsep.training.checkpoints"

    kw = dict(dirpath=folder, every_n_train_steps=every, save_last=True, enable_version_counter=False)
    if step_files:
        return Checkpoints(filename="step-{step}", auto_insert_metric_name=False, save_top_k=1, monitor=None, **kw)
    return Checkpoints(save_top_k=0, **kw)


def _atomic_checkpoint_io():
    """Checkpoints written to a temporary file, synced to disk and renamed: neither a
    ``kill -9`` nor a crash of the machine leaves a half-written checkpoint under the final
    name, and a full disk leaves the previous one as it was (:class:`StorageError`)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            import torch

            with files.atomic(path, durable=True) as tmp, open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)  # through a Python file: a full disk is an OSError

    return AtomicCheckpointIO()


def _progress_bar(end: float | None = None):
    """The training bar: steps done of ``--steps`` (counting the steps before a resume), steps/s
    of this invocation, the loss and the time left, which with a budget (``end``, a
    ``time.monotonic()``) is the earlier of the steps left and the budget left. On a terminal it
    is redrawn every step; otherwise (a log file, a pipe) once a minute and at the end."""
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class StepTqdm(Tqdm):
        @property
        def format_dict(self):
            d = super().format_dict
            done, elapsed = d["n"] - d["initial"], d["elapsed"]
            rate = done / elapsed if done > 0 and elapsed > 0 else None
            left = [(d["total"] - d["n"]) / rate] if rate and d["total"] else []
            if end is not None:
                left.append(max(0.0, end - time.monotonic()))
            return {**d, "left": self.format_interval(min(left)) if left else "?"}

    class Bar(TQDMProgressBar):
        BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{left}, {rate_fmt}{postfix}]"

        def __init__(self):
            super().__init__(refresh_rate=1)
            self.terminal, self.shown = False, 0.0

        def init_train_tqdm(self):  # at the start of training, after a resume restored its step
            self.terminal, self.shown = sys.stdout.isatty(), time.monotonic()
            return StepTqdm(desc="training", total=self.trainer.max_steps, initial=self.trainer.global_step,
                            disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                            unit="step", bar_format=self.BAR_FORMAT)

        def on_train_epoch_start(self, trainer, *_) -> None:  # the bar counts steps, across epochs
            pass

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            bar = self.train_progress_bar
            if bar is None or bar.disable:
                return
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            if self.terminal or time.monotonic() - self.shown >= 60:  # closing it shows the last step
                bar.refresh()
                self.shown = time.monotonic()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # closing the bar shows it
            pass

        def get_metrics(self, trainer, pl_module):  # loss; no logger version number
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return metrics

    return Bar()
