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
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from birdsep import files
from birdsep.checkpointing import AtomicCheckpointIO, quiet_lightning
from birdsep.separation.data import MoMDataset, RecordingIndex, WindowSampler
from birdsep.separation.mixit import DEFAULT_SNR_MAX, mixit_loss, sparsity_loss
from birdsep.separation.model import Separator, SeparatorConfig, preset, save_model, widen_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    out: str
    preset: str = "small"
    sources: int | None = None
    steps: int = 10000
    batch_size: int = 4
    lr: float = 1e-3
    clip_seconds: float | None = None
    exclude: tuple[str, ...] = ()
    checkpoint_every: int = 100
    resume: bool = False
    seed: int = 0
    workers: int = 1
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    threads: int | None = None
    snr_max: float = DEFAULT_SNR_MAX
    sparsity: float = 0.0  # weight of the ℓ1/ℓ2 source-level sparsity loss (0: plain MixIT)
    init_from: str | None = None  # warm start: a model folder or run directory (M may differ)
    grad_clip: float = 5.0
    progress: bool = True


class MixITModule(L.LightningModule):
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


class ExportModel(L.Callback):
    """Keep RUN_DIR/model.safetensors + config.json current: at every checkpoint and at the end."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            save_model(pl_module.model, self.folder)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_model(pl_module.model, self.folder)


def _devices(value: str):
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value) if value.lstrip("-").isdigit() else value


def train_separator(data: list[str], opts: TrainOptions) -> Path:
    from birdsep.errors import UsageError

    quiet_lightning()
    out = Path(opts.out)
    ckpt = out / "checkpoints" / "last.ckpt"
    options_file = out / "options.json"
    if opts.threads:
        torch.set_num_threads(opts.threads)

    if ckpt.exists() and not opts.resume:
        raise UsageError(f"{out} already holds a training run; pass --resume to carry on, or choose another --out")
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
    if opts.resume and not ckpt.exists():
        log.warning("no checkpoint in %s yet: starting from scratch", out)

    out.mkdir(parents=True, exist_ok=True)
    index = RecordingIndex.build(data, opts.exclude, cache=out / "data_index.json", progress=opts.progress)
    for line in index.skipped:
        print(f"skipped {line}")
    if not index.recordings:
        raise UsageError("no usable audio in " + " ".join(data))
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
    if opts.init_from and not (opts.resume and ckpt.exists()):
        state = base.state_dict()
        if base.config.num_sources != config.num_sources:
            state = widen_sources(state, base.config.num_sources, config.num_sources, config.coefficients,
                                  seed=opts.seed)
        module.model.load_state_dict(state, strict=True)
        print(f"starting from the weights of {opts.init_from} (M={base.config.num_sources} → {config.num_sources})")
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out / "checkpoints", every_n_train_steps=opts.checkpoint_every, save_last=True, save_top_k=0,
    )
    loggers = [L.pytorch.loggers.CSVLogger(out / "logs", name="csv"),
               L.pytorch.loggers.TensorBoardLogger(out / "logs", name="tensorboard")]
    trainer = L.Trainer(
        max_steps=opts.steps, max_epochs=-1, precision=opts.precision, accelerator=opts.accelerator,
        devices=_devices(opts.devices), strategy=opts.strategy, num_nodes=opts.num_nodes,
        callbacks=[checkpoint, ExportModel(out)], logger=loggers, plugins=[AtomicCheckpointIO()],
        gradient_clip_val=opts.grad_clip, log_every_n_steps=min(10, opts.checkpoint_every), enable_progress_bar=opts.progress,
        enable_model_summary=False, default_root_dir=out,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if opts.resume and ckpt.exists() else None)
    trainer.save_checkpoint(ckpt)
    print(f"model written to {out} (step {trainer.global_step})")
    return out
