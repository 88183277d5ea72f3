"""Heads for sounds BirdNET does not have, from a handful of recordings: three NIPS4B insects
(a ground cricket, a cicada, a bush cricket; none of their genera is in BirdNET V2.4's 6,522
labels), trained with ``birdsep train-classifier --embeddings birdnet`` on ``--train`` clips of
each, and detected on the NIPS4B clips never trained on.

The first ``--train`` clips (by name) annotated with each insect go into one folder per insect
(symbolic links in ``--work``), beside the ``xc/`` bird species' folders (so that the heads also
know birds: a user adds classes to a bird classifier), trained with the CLI; ``--negatives``
NIPS4B clips without any of the three insects join the ``--noise`` recordings as negatives (from
the same recorders: without them the heads learn the recorders' sound as the insects' and fire
on every NIPS4B clip). ``--no-birds``: the insect folders alone. Every
other annotated NIPS4B train clip is held out: a positive for an insect where its NIPS4Bplus
annotation has that insect, a negative otherwise (birds, other insects, empty clips). A clip's
score is its best activity window's (the heads on the mix, what ``classify --mode mix`` scores).

    python benchmarks/heads_new_class.py --noise ../shared/data/noise

Results: ``results/heads_new_class.txt``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import embedding_heads as EH  # noqa: E402
from birdsep import metrics  # noqa: E402
from birdsep.classification import embeddings as E  # noqa: E402
from birdsep.classification import heads as H  # noqa: E402
from birdsep.classification.data import LabelledRecording  # noqa: E402
from heads_nips4b import clips  # noqa: E402

#: NIPS4B code → the folder (class) name; BirdNET's labels have none of these genera.
INSECTS = {"Ptehey": "Pteronemobius heydenii", "Lyrple": "Lyristes plebejus", "Phofem": "Pholidoptera femorata"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=EH.DATA)
    p.add_argument("--noise", nargs="*", default=[])
    p.add_argument("--train", type=int, default=5, help="training clips per insect")
    p.add_argument("--work", type=Path, default=Path("/tmp/heads_new_class"))
    p.add_argument("--tracks", action="store_true", help="train with the tracks too (default: the mix)")
    p.add_argument("--negatives", type=int, default=15, help="NIPS4B clips without the insects, as negatives")
    p.add_argument("--birds", action=argparse.BooleanOptionalAction, default=True,
                   help="train the xc/ bird species beside the insects (default: on)")
    p.add_argument("--reps", type=int, default=1000)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    paths, codes = clips(a.data / "soundscapes" / "nips4b")
    folder = a.work / "insects"
    shutil.rmtree(folder, ignore_errors=True)
    train = set()
    for code, name in INSECTS.items():
        d = folder / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for q in [q for q, c in zip(paths, codes) if code in c][: a.train]:
            (d / q.name).unlink(missing_ok=True)
            (d / q.name).symlink_to(q)
            train.add(q)
    negatives = a.work / "negatives"
    shutil.rmtree(negatives, ignore_errors=True)
    negatives.mkdir(parents=True)
    for q in [q for q, c in zip(paths, codes) if c and not c & set(INSECTS)][: a.negatives]:
        (negatives / q.name).symlink_to(q)
        train.add(q)
    for sub in sorted(q for q in (a.data / "xc").iterdir() if q.is_dir()) if a.birds else []:
        if not (folder / sub.name).exists():
            (folder / sub.name).symlink_to(sub)
    run = a.work / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time
    cmd = ["birdsep", "train-classifier", str(folder), "--embeddings", "birdnet", "--out", str(run),
           "-q", "--tracks" if a.tracks else "--no-tracks"]
    noise = list(a.noise) + ([str(negatives)] if a.negatives else [])
    cmd += ["--noise", *noise] if noise else []
    print("$ " + " ".join(cmd))
    subprocess.run([sys.executable, "-m", "birdsep.cli", *cmd[1:]], check=True)
    t_train = time.monotonic() - t0

    model = H.load(run)
    embedder = E.BirdNETEmbedder()
    cache = E.EmbeddingCache(E.default_cache_dir())
    held = [q for q, c in zip(paths, codes) if q not in train and c]
    emb = EH.embed_all([LabelledRecording(q, "") for q in held], embedder, cache, None, 5, ["raw"])
    held = [q for q in held if q in emb]
    cols = [list(model.cfg.species).index(n.replace(" ", "_")) for n in INSECTS.values()]
    with torch.no_grad():
        s = np.stack([EH.combination.sigmoid(model(torch.from_numpy(emb[q]["raw"].mix))["species"].numpy()[:, cols])
                      .max(0) for q in held])  # (clips, insects)
    y = np.array([[code in codes[paths.index(q)] for code in INSECTS] for q in held], int)
    boot = metrics.bootstrap(y, {"heads": s}, np.arange(len(y)), reps=a.reps, min_positives=1)
    print(f"{len(train)} training clips ({a.train} per insect, {a.negatives} without them as negatives)"
          + (", with the xc/ bird species" if a.birds else "")
          + f", trained in {t_train:.0f} s; {len(held)} held-out annotated NIPS4B clips")
    print()
    print("| insect (NIPS4B code) | held-out positive clips | negative clips | AP | ROC AUC | recall @ 0.5 | "
          "precision @ 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for j, (code, name) in enumerate(INSECTS.items()):
        t, v = y[:, j].astype(bool), s[:, j]
        hit = v >= 0.5
        prec = f"{(hit & t).sum() / hit.sum():.2f}" if hit.any() else "n/a"
        print(f"| {name} ({code}) | {t.sum()} | {(~t).sum()} | {metrics.average_precision(t, v):.3f} | "
              f"{metrics.roc_auc(t, v):.3f} | {(hit & t).sum() / t.sum():.2f} | {prec} |")
    lo, hi = np.percentile(boot["heads"][:, 0], [2.5, 97.5])
    print()
    print(f"mean AP {metrics.cmap(y, s, 1):.3f} [{lo:.3f}, {hi:.3f}] (bootstrap over clips); "
          f"chance AP is the positive share ({', '.join(f'{y[:, j].mean():.3f}' for j in range(y.shape[1]))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
