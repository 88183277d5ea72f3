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
    from birdsep.combination import DEFAULT

    labels = det.classifier.labels
    recs, _ = recordings(labels)
    real = T2.matrices(recs, cache, labels, T2.inputs_of(rules), progress=False)
    scores = {"mix": real.scores("mix")} | {r.name: real.scores(r) for r in rules}  # (W, S) each
    default = next(r.name for r in rules if T2.same_rule(r, DEFAULT))
    follow = [default] + ([a.rule] if a.rule and a.rule in scores else [])
    res = T2.split_half(real.y, real.recording, scores, a.splits, follow)

    def row(label, values):
        v = np.array(values)
        med, lo, hi = np.median(v, 0), np.percentile(v, 2.5, 0), np.percentile(v, 97.5, 0)
        cells = [f"{m:+.3f} [{lo_:+.3f}, {hi_:+.3f}]" for m, lo_, hi_ in zip(med, lo, hi)]
        return {"held-out gain over the mix (median [2.5 %, 97.5 %] over splits)": label,
                **dict(zip(("ΔcmAP", "Δlwlrap", "Δd′", "Δtop-1"), cells))}

    print(f"{len(recs)} real recordings, {a.splits} random halvings (choose on one half, measure on the other)\n")
    table([{"rule chosen on the first half": n or "none", "times": c}
           for n, c in sorted(res.chosen.items(), key=lambda kv: -kv[1])])
    print()
    table([row("the rule chosen on the other half", res.held)] + [row(n, res.fixed[n]) for n in follow])


if __name__ == "__main__":
    main()
