"""Choosing the combination rule on real recordings, honestly: split-half selection.

``table2_real.py`` chooses its rule on synthetic selection scenes. Where those scenes cannot
tell two rules apart but the real recordings can, choosing on the real recordings is choosing
on the test set. This script measures what that choice is worth: the real recordings (NIPS4B,
Connecticut, Queensland) are split at random into two halves of recordings, ``--splits`` times;
on one half the rule is chosen with ``table2_real.py``'s criterion (largest cmAP gain over the
mix among rules whose lwlrap, d′ and top-1 gains are ≥ −0.005), and its gains are measured on the
other half. It prints how often each rule was chosen, the held-out gains of the chosen rule
(median and 2.5–97.5 % over splits) and, for comparison, the held-out gains of two fixed rules
(birdsep's default and ``--rule``). Point estimates per half (no bootstrap inside).

Needs the score cache filled by ``table2_real.py`` for the same separator (then ≈ 1 min).

    .venv/bin/python benchmarks/table2_split_half.py [--model SEPARATOR] [--splits 200]
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

import table2_common as T2
from common import table
from table2_real import DATA, recordings

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    T2.add_arguments(ap)
    ap.add_argument("--splits", type=int, default=200, help="random halvings of the real recordings")
    ap.add_argument("--rule", default=None, help="a candidate's name to follow beside the default")
    a = ap.parse_args()
    det, cache, rules = T2.start(a, DATA, "Split-half selection of the combination rule on the real recordings")
    from birdsep import metrics
    from birdsep.combination import DEFAULT

    labels = det.classifier.labels
    recs, _ = recordings(labels)
    real = T2.matrices(recs, cache, labels, T2.inputs_of(rules), progress=False)
    names = ["mix"] + [r.name for r in rules]
    scores = {"mix": real.scores("mix")} | {r.name: real.scores(r) for r in rules}  # (W, S) each
    default = next(r.name for r in rules if T2.same_rule(r, DEFAULT))
    follow = [default] + ([a.rule] if a.rule and a.rule in scores else [])

    def gains(rows: np.ndarray) -> dict[str, np.ndarray]:
        y = real.y[rows]
        cols = np.flatnonzero(y.any(0))
        vals = {n: np.array(T2._values(metrics.score_all(y[:, cols], scores[n][rows][:, cols]))) for n in names}
        return {n: vals[n] - vals["mix"] for n in names if n != "mix"}

    rng = np.random.default_rng(0)
    n_rec = int(real.recording.max()) + 1
    chosen, held, fixed = Counter(), [], {n: [] for n in follow}
    for _ in range(a.splits):
        half = rng.permutation(n_rec) < n_rec // 2  # recording → in the choosing half
        pick_rows = half[real.recording]
        g_pick, g_test = gains(pick_rows), gains(~pick_rows)
        ok = [n for n, g in g_pick.items() if np.all(g[1:] >= -T2.TOLERANCE)]
        best = max(ok, key=lambda n: g_pick[n][0]) if ok else None
        chosen[best] += 1
        held.append(g_test[best] if best else np.zeros(4))
        for n in follow:
            fixed[n].append(g_test[n])

    def row(label, values):
        v = np.array(values)
        med, lo, hi = np.median(v, 0), np.percentile(v, 2.5, 0), np.percentile(v, 97.5, 0)
        cells = [f"{m:+.3f} [{lo_:+.3f}, {hi_:+.3f}]" for m, lo_, hi_ in zip(med, lo, hi)]
        return {"held-out gain over the mix (median [2.5 %, 97.5 %] over splits)": label,
                **dict(zip(("ΔcmAP", "Δlwlrap", "Δd′", "Δtop-1"), cells))}

    print(f"{len(recs)} real recordings, {a.splits} random halvings (choose on one half, measure on the other)\n")
    table([{"rule chosen on the first half": n or "none", "times": c} for n, c in chosen.most_common()])
    print()
    table([row("the rule chosen on the other half", held)] + [row(n, fixed[n]) for n in follow])


if __name__ == "__main__":
    main()
