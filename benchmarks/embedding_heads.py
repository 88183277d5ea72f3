"""Do heads trained on the mix and its separated tracks beat heads trained on the mix alone, and
BirdNET-Analyzer's recipe, on BirdNET embeddings of held-out recordings? Which use of the tracks
(multiple-instance pooling, the mix kept as a labelled instance, tracks as negatives, tracks as
plain copies; scored on the mix, the paper's max or the ``gain`` rule) is chosen on validation?

Data: every species with at least two recordings in ``xc/`` and ``xc_extra/`` together (its
recordings in that order); distractors: recordings of the other species of both folders
(``--distractors`` of them, drawn with a fixed seed), never trained on: a classifier that fires
on them loses precision. ``--noise`` folders give all-negative bags for every method.

Protocol (nested cross-validation by recording; nothing is chosen on a test recording):

- outer folds: the j-th recording of each species is held out in fold j mod ``--folds`` (its
  species' other recordings train), and distractor d in fold d mod ``--folds``; every recording
  is held out exactly once and the held-out scores of all folds are pooled;
- inner folds, inside each outer fold's training recordings: a species with at least two of
  them has its j-th training recording in validation fold j mod 2 (the others train; a species
  with one training recording always trains), with the other outer folds' distractors as
  validation distractors. Each variant's validation window cmAP (the pooled scores of both
  inner folds) picks, per outer fold, the variant that is then trained on all of that fold's
  training recordings and scored on its held-out ones (``selected``).

Units: the paper's activity windows (up to ``--max-windows`` per recording, 3 s, BirdNET's
input), embedded on the mix and on the shipped separator's M tracks (as they are, ``raw``, and
as ``classify --mode mix+separated`` hears them, the mixture 15 dB under each track, ``heard``),
from birdsep's embedding cache (the first run computes them; later runs take seconds).

Variants (same embeddings, same training windows; the paper's heads: species, genus, family,
order, bird; label smoothing 0.1; taxonomy losses × 0.1):

- training: ``mix`` (the mix alone), or the mix and its tracks with a :class:`MilSpec`: ``max``
  (multiple-instance, the best instance), ``lse r=5`` (log-mean-exp), ``noisy-or``, ``each``
  (every track labelled like the mix), ``mix-anchored 0.5 + max|lse`` (the mix always labelled,
  half the weight; the pooled bag the other half), ``tracks as negatives`` (the mix labelled,
  the tracks only negatives for the species absent from the recording);
- scoring: ``mix`` (the heads on the mix), ``max`` (paper §2.5, max over mix and tracks) or
  ``gain`` (birdsep's default ``mix+separated`` rule, :data:`birdsep.combination.DEFAULT`: the
  mix's logit raised by what the best track says above it), through
  :func:`birdsep.combination.combine`;
- ``analyzer``: BirdNET-Analyzer's custom-classifier recipe on the mix: one hidden layer (1024
  ReLU units), species head only, plain BCE, batch 32, learning rate 0.001 with cosine decay,
  50 epochs (its documented defaults besides the hidden layer);
- ``birdnet``: BirdNET V2.4's own logits (its dense layer on the same embedding), for the species
  it knows (the others score 0).

Reported: each variant's validation window cmAP (mean over outer folds) and held-out window cmAP;
then per method the held-out window cmAP, lwlrap, clip top-1 and clip cmAP (a recording's score
for a species is its highest window's), with 95 % bootstrap intervals over held-out recordings;
the same window cmAP per outer fold (each fold scored by its own heads: where the folds choose
different variants, pooled scores mix heads of different calibration) and the paired
differences ``selected`` − ``mix`` and against ``analyzer``, pooled and as a mean over folds.

    python benchmarks/embedding_heads.py --noise ../shared/data/noise --steps 1000
    python benchmarks/embedding_heads.py --species 4 --distractors 6 --max-windows 1 --steps 100 --reps 100 \\
        --inputs raw   # smoke run

Results (``results/embedding_heads.txt``, the first command, 22 species, 120 held-out recordings):
no use of the tracks beats the mix alone on validation (best 0.556 against 0.557); held out, per
fold, the chosen variant − mix −0.002 [−0.033, +0.031], mix − BirdNET-Analyzer's recipe +0.007
[−0.026, +0.039], BirdNET itself 0.837 against the heads' 0.767.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from birdsep import combination, metrics  # noqa: E402
from birdsep.classification import embeddings as E  # noqa: E402
from birdsep.classification import heads as H  # noqa: E402
from birdsep.classification.data import LabelledRecording  # noqa: E402
from birdsep.classification.heads_train import build_bags, fit, instances  # noqa: E402
from birdsep.errors import AudioError  # noqa: E402
from birdsep.files import find_audio  # noqa: E402
from birdsep.taxonomy import Taxonomy, normalise  # noqa: E402

DATA = REPO.parent / "shared" / "data"
#: What the classifier hears for each track: as separated, or as ``classify --mode mix+separated`` does.
INPUTS = {"raw": None, "heard": combination.DEFAULT.input}
SPECS = (H.MilSpec("max"), H.MilSpec("lse", r=5.0), H.MilSpec("noisy-or"), H.MilSpec("each"),
         H.MilSpec("max", anchor=0.5), H.MilSpec("lse", r=5.0, anchor=0.5), H.MilSpec("max", anchor=1.0))
RULES = {"max": combination.PAPER, "gain": combination.DEFAULT}


def analyzer_loss(logits, targets, masks):
    """BirdNET-Analyzer's loss: plain BCE of the species head on the mix (instance 0)."""
    z, y, m = logits["species"][:, 0], targets["species"].to(torch.float32), masks["species"].to(torch.float32)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    loss = (bce * m).sum() / m.sum().clamp(min=1.0)
    return loss, {"species": loss}


@dataclass(frozen=True)
class Variant:
    """How heads are trained (``spec`` None: the mix alone; ``hidden``: BirdNET-Analyzer's
    recipe) and scored (``rule``: mix, max or gain; ``inputs``: which track embeddings)."""

    train: str
    rule: str = "mix"
    spec: H.MilSpec | None = None
    inputs: str = "raw"

    @property
    def name(self) -> str:
        if self.rule == "mix":
            return self.train
        return f"{self.train}; scored {self.rule}" + (f" on {self.inputs} tracks" if self.spec is None else "")


def variants(inputs: list[str]) -> list[Variant]:
    out = [Variant("mix")] + [Variant("mix", r, inputs=i) for i in inputs for r in RULES]
    for i in inputs:
        for spec in SPECS:
            out += [Variant(f"{i} tracks, {spec.name}", r, spec, i) for r in ("mix", *RULES)]
    return out


# ---------------------------------------------------------------------------------------- data


def recordings(data: Path, n_species: int | None, n_distractors: int):
    """(species, {species: [recordings]}, distractor recordings (primary ''))."""
    by: dict[str, list[Path]] = {}
    for folder in ("xc", "xc_extra"):
        for sub in sorted(p for p in (data / folder).iterdir() if p.is_dir()):
            by.setdefault(sub.name, []).extend(f for f, _ in find_audio([sub]))
    species = sorted(s for s, fs in by.items() if len(fs) >= 2)
    species = species[:n_species] if n_species else species
    others = sorted(f for s, fs in by.items() if s not in species for f in fs)
    pick = np.random.default_rng(0).permutation(len(others))[:n_distractors]
    return (species, {s: [LabelledRecording(f, s) for f in by[s]] for s in species},
            [LabelledRecording(others[i], "") for i in sorted(pick)])


def split(recs: dict[str, list], folds: int, fold: int) -> tuple[list, list]:
    """(train, held) of one fold: the j-th recording of a species is held out in fold j mod folds;
    a species keeps every recording for training where it has only one."""
    train, held = [], []
    for rs in recs.values():
        for j, r in enumerate(rs):
            (held if len(rs) > 1 and j % folds == fold else train).append(r)
    return train, held


def embed_all(recs, embedder, cache, separation, max_windows, inputs) -> dict:
    """{recording path: {input: FileEmbeddings}} for every usable recording."""
    out = {}
    for r in recs:
        try:
            fes = {i: E.embed_file(r.path, embedder, cache, separation=separation, max_windows=max_windows,
                                   track_input=INPUTS[i]) for i in inputs}
        except AudioError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            continue
        if len(next(iter(fes.values()))):
            out[r.path] = fes
    return out


def birdnet_columns(species: list[str]) -> list[int | None]:
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


# ---------------------------------------------------------------------------------------- one fold


class Trainer:
    """Fits (and remembers) the heads of every training variant on one training set."""

    def __init__(self, a, species, noise, tax):
        self.a, self.species, self.noise, self.tax = a, species, noise, tax
        self.seconds: dict[str, float] = {}

    def fit(self, train, emb, v: Variant) -> H.Heads:
        """``train`` recordings, ``emb`` their embeddings → heads of variant ``v``'s training."""
        a = self.a
        usable = [(r, emb[r.path][v.inputs]) for r in train if r.path in emb]
        noise = [fe[v.inputs] for fe in self.noise]
        tracks = v.spec is not None
        bags, cfg = build_bags(usable, noise, self.species, self.tax, tracks=tracks, members=a.ensemble)
        t = time.monotonic()
        if v.train == "analyzer":
            cfg = H.HeadsConfig(species=cfg.species, hidden=1024)
            model = fit(cfg, bags, steps=50 * math.ceil(len(bags) / 32), batch_size=32, lr=1e-3, weight_decay=0.0,
                        loss_fn=analyzer_loss, progress=False)
        else:
            model = fit(cfg, bags, steps=a.steps, batch_size=a.batch_size, lr=a.lr, progress=False,
                        loss_fn=functools.partial(H.mil_loss, spec=v.spec or H.MIL_DEFAULT))
        self.seconds[v.train] = self.seconds.get(v.train, 0.0) + time.monotonic() - t
        return model


def windows(held, emb, species, inputs):
    """Held-out windows: {input: (W, I, D)}, truth (W, S), recording of each (W,)."""
    held = [r for r in held if r.path in emb]
    x = {i: np.concatenate([instances(emb[r.path][i], True) for r in held]) for i in inputs}
    y = np.concatenate([np.tile([r.primary == s for s in species], (len(emb[r.path][inputs[0]]), 1))
                        for r in held]).astype(int)
    group = np.concatenate([[str(r.path)] * len(emb[r.path][inputs[0]]) for r in held])
    return x, y, group


def score(model: H.Heads, x: np.ndarray, rule: str) -> np.ndarray:
    """x (W, I, D) mix + tracks → (W, S) species scores by ``rule`` (mix, or a combination rule)."""
    with torch.no_grad():
        z = model(torch.from_numpy(x))["species"].numpy()  # (W, I, S)
    p = combination.sigmoid(z)
    if rule == "mix":
        return p[:, 0]
    return combination.combine(RULES[rule], "mix+separated", p[:, 0], p[:, 1:], np.zeros(p.shape[:2])[:, 1:])[0]


def run_fold(trainer: Trainer, vs: list[Variant], train, held, emb, inputs) -> dict[str, np.ndarray]:
    """Every variant trained on ``train`` and scored on ``held``: {variant name: (W, S)}."""
    x, _, _ = windows(held, emb, trainer.species, inputs)
    models: dict[tuple, H.Heads] = {}
    out = {}
    for v in vs:
        key = (v.train, v.spec, v.inputs if v.spec else "raw")
        if key not in models:
            models[key] = trainer.fit(train, emb, v)
        out[v.name] = score(models[key], x[v.inputs], v.rule)
    return out


def diagnose(trainer: Trainer, train, held, emb, inputs) -> list[str]:
    """Why plain MIL loses, on one fold: where the max puts a training bag's label, and what the
    mix is taught. Lines of text."""
    lines = []
    for i in inputs:
        usable = [(r, emb[r.path][i]) for r in train if r.path in emb]
        bags, _ = build_bags(usable, [], trainer.species, trainer.tax, tracks=True)
        xh, yh, _ = windows(held, emb, trainer.species, [i])
        for v in (Variant("mix"), Variant(f"{i} tracks, max", spec=H.MilSpec("max"), inputs=i),
                  Variant(f"{i} tracks, mix-anchored", spec=H.MilSpec("max", anchor=0.5), inputs=i)):
            model = trainer.fit(train, emb, v)
            with torch.no_grad():
                z = model(bags.x)["species"].numpy()  # (B, I, S)
                zh = model(torch.from_numpy(xh[i]))["species"].numpy()  # (W, I, S)
            pos = bags.targets["species"].numpy() > 0  # (B, S)
            top = z.argmax(axis=1)[pos]  # the instance the max scores for each positive entry
            hp = yh > 0
            lines.append(f"{v.name}: training positives, best instance the mix {np.mean(top == 0):.0%}, a track "
                         f"{np.mean(top > 0):.0%}; mean logit of the labelled species on the mix "
                         f"{z[:, 0][pos].mean():+.2f}, on its best track {z[:, 1:].max(1)[pos].mean():+.2f}; held out: mix logit of the true "
                         f"species {zh[:, 0][hp].mean():+.2f}, of the others {zh[:, 0][~hp].mean():+.2f}")
    return lines


# ---------------------------------------------------------------------------------------- report


def interval(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    return f"[{np.percentile(v, 2.5):+.3f}, {np.percentile(v, 97.5):+.3f}]" if len(v) else "[n/a]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--species", type=int, default=None, help="first N species only (smoke runs)")
    p.add_argument("--distractors", type=int, default=60, help="held-out recordings of other species")
    p.add_argument("--noise", nargs="*", default=[], help="noise folders (all-negative bags)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
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

    species, recs, distractors = recordings(a.data, a.species, a.distractors)
    embedder = E.BirdNETEmbedder(threads=a.threads)
    separation = E.Separation.load(a.separator)
    cache = E.EmbeddingCache(a.cache or E.default_cache_dir())
    everything = [r for rs in recs.values() for r in rs] + distractors
    emb = embed_all(everything, embedder, cache, separation, a.max_windows, a.inputs)
    noise = list(embed_all([LabelledRecording(f, "") for f, _ in find_audio(a.noise)], embedder, cache,
                           separation, a.max_windows, a.inputs).values()) if a.noise else []
    t_embed = time.monotonic() - t0
    trainer = Trainer(a, species, noise, Taxonomy.load())
    vs = variants(a.inputs)
    candidates = [v for v in vs if v.name != "mix"]  # "heads on mix + tracks": every use of the tracks
    fixed = [Variant("mix"), Variant("analyzer")]

    val_cmap = {v.name: [] for v in vs}
    chosen, pooled, truth, groups = [], {}, [], []
    for k in range(a.folds):
        train, held = split(recs, a.folds, k)
        held += [d for j, d in enumerate(distractors) if j % a.folds == k]
        # Validation inside the training recordings: two inner folds, the other folds' distractors.
        train_by = {s: [r for r in train if r.primary == s] for s in species}
        val_scores, val_y = {v.name: [] for v in vs}, []
        for f in range(2):
            itrain, ival = split(train_by, 2, f)
            ival += [d for j, d in enumerate(distractors) if j % a.folds != k]
            if not any(r.primary for r in ival):
                continue
            for name, s in run_fold(trainer, vs, itrain, ival, emb, a.inputs).items():
                val_scores[name].append(s)
            val_y.append(windows(ival, emb, species, a.inputs)[1])
        vy = np.concatenate(val_y)
        for v in vs:
            val_cmap[v.name].append(metrics.score_all(vy, np.concatenate(val_scores[v.name]), a.min_positives).cmap)
        best = max(candidates, key=lambda v: val_cmap[v.name][-1])
        chosen.append(best)
        out = run_fold(trainer, vs + fixed[1:], train, held, emb, a.inputs)
        out["selected"] = out[best.name]
        _, y, g = windows(held, emb, species, a.inputs)
        for name, s in out.items():
            pooled.setdefault(name, []).append(s)
        truth.append(y)
        groups.append(g)
        print(f"fold {k + 1}/{a.folds}: train {len(train)} recordings, held out {len(held)}; chosen on validation: "
              f"{best.name} ({val_cmap[best.name][-1]:.3f}); {time.monotonic() - t0:.0f} s", file=sys.stderr)

    train, held = split(recs, a.folds, 0)
    why = diagnose(trainer, train, held + [d for j, d in enumerate(distractors) if j % a.folds == 0], emb, a.inputs)
    y = np.concatenate(truth)
    group = np.concatenate(groups)
    scores = {name: np.concatenate(s) for name, s in pooled.items()}
    cols = birdnet_columns(species)
    x_mix = np.concatenate([emb[Path(g_)][a.inputs[0]].mix for g_ in dict.fromkeys(group)])  # (W, D)
    bn = x_mix @ embedder.weight.T + embedder.bias  # (W, 6522) BirdNET's own logits
    bn_name = f"birdnet ({sum(c is not None for c in cols)}/{len(species)} species known)"
    scores[bn_name] = np.stack([bn[:, c] if c is not None else np.full(len(bn), -30.0) for c in cols], axis=1)

    n_train = sum(len(rs) for rs in recs.values())
    print(f"{len(species)} species, {n_train} recordings of them ({sum(len(rs) > 2 for rs in recs.values())} with "
          f"3 or more), {len(distractors)} distractor recordings; {a.folds} outer folds, every recording held out "
          f"once: {len(set(group))} held-out recordings, {len(y)} windows ({int((~y.any(1)).sum())} of "
          f"distractors); {sum(len(fe[a.inputs[0]]) for fe in noise)} noise windows in every training set")
    print(f"embeddings {t_embed:.0f} s ({cache.hits} cached, {cache.misses} computed); training (all folds) "
          + ", ".join(f"{k_} {v_:.0f} s" for k_, v_ in trainer.seconds.items() if k_ in ("mix", "analyzer")))
    print()
    print("Variants (window cmAP). Validation: inside each outer fold's training recordings, mean over folds; "
          "held out: pooled outer folds (for the record; nothing was chosen on it).")
    print(f"rule 'gain': {combination.DEFAULT.name}")
    print()
    print("| variant | validation | held out |")
    print("|---|---|---|")
    for v in vs:
        ho = metrics.score_all(y, scores[v.name], a.min_positives).cmap
        print(f"| {v.name} | {np.mean(val_cmap[v.name]):.3f} | {ho:.3f} |")
    print()
    print("chosen on validation, per outer fold: " + "; ".join(f"{k + 1}: {v.name}" for k, v in enumerate(chosen)))
    print()
    print("Where the labels go (outer fold 1, training bags; logits of the species head):")
    print()
    for line in why:
        print(f"- {line}")
    print()
    report = ["mix", "selected", "analyzer", bn_name] + [v.name for v in dict.fromkeys(chosen)]
    report = list(dict.fromkeys(report))
    boot = metrics.bootstrap(y, {n: scores[n] for n in report}, group, reps=a.reps, min_positives=a.min_positives)
    clips = list(dict.fromkeys(group))
    at = {c: np.flatnonzero(group == c) for c in clips}
    clip_y = np.stack([y[at[c][0]] for c in clips])
    labelled = clip_y.any(1)
    rows = []
    print("| method | window cmAP [95 %] | lwlrap [95 %] | clip top-1 | clip cmAP |")
    print("|---|---|---|---|---|")
    for name in report:
        s = scores[name]
        w = metrics.score_all(y, s, a.min_positives)
        cs = np.stack([s[at[c]].max(0) for c in clips])
        top1 = float((cs[labelled].argmax(1) == clip_y[labelled].argmax(1)).mean())
        lo, hi = np.percentile(boot[name][:, 0], [2.5, 97.5])
        llo, lhi = np.percentile(boot[name][:, 1], [2.5, 97.5])
        rows.append({"method": name, "window_cmap": w.cmap, "lwlrap": w.lwlrap, "clip_top1": top1,
                     "clip_cmap": metrics.cmap(clip_y, cs, 1), "cmap_species": w.cmap_species})
        print(f"| {name} | {w.cmap:.3f} [{lo:.3f}, {hi:.3f}] | {w.lwlrap:.3f} [{llo:.3f}, {lhi:.3f}] | {top1:.3f} "
              f"| {rows[-1]['clip_cmap']:.3f} |")
    print()
    # Per outer fold: each fold's held-out windows scored by its own heads (no pooling of scores
    # of heads trained on other recordings, whose calibrations differ), species with ≥ 1 positive
    # window in the fold; the mean over folds, bootstrap over recordings within each fold.
    bounds = np.cumsum([0] + [len(t) for t in truth])
    per_fold = {n: [] for n in report}
    fold_boot = []
    for k in range(a.folds):
        at_k = slice(bounds[k], bounds[k + 1])
        sk = {n: scores[n][at_k] for n in report}
        for n in report:
            per_fold[n].append(metrics.score_all(y[at_k], sk[n], 1).cmap)
        fold_boot.append(metrics.bootstrap(y[at_k], sk, group[at_k], reps=a.reps, seed=k, min_positives=1))
    mean_boot = {n: np.mean([fb[n] for fb in fold_boot], axis=0) for n in report}  # (reps, 4)
    print("Per outer fold (window cmAP over species with ≥ 1 positive window in the fold; each fold scored by "
          "its own heads):")
    print()
    print("| method | " + " | ".join(f"fold {k + 1}" for k in range(a.folds)) + " | mean [95 %] |")
    print("|---|" + "---|" * (a.folds + 1))
    for n in report:
        lo, hi = np.percentile(mean_boot[n][:, 0], [2.5, 97.5])
        print(f"| {n} | " + " | ".join(f"{c:.3f}" for c in per_fold[n]) + f" | {np.mean(per_fold[n]):.3f} "
              f"[{lo:.3f}, {hi:.3f}] |")
    print()
    diffs = {}
    for a_, b_ in (("selected", "mix"), ("selected", "analyzer"), ("mix", "analyzer")):
        d = mean_boot[a_][:, 0] - mean_boot[b_][:, 0]
        point = np.mean(per_fold[a_]) - np.mean(per_fold[b_])
        diffs[f"{a_} - {b_}, fold mean"] = (point, interval(d))
        print(f"window cmAP, mean over folds, {a_} − {b_}: {point:+.3f} {interval(d)} (paired bootstrap over "
              "held-out recordings within folds)")
    for a_, b_ in (("selected", "mix"), ("selected", "analyzer"), ("mix", "analyzer")):
        d = boot[a_][:, 0] - boot[b_][:, 0]
        point = (metrics.score_all(y, scores[a_], a.min_positives).cmap
                 - metrics.score_all(y, scores[b_], a.min_positives).cmap)
        diffs[f"{a_} - {b_}"] = (point, interval(d))
        print(f"window cmAP, pooled, {a_} − {b_}: {point:+.3f} {interval(d)} (paired bootstrap over held-out "
              "recordings)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "validation": val_cmap, "chosen": [v.name for v in chosen],
                                      "differences": diffs, "seconds": trainer.seconds,
                                      "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
