"""Heads trained on Xeno-canto recordings, scored on real soundscapes: the NIPS4B field clips
(France, Spain; many overlapping birds, insects) for the species the heads were trained on.

Training: every recording of every species in ``xc/`` and ``xc_extra/`` (204 species, weak
labels by folder), with ``--noise`` recordings as all-negative bags; the heads of
``embedding_heads.py`` trained on the mix (``mix``), on the mix and its tracks with the loss and
scoring rule given by ``--variant`` (chosen there on validation), BirdNET-Analyzer's recipe, and
BirdNET V2.4 itself for reference. Evaluation: the NIPS4B ``train/`` clips (their NIPS4Bplus
annotations give each clip's species; a clip without an annotation file has none), a clip's
score for a species is its best activity window's (clips are 1–5 s: one or two 3 s windows).
The species scored are those whose NIPS4B code (first three letters of genus and species, e.g.
``Erirub``) is one of the trained species' (old genus names included, ``--codes``), with at
least ``--min-positives`` clips. Clip cmAP with a 95 % bootstrap interval over clips, and paired
differences.

    python benchmarks/heads_nips4b.py --noise ../shared/data/noise --variant "heard tracks, each"

Results: ``results/heads_nips4b.txt``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import embedding_heads as EH  # noqa: E402
from birdsep import metrics  # noqa: E402
from birdsep.classification import embeddings as E  # noqa: E402
from birdsep.classification.data import LabelledRecording  # noqa: E402
from birdsep.files import find_audio  # noqa: E402
from birdsep.taxonomy import Taxonomy  # noqa: E402

#: NIPS4B code of each trained species it has (the codes use the genera of 2013: Sylvia, not Curruca).
CODES = {"european_robin": "Erirub", "subalpine_warbler": "Sylcan", "sardinian_warbler": "Sylmel",
         "common_nightingale": "Lusmeg", "blackcap": "Sylatr", "house_sparrow": "Pasdom",
         "eurasian_collared_dove": "Strdec", "red_crossbill": "Loxcur"}


def clips(folder: Path) -> tuple[list[Path], list[set[str]]]:
    """NIPS4B train clips and the species codes annotated in each (empty: no annotation file)."""
    paths = sorted((folder / "train").glob("*.ogg"))
    codes = []
    for p in paths:
        ann = folder / "annotations" / f"{p.stem}.csv"
        rows = list(csv.DictReader(ann.open(encoding="utf-8"))) if ann.is_file() else []
        codes.append({r["label"].split("_")[0] for r in rows})
    return paths, codes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=EH.DATA)
    p.add_argument("--noise", nargs="*", default=[])
    p.add_argument("--variant", default="heard tracks, each",
                   help="the tracks variant (a name from embedding_heads.py's table)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-windows", type=int, default=5)
    p.add_argument("--min-positives", type=int, default=5)
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--cache", default=None)
    p.add_argument("--separator", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.monotonic()

    chosen = next(v for v in EH.variants(list(EH.INPUTS)) if v.name == a.variant)
    inputs = ["raw"] if chosen.inputs == "raw" else ["raw", chosen.inputs]
    species, recs, others = EH.recordings(a.data, None, 10 ** 6)
    train = [r for rs in recs.values() for r in rs] + [LabelledRecording(d.path, d.path.parent.name) for d in others]
    species = sorted({r.primary for r in train})
    paths, truth_codes = clips(a.data / "soundscapes" / "nips4b")
    test = [LabelledRecording(q, "") for q in paths]

    embedder = E.BirdNETEmbedder(threads=a.threads)
    separation = E.Separation.load(a.separator)
    cache = E.EmbeddingCache(a.cache or E.default_cache_dir())
    emb = EH.embed_all(train, embedder, cache, separation, a.max_windows, inputs)
    tracks = chosen.rule != "mix"  # the clips' tracks are needed only to score with them
    held = EH.embed_all(test, embedder, cache, separation if tracks else None, a.max_windows,
                        [chosen.inputs] if tracks else ["raw"])
    noise = list(EH.embed_all([LabelledRecording(f, "") for f, _ in find_audio(a.noise)], embedder, cache,
                              separation, a.max_windows, inputs).values()) if a.noise else []
    t_embed = time.monotonic() - t0

    trainer = EH.Trainer(a, species, noise, Taxonomy.load())
    scored = [s for s in species if s in CODES]
    cols = [species.index(s) for s in scored]
    kept = [k for k, q in enumerate(paths) if q in held]
    y = np.array([[CODES[s] in truth_codes[k] for s in scored] for k in kept], int)  # (clips, S)
    scores = {}
    for v in (EH.Variant("mix"), chosen, EH.Variant("analyzer")):
        model = trainer.fit(train, emb, v)
        s = []
        for k in kept:
            fe = held[paths[k]]
            key = v.inputs if v.rule != "mix" else next(iter(fe))  # the mix alone: any entry's mix
            x = EH.instances(fe[key], v.rule != "mix")  # (K, I, D)
            s.append(EH.score(model, x, v.rule)[:, cols].max(0))
        scores[v.name] = np.stack(s)  # (clips, S)
    bcols = EH.birdnet_columns(scored)
    bn = []
    for k in kept:
        fe = next(iter(held[paths[k]].values()))
        z = fe.mix @ embedder.weight.T + embedder.bias  # (K, 6522)
        bn.append(np.array([z[:, c].max() if c is not None else -30.0 for c in bcols]))
    scores["birdnet"] = np.stack(bn)

    print(f"trained on {len(train)} recordings of {len(species)} species (+ {len(noise)} noise files); NIPS4B: "
          f"{len(kept)} clips, scored for {len(scored)} trained species "
          + ", ".join(f"{CODES[s]} {int(y[:, j].sum())}" for j, s in enumerate(scored))
          + f" positive clips; embeddings {t_embed:.0f} s ({cache.hits} cached, {cache.misses} computed)")
    print()
    boot = metrics.bootstrap(y, scores, np.arange(len(y)), reps=a.reps, min_positives=a.min_positives)
    print("| method | clip cmAP [95 %] | " + " | ".join(CODES[s] for s in scored) + " |")
    print("|---|---|" + "---|" * len(scored))
    for name, s in scores.items():
        aps = [metrics.average_precision(y[:, j], s[:, j]) for j in range(len(scored))]
        lo, hi = np.percentile(boot[name][:, 0], [2.5, 97.5])
        cm = metrics.cmap(y, s, a.min_positives)
        print(f"| {name} | {cm:.3f} [{lo:.3f}, {hi:.3f}] | " + " | ".join(f"{ap:.2f}" for ap in aps) + " |")
    print()
    for a_, b_ in ((chosen.name, "mix"), ("mix", "analyzer"), (chosen.name, "analyzer")):
        d = boot[a_][:, 0] - boot[b_][:, 0]
        point = metrics.cmap(y, scores[a_], a.min_positives) - metrics.cmap(y, scores[b_], a.min_positives)
        print(f"clip cmAP, {a_} − {b_}: {point:+.3f} {EH.interval(d)} (paired bootstrap over clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
