"""Training the taxonomic classifier with Lightning (``birdsep train-classifier``).

RUN_DIR layout::

    run.json                      options and classifier config of this run (resume reuses it)
    cache/                        decoded activity windows and noise (float16 .npy)
    members/<k>/checkpoints/      step-N.ckpt and last.ckpt, written atomically (temp + rename)
    members/<k>/logs/session_<n>/  CSV log (metrics.csv) of each start or resume; TensorBoard
                                  events beside it in session_<n>_tensorboard/
    members/<k>/member.safetensors  the member's weights once it has finished (or the budget ran out)
    config.json + model.safetensors  the final (ensemble) classifier, loaded strictly

``--resume`` carries on from each unfinished member's newest checkpoint (e.g. after ``kill -9``,
or a spent ``--minutes`` budget); finished members are kept. A member the budget stopped
writes its weights so far, and the classifier is written once every member has weights.
Batches are drawn by step (:mod:`birdsep.batches`), so a resumed member trains exactly as an
uninterrupted one.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch

from birdsep import files, stepbatches, training
from birdsep.classification import model as M
from birdsep.classification.data import LabelSpace, WindowDataset, activity_windows, noise_clips, read_labelled
from birdsep.errors import AudioError, UsageError
from birdsep.taxonomy import Taxonomy, read_species_list
from birdsep.training import ClassifierTrainOptions

log = logging.getLogger(__name__)

WHO = "birdsep train-classifier:"


class ClassifierModule(pl.LightningModule):
    """One ensemble member trained with the taxonomic loss; AdamW, warm-up then cosine decay."""

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


# ---------------------------------------------------------------------------- data


def prepare(data: str, opts: ClassifierTrainOptions, cfg: M.ClassifierConfig | None = None):
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
            training.say(f"{WHO} skipped {exc}", error=True)
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


def train_classifier(data: str, opts: ClassifierTrainOptions) -> Path:
    """Train ``opts.ensemble`` members and write ``config.json`` + ``model.safetensors`` to ``opts.out``."""
    run_file = Path(opts.out) / "run.json"
    out = training.start(opts, marker=run_file)
    if opts.ensemble < 1:
        raise UsageError("--ensemble must be at least 1")
    try:
        augment = opts.augment.without(*opts.no_augment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stored = training.stored_run(run_file, opts, [data], WHO)
    cfg = M.ClassifierConfig(**stored["classifier"]) if stored else None  # the run's label space and design
    cfg, windows, labels, noise, failed = prepare(data, opts, cfg)
    training.write_run(run_file, {**(stored or {"format_version": files.FORMAT_VERSION}), "classifier": cfg.to_dict(),
                                  "options": {**asdict(opts), "augment": asdict(augment)},
                                  "data": os.path.abspath(data)})
    if opts.noise == () and (augment.noise or augment.noise_only):
        log.warning("no --noise folders given: the noise augmentations are off")
    n_windows = sum(len(w) for w in windows)
    training.say(f"{WHO} {len(windows)} recordings, {n_windows} windows, {len(cfg.species)} species "
                 f"({len(cfg.genus)} genera, {len(cfg.family)} families, {len(cfg.order)} orders), "
                 f"{len(noise)} noise files")

    members_dir = out / "members"
    for k in range(cfg.members):
        mdir = members_dir / str(k)
        final = mdir / "member.safetensors"
        who = f"{WHO} member {k}"
        ckpt_dir = mdir / "checkpoints"
        resume = training.find_checkpoint(ckpt_dir, opts, who)
        if final.is_file() and (resume is None or resume.step >= opts.steps):
            training.say(f"{who} already trained")
            continue
        pl.seed_everything(opts.seed + k, verbose=False)
        ds = WindowDataset(windows, labels, cfg, augment, noise, seed=opts.seed + k)
        loader = stepbatches.loader(functools.partial(ds.batch, opts.batch_size), opts.seed + k,
                                    resume.step if resume else 0, opts.workers)
        module = ClassifierModule(cfg, opts.lr, opts.steps)
        # One log folder per session, so a resumed run keeps the metrics from before the stop.
        session = f"session_{len(list((mdir / 'logs').glob('session_*[0-9]')))}"
        trainer = training.make_trainer(
            opts, mdir, ckpt_dir, callbacks=[], step_files=True,
            logger=training.loggers(mdir, csv=("logs", session), tensorboard=("logs", f"{session}_tensorboard"),
                                    flush_every=max(1, min(100, opts.checkpoint_every))),
            log_every_n_steps=max(1, min(10, opts.steps)), num_sanity_val_steps=0, limit_val_batches=0)
        finished = training.fit(trainer, module, loader, resume, who)
        if training.is_primary():
            with training.resumable_writes():  # a resumed run writes it from the final checkpoint
                files.save_state(final, module.model.state_dict())
        if not finished:  # --minutes spent: the members after it wait for --resume
            break
    if not training.is_primary():  # rank 0 writes the ensemble
        return out
    untrained = [k for k in range(cfg.members) if not (members_dir / str(k) / "member.safetensors").is_file()]
    if untrained:
        training.say(f"{WHO} no classifier written yet: member(s) {', '.join(map(str, untrained))} not trained; "
                     "carry on with --resume")
        return out
    ensemble = M.Ensemble(cfg)
    for k, member in enumerate(ensemble.members):
        files.load_strict(member, files.load_state(members_dir / str(k) / "member.safetensors"),
                          members_dir / str(k) / "member.safetensors")
    with training.resumable_writes():  # a resumed run finds every member trained and writes it again
        M.save(ensemble, out)
    training.say(f"{WHO} wrote {out / files.WEIGHTS_NAME} and {out / files.CONFIG_NAME}"
                 + (f" ({failed} recording(s) skipped)" if failed else ""))
    return out
