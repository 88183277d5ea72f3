"""Training the taxonomic classifier with Lightning (``birdsep train-classifier``).

RUN_DIR layout::

    run.json                      options and classifier config of this run (resume reuses it)
    cache/                        decoded activity windows and noise (float16 .npy)
    members/<k>/checkpoints/      step-N.ckpt and last.ckpt, written atomically (temp + rename)
    members/<k>/logs/session_<n>/  CSV log (metrics.csv) of each start or resume; TensorBoard
                                  events beside it in session_<n>_tensorboard/
    members/<k>/member.safetensors  the member's weights once it has finished
    config.json + model.safetensors  the final (ensemble) classifier, loaded strictly

``--resume`` carries on from each unfinished member's ``last.ckpt`` (e.g. after ``kill -9``);
finished members are kept.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from birdsep import files
from birdsep.classification import augment as aug
from birdsep.classification import model as M
from birdsep.classification.data import LabelSpace, WindowDataset, activity_windows, noise_clips, read_labelled
from birdsep.errors import AudioError, UsageError
from birdsep.taxonomy import Taxonomy, read_species_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    out: str
    noise: tuple[str, ...] = ()
    species_list: str | None = None
    taxonomy: str | None = None
    backbone: str = "b0"
    ensemble: int = 1
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    checkpoint_every: int = 100
    resume: bool = False
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str = "32-true"
    no_augment: tuple[str, ...] = ()
    max_windows: int = 5
    progress: bool = True
    augment: aug.AugmentConfig = field(default_factory=aug.AugmentConfig)


def _lightning_module():
    import lightning.pytorch as pl

    class _Module(pl.LightningModule):
        def __init__(self, cfg: M.ClassifierConfig, lr: float, steps: int):
            super().__init__()
            self.cfg, self.lr, self.steps = cfg, lr, steps
            self.model = M.Classifier(cfg)

        def training_step(self, batch, batch_idx):
            logits = self.model(batch["audio"], batch["band_gain"])
            targets = {h: batch[f"y_{h}"] for h in M.HEADS}
            masks = {h: batch[f"m_{h}"] for h in M.HEADS}
            loss, per_head = M.taxonomic_loss(logits, targets, masks)
            bs = batch["audio"].shape[0]
            self.log("loss", loss, prog_bar=True, batch_size=bs)
            for h, v in per_head.items():
                self.log(f"loss_{h}", v, batch_size=bs)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
            warmup = max(1, min(200, self.steps // 10))
            sched = torch.optim.lr_scheduler.LambdaLR(  # warm-up, then cosine decay; plain floats only
                opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / self.steps))))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return _Module


# ---------------------------------------------------------------------------- data


def prepare(data: str, opts: TrainOptions, cfg: M.ClassifierConfig | None = None):
    """Read labels, build (or reuse) the label space, decode and cache activity windows."""
    taxonomy = Taxonomy.load(opts.taxonomy)
    recordings = read_labelled(data)
    targets = read_species_list(opts.species_list) if opts.species_list else None
    if cfg is None:
        space, cfg = LabelSpace.build(recordings, targets, taxonomy, backbone=opts.backbone, members=opts.ensemble)
    else:
        space = LabelSpace(cfg, taxonomy)
    if targets:
        missing = [s for s in targets if s not in {r.primary for r in recordings}]
        if missing:
            log.warning("species in the list without any recording: %s", ", ".join(missing))
    for r in recordings:
        taxonomy.lookup(r.primary)  # one warning per species it cannot place
    cache = Path(opts.out) / "cache"
    windows, labels, failed = [], [], 0
    from tqdm import tqdm

    for r in tqdm(recordings, desc="activity windows", unit="file", disable=not opts.progress, leave=False):
        try:
            w = activity_windows(r.path, cfg.sample_rate, cache, max_windows=opts.max_windows)
        except AudioError as exc:  # one line naming the file; the others go on
            print(f"birdsep train-classifier: skipped {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        windows.append(w)
        labels.append(space.encode(r))
    if not windows:
        raise UsageError.of(data, "no usable training recordings")
    noise = noise_clips(list(opts.noise), cfg.sample_rate, cache / "noise") if opts.noise else []
    if opts.noise and not noise:
        raise UsageError.of(opts.noise[0], "no usable noise recordings")
    return cfg, windows, labels, noise, failed


# ---------------------------------------------------------------------------- training


def train_classifier(data: str, opts: TrainOptions) -> Path:
    """Train ``opts.ensemble`` members and write ``config.json`` + ``model.safetensors`` to ``opts.out``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from birdsep.checkpointing import AtomicCheckpointIO  # temp file + rename: kill -9 safe

    if opts.threads:
        torch.set_num_threads(opts.threads)
    _quiet_lightning()
    if opts.ensemble < 1 or opts.steps < 1 or opts.batch_size < 1 or opts.checkpoint_every < 1:
        raise UsageError("--ensemble, --steps, --batch-size and --checkpoint-every must be at least 1")
    try:
        augment = opts.augment.without(*opts.no_augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(opts.out)
    run_file = out / "run.json"
    cfg = None
    if run_file.is_file():
        if not opts.resume:
            raise UsageError(f"{out} already holds a training run; add --resume to continue it or choose another --out")
        blob = json.loads(run_file.read_text())
        cfg = M.ClassifierConfig(**blob["classifier"])
        if cfg.members != opts.ensemble or cfg.backbone != opts.backbone:
            raise UsageError(f"{out} was started with --ensemble {cfg.members} --backbone {cfg.backbone}")
    cfg, windows, labels, noise, failed = prepare(data, opts, cfg)
    if not run_file.is_file():
        blob = {"format_version": files.FORMAT_VERSION, "classifier": cfg.to_dict(),
                "options": {**asdict(opts), "augment": asdict(augment)}, "data": str(data)}
        files.write_json(run_file, blob, indent=1)
    if opts.noise == () and (augment.noise or augment.noise_only):
        log.warning("no --noise folders given: the noise augmentations are off")
    n_windows = sum(len(w) for w in windows)
    print(f"birdsep train-classifier: {len(windows)} recordings, {n_windows} windows, {len(cfg.species)} species "
          f"({len(cfg.genus)} genera, {len(cfg.family)} families, {len(cfg.order)} orders), {len(noise)} noise files",
          flush=True)

    Module = _lightning_module()
    members_dir = out / "members"
    for k in range(cfg.members):
        mdir = members_dir / str(k)
        final = mdir / "member.safetensors"
        if final.is_file():
            print(f"birdsep train-classifier: member {k} already trained", flush=True)
            continue
        pl.seed_everything(opts.seed + k, verbose=False)
        ds = WindowDataset(windows, labels, cfg, augment, noise, seed=opts.seed + k)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=opts.batch_size, shuffle=True, drop_last=len(ds) >= opts.batch_size,
            num_workers=opts.workers, persistent_workers=opts.workers > 0)
        module = Module(cfg, opts.lr, opts.steps)
        ckpt_dir = mdir / "checkpoints"
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", auto_insert_metric_name=False,
                               every_n_train_steps=opts.checkpoint_every,
                               save_last=True, save_top_k=1, monitor=None)
        # One log folder per session, so a resumed run keeps the metrics from before the stop.
        session = f"session_{len(list((mdir / 'logs').glob('session_*[0-9]')))}"
        loggers = [CSVLogger(mdir, name="logs", version=session,
                             flush_logs_every_n_steps=max(1, min(100, opts.checkpoint_every)))]
        try:
            loggers.append(TensorBoardLogger(mdir, name="logs", version=f"{session}_tensorboard"))
        except ModuleNotFoundError:
            log.warning("tensorboard is not installed: CSV logs only")
        trainer = pl.Trainer(
            max_steps=opts.steps, accelerator=opts.accelerator, devices=opts.devices, precision=opts.precision,
            callbacks=[ckpt] + ([_progress_bar()] if opts.progress else []),
            logger=loggers, plugins=[AtomicCheckpointIO()], enable_progress_bar=opts.progress,
            log_every_n_steps=max(1, min(10, opts.steps, len(loader))), enable_model_summary=False, default_root_dir=mdir,
            num_sanity_val_steps=0, limit_val_batches=0)
        last = ckpt_dir / "last.ckpt"
        resume_from = str(last) if (opts.resume and last.is_file()) else None
        if resume_from:
            print(f"birdsep train-classifier: member {k} resumes from {last}", flush=True)
        try:
            trainer.fit(module, loader, ckpt_path=resume_from)
        except SystemExit:  # Lightning exits by itself after Ctrl-C / SIGTERM
            pass
        if trainer.interrupted or trainer.global_step < opts.steps:  # stopped early: not a finished member
            print(f"birdsep train-classifier: member {k} stopped at step {trainer.global_step}; "
                  f"continue with --resume", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        files.save_state(final, module.model.state_dict())
    ensemble = M.Ensemble(cfg)
    for k, member in enumerate(ensemble.members):
        member.load_state_dict(files.load_state(members_dir / str(k) / "member.safetensors"), strict=True)
    M.save(ensemble, out)
    print(f"birdsep train-classifier: wrote {out / files.WEIGHTS_NAME} and {out / files.CONFIG_NAME}"
          + (f" ({failed} recording(s) skipped)" if failed else ""), flush=True)
    return out


def _quiet_lightning() -> None:
    """Lightning's banner lines (GPU available, tips) only with ``birdsep -v``."""
    import warnings

    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def _progress_bar():
    from lightning.pytorch.callbacks import TQDMProgressBar

    class Bar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):  # loss and it/s; no logger version number
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return metrics

    return Bar(refresh_rate=1)
