"""How well does a classifier trained for a few CPU minutes on part of Xeno-canto recognise
held-out recordings of the same species?

For every species of ``xc/`` with at least two recordings, the highest-numbered recording is
held out and the rest are used for training (``birdsep train-classifier``, with the noise
folders for the noise augmentations). Each held-out clip is cut into consecutive 5 s windows
(as ``classify-clips`` does); a clip's score for a species is the maximum window probability.

Reported: clip top-1 (argmax = true species), clip cmAP (mean over species of the average
precision of ranking the held-out clips; one positive per species here, so this is the mean
reciprocal rank of the true clip), and window cmAP over species with at least 5 positive
windows (the paper's rule). Chance levels are printed beside them.

    python benchmarks/classifier_xc.py --steps 200 --threads 1 --lr 2e-3 \
        --no-augment mix --no-augment noise-only --no-augment lowpass

Measured (2-core x86_64 shared with another training job, torch 2.14.1, 1 thread, 200 steps
of batch 8 from scratch, 8.4 min of training; crop, gain and noise augmentations on; 36
training / 21 held-out recordings of 21 species):

    | metric                                     | value | chance |
    | clip top-1                                 | 0.143 | 0.048  |
    | clip cmAP (1 positive / species)           | 0.370 | 0.174  |
    | window cmAP (9 species with >= 5 windows)  | 0.354 | 0.085  |

A few CPU minutes take a randomly initialised EfficientNet-B0 only this far; the paper trains
for far longer on GPUs.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def split(xc: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    train, test = [], []
    for d in sorted(p for p in xc.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.mp3"), key=lambda f: int(re.findall(r"\d+", f.stem)[-1]))
        if len(files) < 2:
            continue
        train += [(f, d.name) for f in files[:-1]]
        test.append((files[-1], d.name))
    return train, test


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_classifier_xc")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--lr", default="1e-3")
    ap.add_argument("--no-augment", action="append", default=[], metavar="NAME",
                    help="passed on to train-classifier (repeatable)")
    args = ap.parse_args()
    if not (args.data / "xc").is_dir():
        print(f"no data at {args.data / 'xc'}", file=sys.stderr)
        return 2
    train, test = split(args.data / "xc")
    args.out.mkdir(parents=True, exist_ok=True)
    labels = args.out / "train.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "primary"])
        w.writerows([str(f), s] for f, s in train)
    run = args.out / "run"
    cmd = [sys.executable, "-m", "birdsep.cli", "train-classifier", str(labels), "--out", str(run),
           "--noise", str(args.data / "noise"), str(args.data / "other_sounds"), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--ensemble", str(args.ensemble),
           "--checkpoint-every", "50", "--lr", args.lr, "--no-progress"] + (["--resume"] if args.resume else [])
    for name in args.no_augment:
        cmd += ["--no-augment", name]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    train_s = time.time() - t0

    import torch
    from sklearn.metrics import average_precision_score

    from birdsep.audio import load
    from birdsep.classification.infer import window_logits
    from birdsep.classification.model import load as load_model

    torch.set_num_threads(args.threads)
    model = load_model(run)
    species = list(model.cfg.species)
    clip_scores, clip_truth, win_scores, win_truth = [], [], [], []
    for f, s in test:
        x, _ = load(f, model.cfg.sample_rate)
        logits, _ = window_logits(model, x)
        p = 1 / (1 + np.exp(-logits["species"]))
        clip_scores.append(p.max(axis=0))
        truth = np.zeros(len(species))
        truth[species.index(s)] = 1
        clip_truth.append(truth)
        win_scores.append(p)
        win_truth.append(np.repeat(truth[None], len(p), axis=0))
    S, Y = np.array(clip_scores), np.array(clip_truth)
    WS, WY = np.concatenate(win_scores), np.concatenate(win_truth)
    top1 = float(np.mean(S.argmax(1) == Y.argmax(1)))
    clip_cmap = float(np.mean([average_precision_score(Y[:, j], S[:, j]) for j in range(len(species)) if Y[:, j].sum()]))
    keep = [j for j in range(len(species)) if WY[:, j].sum() >= 5]
    win_cmap = float(np.mean([average_precision_score(WY[:, j], WS[:, j]) for j in keep]))
    win_chance = float(np.mean([WY[:, j].mean() for j in keep]))
    clip_chance = float(np.mean([np.mean([1 / r for r in range(1, len(test) + 1)])]))

    shown = " ".join(shlex.quote(c) for c in ["birdsep"] + cmd[3:])
    print()
    print(f"command: {shown}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} thread(s); training wall time {train_s / 60:.1f} min")
    print(f"data: {len(train)} training recordings, {len(test)} held-out recordings, {len(species)} species")
    print()
    print("| metric | value | chance |")
    print("|---|---|---|")
    print(f"| clip top-1 | {top1:.3f} | {1 / len(species):.3f} |")
    print(f"| clip cmAP (1 positive / species) | {clip_cmap:.3f} | {clip_chance:.3f} |")
    print(f"| window cmAP ({len(keep)} species with >= 5 windows) | {win_cmap:.3f} | {win_chance:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
