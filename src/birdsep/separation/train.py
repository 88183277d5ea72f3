"""Unsupervised MixIT training of the separator with Lightning (CPU, one GPU or many).

RUN_DIR holds: ``options.json`` (what was asked, the model's config, the data; a resumed run
is compared with it), ``data_index.json`` (the scanned corpus), ``checkpoints/last.ckpt``
(every ``checkpoint_every`` steps and at the end, written atomically), ``logs/`` (CSV and
TensorBoard), and the model itself as ``model.safetensors`` + ``config.json``, refreshed at
every checkpoint. Batch k is drawn by step (:mod:`birdsep.stepbatches`), so a resumed run trains
exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import torch

from birdsep import audio, files, limits, stepbatches, training
from birdsep.errors import UsageError
from birdsep.separation.data import RecordingIndex, WindowSampler, mom_batch
from birdsep.separation.mixit import MAX_ASSIGNMENTS, mixit_loss, pit_loss, sparsity_loss
from birdsep.separation import architectures
from birdsep.separation.model import save_model
from birdsep.training import SeparatorTrainOptions

log = logging.getLogger(__name__)


class MixITModule(pl.LightningModule):
    """The separator trained with the MixIT loss on batches of MoMs (B, N, T)."""

    def __init__(self, config: dict, lr: float, snr_max: float, sparsity: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = architectures.build(architectures.from_stored(config))
        self.lr, self.snr_max, self.sparsity = lr, snr_max, sparsity

    def training_step(self, batch: torch.Tensor | dict, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):  # a scene with known sources (data.song_batch): (B, M, T)
            known = batch["sources"]
            sources = self.model(known.sum(dim=1))  # (B, M, T)
            loss, _ = pit_loss(known.float(), sources.float(), self.snr_max)
            loss = loss.mean() * 2 / known.shape[1]  # per reference, weighed as MixIT's two
            self.log("pit", loss, on_step=True)
        else:
            references = batch  # (B, N, T)
            sources = self.model(references.sum(dim=1))  # (B, M, T)
            loss, _ = mixit_loss(references.float(), sources.float(), self.snr_max)
            loss = loss.mean()
        if self.sparsity:
            penalty = sparsity_loss(sources).mean()
            self.log("mixit", loss, on_step=True)
            self.log("sparsity", penalty, on_step=True)
            loss = loss + self.sparsity * penalty
        self.log("loss", loss, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


class ExportModel(pl.Callback):
    """Keep RUN_DIR/model.safetensors + config.json current: at every checkpoint, the last one included."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            save_model(pl_module.model, self.folder)


WHO = "birdsep train-separator:"


def _effective(options: dict) -> dict:
    """The source count and mixture length a preset stands for when they are left to it."""
    base = architectures.presets().get(options["preset"], (None, None))[1]
    if base is not None:
        options = {**options, "sources": options["sources"] or base.num_sources,
                   "clip_seconds": options["clip_seconds"] or base.clip_seconds}
    return options


def train_separator(data: list[str], opts: SeparatorTrainOptions) -> Path:
    out = Path(opts.out)
    ckpt_dir = out / "checkpoints"
    options_file = out / "options.json"
    training.start(opts, marker=ckpt_dir / "last.ckpt")
    if opts.sources is not None and opts.sources < 2:
        raise UsageError(f"--sources must be at least 2 (MixIT splits a mixture of two mixtures), not {opts.sources}")
    if opts.clip_seconds is not None:
        limits.clip(opts.clip_seconds)
    stored = training.stored_run(options_file, opts, data, WHO, effective=_effective)
    resume = training.find_checkpoint(ckpt_dir, opts, WHO)
    base = None
    if opts.init_from and resume is None:
        from birdsep.pretrained import load_model

        base = load_model(opts.init_from)
    design = opts.preset
    if stored is not None:  # the run's model, whatever the options say (they agree unless overridden)
        config = architectures.from_stored(stored["model"])
        design = stored["options"].get("preset", design)
        if opts.clip_seconds and opts.clip_seconds != config.clip_seconds:
            config = dataclasses.replace(config, clip_seconds=opts.clip_seconds)
    elif base is not None:
        config = dataclasses.replace(base.config, num_sources=opts.sources or base.config.num_sources,
                                     clip_seconds=opts.clip_seconds or base.config.clip_seconds)
    else:
        try:
            config = architectures.preset(opts.preset, num_sources=opts.sources, clip_seconds=opts.clip_seconds)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    if not 2 <= opts.references <= config.num_sources or not 0 < opts.references_share <= 1:
        raise UsageError(f"--references must be 2 … {config.num_sources} (the number of sources) and "
                         f"--references-share in (0, 1]")
    for flag, value in (("--noise-share", opts.noise_share), ("--song-share", opts.song_share)):
        if not 0 <= value <= 1:
            raise UsageError(f"{flag} must be in [0, 1], not {value:g}")
    if not 0 <= opts.level_gap <= 60:
        raise UsageError(f"--level-gap must be 0 … 60 dB, not {opts.level_gap:g}")
    if opts.references ** config.num_sources > MAX_ASSIGNMENTS:
        raise UsageError(f"--references {opts.references} with {config.num_sources} sources makes "
                         f"{opts.references ** config.num_sources} MixIT assignments (at most {MAX_ASSIGNMENTS})")
    files.make_folder(out)
    index = RecordingIndex.build(data, opts.exclude, cache=out / "data_index.json", progress=opts.progress)
    for line in index.skipped:
        training.say(f"skipped {line}")
    if not index.recordings:
        raise UsageError("no usable audio in " + " ".join(data))
    training.say(f"training on {len(index.recordings)} recordings, {audio.amount(index.hours * 3600)}; "
                 f"model {design} M={config.num_sources}, {config.clip_seconds:g} s mixtures")
    training.write_run(options_file, {
        "options": dataclasses.asdict(opts), "model": architectures.to_stored(config), "data": [os.path.abspath(d) for d in data],
        "resumes": int(stored.get("resumes", 0)) + 1 if stored else 0,
    })

    sampler = WindowSampler(index, config.clip_seconds, config.sample_rate)
    draw = functools.partial(mom_batch, sampler, opts.batch_size, references=opts.references,
                             share=opts.references_share if opts.references > 2 else 0.0,
                             noise_share=opts.noise_share, song_share=opts.song_share, level_gap=opts.level_gap,
                             sources=config.num_sources)
    loader = stepbatches.loader(draw, opts.seed, resume.step if resume else 0, opts.workers)
    pl.seed_everything(opts.seed, verbose=False)  # the initial weights
    module = MixITModule(architectures.to_stored(config), opts.lr, opts.snr_max, opts.sparsity)
    if base is not None:
        state = base.state_dict()
        if base.config.num_sources != config.num_sources:
            widen = architectures.of(config).widen
            if widen is None:
                raise UsageError(f"{opts.init_from}: a {architectures.of(config).name} model cannot be widened "
                                 f"from M={base.config.num_sources} to {config.num_sources}")
            state = widen(state, base.config, config, seed=opts.seed)
        module.model.load_state_dict(state, strict=True)
        training.say(f"starting from the weights of {opts.init_from} "
                     f"(M={base.config.num_sources} → {config.num_sources})")
    trainer = training.make_trainer(
        opts, out, ckpt_dir, callbacks=[ExportModel(out)],
        logger=training.loggers(out / "logs", csv=("csv", None), tensorboard=("tensorboard", None)),
        gradient_clip_val=opts.grad_clip, log_every_n_steps=min(10, opts.checkpoint_every))
    training.fit(trainer, module, loader, resume, WHO)
    training.say(f"model written to {out} (step {trainer.global_step})")
    return out
