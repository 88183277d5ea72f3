"""Unsupervised MixIT training of the separator with Lightning (CPU, one GPU or many).

RUN_DIR holds: ``options.json`` (what was asked), ``data_index.json`` (the scanned corpus),
``checkpoints/last.ckpt`` (every ``checkpoint_every`` steps, written atomically),
``logs/`` (CSV and TensorBoard), and the model itself as ``model.safetensors`` +
``config.json``, refreshed at every checkpoint and at the end.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch

from birdsep import files, training
from birdsep.errors import UsageError
from birdsep.separation.data import MoMDataset, RecordingIndex, WindowSampler
from birdsep.separation.mixit import mixit_loss, sparsity_loss
from birdsep.separation.model import Separator, SeparatorConfig, preset, save_model, widen_sources
from birdsep.training import SeparatorTrainOptions

log = logging.getLogger(__name__)


class MixITModule(pl.LightningModule):
    """The separator trained with the MixIT loss on batches of MoMs (B, 2, T)."""

    def __init__(self, config: dict, lr: float, snr_max: float, sparsity: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = Separator(SeparatorConfig.from_dict(config))
        self.lr, self.snr_max, self.sparsity = lr, snr_max, sparsity

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        references = batch  # (B, 2, T)
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
    """Keep RUN_DIR/model.safetensors + config.json current: at every checkpoint and at the end."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            save_model(pl_module.model, self.folder)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_model(pl_module.model, self.folder)


def train_separator(data: list[str], opts: SeparatorTrainOptions) -> Path:
    out = Path(opts.out)
    ckpt_dir = out / "checkpoints"
    options_file = out / "options.json"
    training.start(opts, marker=ckpt_dir / "last.ckpt")
    resume_from = training.find_checkpoint(ckpt_dir, opts, "birdsep train-separator:")
    if opts.resume and options_file.exists():
        stored = json.loads(options_file.read_text())
        config = SeparatorConfig.from_dict(stored["model"])
        resumes = int(stored.get("resumes", 0)) + 1
        if stored["options"].get("preset") != opts.preset or (opts.sources and opts.sources != config.num_sources):
            log.warning("resuming with the run's stored model (%s, M=%d); --preset/--sources ignored",
                        stored["options"].get("preset"), config.num_sources)
    elif opts.init_from:
        from birdsep.pretrained import load_model

        base = load_model(opts.init_from)
        config = dataclasses.replace(base.config, num_sources=opts.sources or base.config.num_sources,
                                     clip_seconds=opts.clip_seconds or base.config.clip_seconds)
        resumes = 0
    else:
        try:
            config = preset(opts.preset, num_sources=opts.sources, clip_seconds=opts.clip_seconds)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        resumes = 0

    out.mkdir(parents=True, exist_ok=True)
    index = RecordingIndex.build(data, opts.exclude, cache=out / "data_index.json", progress=opts.progress)
    primary = training.is_primary()  # the other processes of a distributed training leave the run's files to it
    for line in index.skipped if primary else ():
        print(f"skipped {line}")
    if not index.recordings:
        raise UsageError("no usable audio in " + " ".join(data))
    if primary:
        print(f"training on {len(index.recordings)} recordings, {index.hours:.2f} h; "
              f"model {opts.preset} M={config.num_sources}, {config.clip_seconds:g} s mixtures")
        files.write_json(options_file, {
            "options": dataclasses.asdict(opts), "model": config.to_dict(), "data": list(data), "resumes": resumes,
        })

    sampler = WindowSampler(index, config.clip_seconds, config.sample_rate)
    loader = torch.utils.data.DataLoader(
        MoMDataset(sampler, seed=opts.seed * 1000 + resumes), batch_size=opts.batch_size,
        num_workers=opts.workers, persistent_workers=opts.workers > 0,
    )
    module = MixITModule(config.to_dict(), opts.lr, opts.snr_max, opts.sparsity)
    if opts.init_from and resume_from is None:
        state = base.state_dict()
        if base.config.num_sources != config.num_sources:
            state = widen_sources(state, base.config.num_sources, config.num_sources, config.coefficients,
                                  seed=opts.seed)
        module.model.load_state_dict(state, strict=True)
        print(f"starting from the weights of {opts.init_from} (M={base.config.num_sources} → {config.num_sources})")
    trainer = training.make_trainer(
        opts, out, callbacks=[training.checkpoints(ckpt_dir, opts.checkpoint_every), ExportModel(out)],
        logger=training.loggers(out / "logs", csv=("csv", None), tensorboard=("tensorboard", None)),
        gradient_clip_val=opts.grad_clip, log_every_n_steps=min(10, opts.checkpoint_every))
    training.fit(trainer, module, loader, resume_from)
    trainer.save_checkpoint(ckpt_dir / "last.ckpt")  # every process takes part; the first one writes
    if trainer.is_global_zero:
        print(f"model written to {out} (step {trainer.global_step})")
    return out
