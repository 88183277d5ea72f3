"""Do heads trained on the mix and its separated tracks (multiple-instance learning) beat heads
trained on the mix alone, and BirdNET-Analyzer's recipe, on BirdNET embeddings of held-out
recordings?

Data: every species of ``xc/`` with at least two recordings; the highest-numbered recording of
each is held out, the others train (the protocol of ``classifier_xc.py``). ``xc_extra/``
recordings of those species are held out too; ``--distractors N`` adds N ``xc_extra``
recordings of other species to the held-out set as windows of no target species (a classifier
that fires on them loses precision). ``--noise`` folders give all-negative bags for every method.

Units: the paper's activity windows (up to ``--max-windows`` per recording, 3 s, BirdNET's
input), embedded on the mix and on the shipped separator's M tracks, from birdsep's embedding
cache (the first run computes them; later runs take seconds).

Methods (same embeddings, same training windows):

- ``mix``: the paper's taxonomic heads (species, genus, family, order, bird; label smoothing
  0.1; taxonomy losses × 0.1) trained on the mix embeddings, scored on the mix;
- ``mix, max over tracks``: the same heads scored with the paper's §2.5 rule (max over the mix
  and every track);
- ``mil``: the heads trained with multiple-instance learning over {mix, tracks}, scored on the mix;
- ``mil, max over tracks``: the same, scored with the max rule;
- ``analyzer``: BirdNET-Analyzer's custom-classifier recipe on the mix embeddings: one hidden
  layer (1024 ReLU units), species head only, plain BCE, no label smoothing, no dropout, batch
  32, learning rate 0.001 with cosine decay, 50 epochs (its documented defaults besides the
  hidden layer);
- ``birdnet``: BirdNET V2.4's own logits (its dense layer on the same embedding), for the
  species it knows (the others score 0).

Reported per method: window cmAP (species with ≥ ``--min-positives`` positive windows),
lwlrap, clip top-1 and clip cmAP (a held-out recording's score for a species is its highest
window score), with 95 % bootstrap intervals over held-out recordings; then the paired
difference ``mil`` − ``mix`` (and with the max rule) with its interval.

    python benchmarks/embedding_heads.py --noise ../shared/data/noise --steps 2000
    python benchmarks/embedding_heads.py --species 3 --max-windows 1 --steps 100 --reps 100   # smoke run

Results (``results/embedding_heads.txt``, the first command above, 21 species, 36 training
recordings): window cmAP mix 0.846, mil 0.802 (mil − mix −0.043 [−0.097, +0.011]), BirdNET-Analyzer's
recipe 0.836, BirdNET itself 0.979 on the species it knows: on clean Xeno-canto recordings the tracks
do not help the heads yet.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from birdsep import metrics  # noqa: E402
from birdsep.classification import embeddings as E  # noqa: E402
from birdsep.classification import heads as H  # noqa: E402
from birdsep.classification.data import LabelledRecording  # noqa: E402
from birdsep.classification.heads_train import build_bags, fit, instances  # noqa: E402
from birdsep.errors import AudioError  # noqa: E402
from birdsep.files import find_audio  # noqa: E402
from birdsep.taxonomy import Taxonomy, normalise  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def analyzer_loss(logits, targets, masks):
    """BirdNET-Analyzer's loss: plain BCE of the species head on the mix (instance 0)."""
    z, y, m = logits["species"][:, 0], targets["species"].to(torch.float32), masks["species"].to(torch.float32)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    loss = (bce * m).sum() / m.sum().clamp(min=1.0)
    return loss, {"species": loss}


def recordings(data: Path, n_species: int | None, n_distractors: int):
    """(train, held-out) LabelledRecordings; held-out distractors have primary ''."""
    xc = data / "xc"
    species = sorted(p.name for p in xc.iterdir() if p.is_dir() and len(list(p.glob("*.mp3"))) >= 2)
    species = species[:n_species] if n_species else species
    train, held = [], []
    for s in species:
        files = sorted((xc / s).glob("*.mp3"))
        train += [LabelledRecording(f, s) for f in files[:-1]]
        held.append(LabelledRecording(files[-1], s))
    extra = data / "xc_extra"
    others = []
    for sub in sorted(p for p in extra.iterdir() if p.is_dir()):
        for f, _ in find_audio([sub]):
            (held.append(LabelledRecording(f, sub.name)) if sub.name in species else others.append(f))
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(others))[:n_distractors]:
        held.append(LabelledRecording(others[i], ""))
    return species, train, held


def embed(recs, embedder, cache, separation, max_windows):
    out = []
    for r in recs:
        try:
            fe = E.embed_file(r.path, embedder, cache, separation=separation, max_windows=max_windows)
        except AudioError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            continue
        if len(fe):
            out.append((r, fe))
    return out


def birdnet_columns(species: list[str], embedder: E.BirdNETEmbedder) -> list[int | None]:
    """Index of each species in BirdNET's labels (by scientific or common name), or None."""
    from birdsep.backends import birdnet_files
    from birdsep.taxonomy import split_label

    labels = birdnet_files()[1].read_text(encoding="utf-8").splitlines()
    by_name = {}
    for i, lab in enumerate(labels):
        sci, common = split_label(lab)
        by_name.setdefault(normalise(sci), i)
        by_name.setdefault(normalise(common), i)
    tax = Taxonomy.load()
    cols = []
    for s in species:
        sci = tax.lookup(s, warn=False).scientific_name
        cols.append(by_name.get(normalise(sci or "")) if sci else None)
        if cols[-1] is None:
            cols[-1] = by_name.get(normalise(s))
    return cols


def interval(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    return f"[{np.percentile(v, 2.5):.3f}, {np.percentile(v, 97.5):.3f}]" if len(v) else "[n/a]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--species", type=int, default=None, help="first N species only (smoke runs)")
    p.add_argument("--distractors", type=int, default=40, help="held-out xc_extra recordings of other species")
    p.add_argument("--noise", nargs="*", default=[], help="noise folders (all-negative bags)")
    p.add_argument("--max-windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000, help="steps of the paper's heads (batch --batch-size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--min-positives", type=int, default=5)
    p.add_argument("--cache", default=None, help="embedding cache (default birdsep's)")
    p.add_argument("--separator", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.monotonic()

    species, train_recs, held_recs = recordings(a.data, a.species, a.distractors)
    embedder = E.BirdNETEmbedder(threads=a.threads)
    separation = E.Separation.load(a.separator)
    cache = E.EmbeddingCache(a.cache or E.default_cache_dir())
    train = embed(train_recs, embedder, cache, separation, a.max_windows)
    held = embed(held_recs, embedder, cache, separation, a.max_windows)
    noise = [fe for _, fe in embed([LabelledRecording(f, "") for f, _ in find_audio(a.noise)], embedder, cache,
                                   separation, a.max_windows)] if a.noise else []
    t_embed = time.monotonic() - t0
    tax = Taxonomy.load()

    models, seconds = {}, {}
    for name, tracks in (("mix", False), ("mil", True)):
        bags, cfg = build_bags(train, noise, species, tax, tracks=tracks, members=a.ensemble)
        t = time.monotonic()
        models[name] = fit(cfg, bags, steps=a.steps, batch_size=a.batch_size, lr=a.lr, progress=False)
        seconds[name] = time.monotonic() - t
    bags, cfg = build_bags(train, noise, species, tax, tracks=False)
    cfg = H.HeadsConfig(species=cfg.species, hidden=1024)
    epochs_steps = 50 * math.ceil(len(bags) / 32)
    t = time.monotonic()
    models["analyzer"] = fit(cfg, bags, steps=epochs_steps, batch_size=32, lr=1e-3, weight_decay=0.0,
                             loss_fn=analyzer_loss, progress=False)
    seconds["analyzer"] = time.monotonic() - t

    # Held-out windows: (W, I, D) instances, (W, S) truth, (W,) recording of each.
    x = np.concatenate([instances(fe, True) for _, fe in held])
    y = np.concatenate([np.tile([r.primary == s for s in species], (len(fe), 1)) for r, fe in held]).astype(int)
    group = np.concatenate([[str(r.path)] * len(fe) for r, fe in held])
    with torch.no_grad():
        xt = torch.from_numpy(x)
        z = {k: m(xt)["species"].numpy() for k, m in models.items()}  # (W, I, S)
    scores = {"mix": z["mix"][:, 0], "mix, max over tracks": z["mix"].max(1), "mil": z["mil"][:, 0],
              "mil, max over tracks": z["mil"].max(1), "analyzer": z["analyzer"][:, 0]}
    cols = birdnet_columns(species, embedder)
    bn = x[:, 0] @ embedder.weight.T + embedder.bias  # (W, 6522) BirdNET's own logits
    scores[f"birdnet ({sum(c is not None for c in cols)}/{len(species)} species known)"] = np.stack(
        [bn[:, c] if c is not None else np.full(len(x), -30.0) for c in cols], axis=1)

    # Clip level: a recording's score is its best window's.
    clips = sorted(set(group))
    at = {c: np.flatnonzero(group == c) for c in clips}
    clip_y = np.stack([y[at[c][0]] for c in clips])
    boot = metrics.bootstrap(y, scores, group, reps=a.reps, min_positives=a.min_positives)
    rows = []
    for name, s in scores.items():
        w = metrics.score_all(y, s, a.min_positives)
        cs = np.stack([s[at[c]].max(0) for c in clips])
        labelled = clip_y.any(1)
        top1 = float((cs[labelled].argmax(1) == clip_y[labelled].argmax(1)).mean())
        rows.append({"method": name, "window_cmap": w.cmap, "window_cmap_95": interval(boot[name][:, 0]),
                     "lwlrap": w.lwlrap, "lwlrap_95": interval(boot[name][:, 1]), "clip_top1": top1,
                     "clip_cmap": metrics.cmap(clip_y, cs, 1), "cmap_species": w.cmap_species})
    print(f"{len(species)} species; train {len(train)} recordings ({sum(len(fe) for _, fe in train)} windows), "
          f"held out {len(held)} recordings ({len(x)} windows, {int((~y.any(1)).sum())} of distractors), "
          f"{sum(len(fe) for fe in noise)} noise windows; embeddings {t_embed:.0f} s "
          f"({cache.hits} cached, {cache.misses} computed); training "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print()
    print("| method | window cmAP [95 %] | lwlrap [95 %] | clip top-1 | clip cmAP |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['window_cmap']:.3f} {r['window_cmap_95']} | {r['lwlrap']:.3f} {r['lwlrap_95']} "
              f"| {r['clip_top1']:.3f} | {r['clip_cmap']:.3f} |")
    print()
    for a_, b_ in (("mil", "mix"), ("mil, max over tracks", "mix, max over tracks"), ("mil", "analyzer")):
        d = boot[a_][:, 0] - boot[b_][:, 0]
        point = metrics.score_all(y, scores[a_], a.min_positives).cmap - metrics.score_all(y, scores[b_], a.min_positives).cmap
        print(f"window cmAP, {a_} − {b_}: {point:+.3f} {interval(d)} (paired bootstrap over held-out recordings)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "seconds": seconds, "args": {k: str(v) for k, v in vars(a).items()}},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
