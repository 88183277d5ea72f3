"""``birdsep train-classifier --embeddings birdnet``: the paper's taxonomic heads on BirdNET
embeddings of the activity windows, trained on the mix and (``--tracks``) its separated tracks,
in minutes on a CPU.

With tracks, each track is embedded as ``classify --mode mix+separated`` hears it
(:data:`TRACK_INPUT`: the mixture 15 dB under the track), and the bags of {mix, tracks} are
trained with :data:`SPEC`, the use of the tracks chosen on validation recordings among
multiple-instance poolings, a mix-anchored loss, tracks as negatives only and tracks labelled
like the mix (``benchmarks/embedding_heads.py``; none beat the mix alone there).

Shapes: B bags (one per activity window), I instances of a bag (1 mix + M tracks, or the mix
alone), D embedding (1024), n a head's classes.

RUN_DIR layout::

    run.json                         options, data, label counts, timings of this run
    errors.log                       one line per skipped file (unreadable, no usable window)
    config.json + model.safetensors  the heads (kind ``embedding_heads``), loaded strictly

The embeddings are cached outside the run (``--cache``, default ``~/.cache/birdsep/embeddings``),
keyed by the files' contents, the separator's weights and the window settings, so a second
training on the same recordings skips straight to the heads. Noise recordings (``--noise``)
give bags whose every instance is negative for every head, bird/no-bird included: the
classifier learns not to fire on noise.
"""
from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from birdsep import combination, files, training
from birdsep.classification import embeddings as E
from birdsep.classification import heads as H
from birdsep.classification.data import LabelledRecording, LabelSpace, read_labelled
from birdsep.classification.model import HEADS
from birdsep.errors import AudioError, UsageError
from birdsep.files import find_audio
from birdsep.taxonomy import Taxonomy, read_species_list
from birdsep.training import ClassifierTrainOptions

WHO = "birdsep train-classifier:"
#: What the heads hear for each track: what the default ``mix+separated`` rule scores. Raw tracks
#: lost 0.03 validation cmAP against these (benchmarks/results/embedding_heads.txt).
TRACK_INPUT = combination.DEFAULT.input
#: How bags of {mix, tracks} are trained: every track labelled like the mix, the best of the
#: variants on validation (within 0.004 of the multiple-instance max and log-mean-exp there).
SPEC = H.MilSpec("each")
MIN_STEPS = 100  # steps each member trains even when the --minutes budget is spent on embeddings


class Bags:
    """Training bags: ``x`` (B, I, D) float32 instance embeddings, ``targets``/``masks``
    {head: (B, n)} as :class:`birdsep.classification.data.LabelSpace` encodes them."""

    def __init__(self, x: np.ndarray, labels: list[dict[str, np.ndarray]]):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.targets = {h: torch.from_numpy(np.stack([lab[f"y_{h}"] for lab in labels])) for h in HEADS}
        self.masks = {h: torch.from_numpy(np.stack([lab[f"m_{h}"] for lab in labels])) for h in HEADS}

    def __len__(self) -> int:
        return len(self.x)


def instances(fe: E.FileEmbeddings, tracks: bool) -> np.ndarray:
    """One recording's bags: (K, I, D), the mix first, then its M tracks when ``tracks``."""
    mix = fe.mix[:, None, :]  # (K, 1, D)
    return np.concatenate([mix, fe.tracks], axis=1) if tracks else mix


# ---------------------------------------------------------------------------- training


def fit(cfg: H.HeadsConfig, bags: Bags, *, steps: int, batch_size: int, lr: float, seed: int = 0,
        seconds: float | None = None, weight_decay: float = 1e-4, progress: bool = True,
        loss_fn=functools.partial(H.mil_loss, spec=SPEC)) -> H.Heads:
    """Train every member of ``cfg`` on ``bags``: AdamW, a short warm-up then cosine decay over
    the member's progress, which is the larger of steps done / ``steps`` and time spent / its
    share of ``seconds`` (the budget of all members together; None: no time limit)."""
    from tqdm import tqdm

    model = H.Heads(cfg)
    model.fit_standardisation(bags.x)
    start = time.monotonic()
    bar = tqdm(total=cfg.members * steps, desc="heads", unit="step", disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    for k, member in enumerate(model.members):
        torch.manual_seed(seed + k)
        rng = np.random.default_rng([seed, k])
        share = None if seconds is None else (seconds - (time.monotonic() - start)) / (cfg.members - k)
        limit = steps if share is None or share > 0 else min(steps, MIN_STEPS)
        share = None if share is not None and share <= 0 else share
        opt = torch.optim.AdamW(member.parameters(), lr=lr, weight_decay=weight_decay)
        warmup = max(1, min(50, steps // 20))
        t0, order, place = time.monotonic(), rng.permutation(len(bags)), 0
        member.train()
        for step in range(limit):
            done = max(step / steps, (time.monotonic() - t0) / share if share else 0.0)
            if done >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * done))
            if place + batch_size > len(order):
                order, place = rng.permutation(len(bags)), 0
            pick = torch.from_numpy(order[place : place + batch_size])
            place += batch_size
            z = model.standardise(bags.x[pick])  # (b, I, D)
            logits = member(z)  # {head: (b, I, n)}
            loss, _ = loss_fn(logits, {h: v[pick] for h, v in bags.targets.items()},
                              {h: v[pick] for h, v in bags.masks.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(member=k, loss=f"{loss.item():.3f}")
        bar.update(steps - (bar.n - k * steps))  # a member stopped by its time share: the bar moves on
        member.eval()
    bar.close()
    return model.eval()


# ---------------------------------------------------------------------------- data


def build_bags(usable: list[tuple[LabelledRecording, E.FileEmbeddings]], noise: list[E.FileEmbeddings],
               targets: list[str] | None, taxonomy: Taxonomy, *, tracks: bool,
               members: int = 1) -> tuple[Bags, H.HeadsConfig]:
    """Bags of every window of the labelled recordings (their labels as the B0 trainer's
    :class:`~birdsep.classification.data.LabelSpace` encodes them: species, taxonomy levels,
    bird; background species masked) and of the noise recordings (every target 0, every mask
    1), and the heads' config with the label space's species, genera, families and orders."""
    space, ccfg = LabelSpace.build([r for r, _ in usable], targets, taxonomy)
    for r, _ in usable:
        taxonomy.lookup(r.primary)  # one warning per species it cannot place
    xs, labels = [], []
    for r, fe in usable:
        x = instances(fe, tracks)
        xs.append(x)
        labels += [space.encode(r)] * len(x)
    negative = LabelSpace.no_labels(space.empty(1.0))
    for fe in noise:
        x = instances(fe, tracks)
        xs.append(x)
        labels += [negative] * len(x)
    cfg = H.HeadsConfig(species=ccfg.species, genus=ccfg.genus, family=ccfg.family, order=ccfg.order,
                        members=members, tracks=tracks,
                        mil=f"{SPEC.name}; tracks heard as {TRACK_INPUT.name}" if tracks else "")
    return Bags(np.concatenate(xs), labels), cfg


def _check(opts: ClassifierTrainOptions) -> None:
    if opts.embeddings not in H.EMBEDDINGS:
        raise UsageError(f"--embeddings must be one of {', '.join(H.EMBEDDINGS)}, not {opts.embeddings!r}")
    if opts.ensemble < 1:
        raise UsageError("--ensemble must be at least 1")
    if opts.minutes is not None and not (opts.minutes > 0 and math.isfinite(opts.minutes)):
        raise UsageError(f"--minutes must be a positive number, not {opts.minutes:g}")
    if opts.max_windows < 1:
        raise UsageError("--max-windows must be at least 1")
    if opts.resume:
        raise UsageError("--resume does not apply to --embeddings: the embeddings are cached, so training again "
                         "into a new --out takes seconds")


class _Log:
    """Skipped files: one line each on stderr, and in RUN_DIR/errors.log."""

    def __init__(self, out: Path):
        self.path = out / "errors.log"
        self.lines: list[str] = []

    def skip(self, line: str) -> None:
        training.say(f"{WHO} skipped {line}", error=True)
        self.lines.append(line)

    def write(self) -> None:
        if self.lines:
            files.write_text(self.path, "\n".join(self.lines) + "\n")


def embed_all(paths: list[Path], embedder: E.BirdNETEmbedder, cache: E.EmbeddingCache,
              separation: E.Separation | None, max_windows: int, log: _Log, progress: bool,
              what: str = "embeddings") -> list[E.FileEmbeddings | None]:
    """Embeddings of each file (None for one skipped: unreadable, or without a usable window)."""
    from tqdm import tqdm

    out: list[E.FileEmbeddings | None] = []
    for p in tqdm(paths, desc=what, unit="file", disable=not progress, leave=False):
        try:
            fe = E.embed_file(p, embedder, cache, separation=separation, max_windows=max_windows,
                              track_input=TRACK_INPUT)
        except AudioError as exc:
            log.skip(str(exc))
            out.append(None)
            continue
        if len(fe) == 0:
            log.skip(f"{p}: no usable window (digital silence)")
            out.append(None)
            continue
        out.append(fe)
    return out


def train_heads(data: str, opts: ClassifierTrainOptions) -> Path:
    """Embed, train ``opts.ensemble`` members and write ``config.json`` + ``model.safetensors``
    to ``opts.out`` (see the module doc)."""
    began = time.monotonic()
    _check(opts)
    run_file = Path(opts.out) / "run.json"
    recordings = read_labelled(data)
    species_found = sorted({r.primary for r in recordings})
    if len(species_found) < 2 and not opts.noise:
        raise UsageError.of(data, f"only one species ({species_found[0]}); training needs at least two species "
                                  "folders, or --noise recordings as the negatives")
    out = training.start(opts, marker=run_file)
    torch.set_num_threads(opts.threads or 1)
    taxonomy = Taxonomy.load(opts.taxonomy)
    targets = read_species_list(opts.species_list) if opts.species_list else None
    log = _Log(out)

    embedder = E.BirdNETEmbedder(threads=opts.threads or 1)
    separation = E.Separation.load(opts.separator) if opts.tracks else None
    cache = E.EmbeddingCache(opts.cache or E.default_cache_dir())
    fes = embed_all([r.path for r in recordings], embedder, cache, separation, opts.max_windows, log, opts.progress)
    noise_paths = [f for f, _ in find_audio(list(opts.noise))] if opts.noise else []
    noise = [fe for fe in embed_all(noise_paths, embedder, cache, separation, opts.max_windows, log, opts.progress,
                                    "noise embeddings") if fe is not None]
    embed_seconds = time.monotonic() - began
    if opts.noise and not noise:
        raise UsageError.of(opts.noise[0], "no usable noise recordings")

    usable = [(r, fe) for r, fe in zip(recordings, fes) if fe is not None]
    have = {r.primary for r, _ in usable}
    per_species = Counter(r.primary for r in recordings)
    for s in species_found:
        if s not in have:
            training.say(f"{WHO} species {s}: no usable window in its {per_species[s]} recording(s); left out",
                         error=True)
    if targets:
        targets = [s for s in targets if s in have or s not in per_species]
    if not usable or (len(have) < 2 and not noise):
        log.write()
        raise UsageError.of(data, f"usable windows for {len(have)} species ({', '.join(sorted(have)) or 'none'}); "
                                  "training needs at least two, or --noise recordings as the negatives")
    bags, cfg = build_bags(usable, noise, targets, taxonomy, tracks=opts.tracks, members=opts.ensemble)
    from birdsep.pretrained import portable, resolve

    cfg = replace(cfg, embedding=opts.embeddings, separator=portable(resolve(opts.separator)) if opts.tracks else None)
    n_noise = sum(len(fe) for fe in noise)
    training.say(f"{WHO} {len(usable)} recordings, {len(bags) - n_noise} windows"
                 + (f" × (mix + {bags.x.shape[1] - 1} tracks)" if opts.tracks else " (mix only)")
                 + f", {len(cfg.species)} species ({len(cfg.genus)} genera, {len(cfg.family)} families, "
                 f"{len(cfg.order)} orders), {len(noise)} noise files ({n_noise} windows); embeddings "
                 f"{embed_seconds:.0f} s ({cache.hits} cached, {cache.misses} computed)")

    budget = None if opts.minutes is None else opts.minutes * 60 - (time.monotonic() - began)
    if budget is not None and budget <= 0:
        training.say(f"{WHO} the --minutes budget went on the embeddings; each member trains {MIN_STEPS} steps")
    t_fit = time.monotonic()
    model = fit(cfg, bags, steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed,
                seconds=budget,
                progress=opts.progress)
    fit_seconds = time.monotonic() - t_fit
    H.save(model, out)
    log.write()
    training.write_run(run_file, {
        "format_version": files.FORMAT_VERSION, "kind": H.KIND, "data": os.path.abspath(data),
        "options": {k: v for k, v in asdict(opts).items() if k != "augment"},
        "bags": len(bags), "instances": int(bags.x.shape[1]), "noise_windows": n_noise,
        "skipped": log.lines, "seconds": {"embeddings": round(embed_seconds, 1), "heads": round(fit_seconds, 1)},
        "cache": {"folder": str(cache.folder), "hits": cache.hits, "misses": cache.misses}})
    training.say(f"{WHO} wrote {out / files.WEIGHTS_NAME} and {out / files.CONFIG_NAME} "
                 f"(heads {fit_seconds:.0f} s, {time.monotonic() - began:.0f} s in all)"
                 + (f"; {len(log.lines)} file(s) skipped, listed in {log.path}" if log.lines else ""))
    return out

