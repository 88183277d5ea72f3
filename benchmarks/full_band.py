"""Full-band tracks against the old split (22.05 kHz tracks + ``high_band``), paired, for BirdNET.

Issue 11 asks whether tracks from the 32 kHz separator, which carry their bird's whole band,
serve a classifier better than the old design: a 22.05 kHz separator whose tracks stop at
11.025 kHz, with everything above given back as one ``high_band`` track. This scores, with
BirdNET on the recordings of the Table 2 benchmarks (the synthetic test scenes of
``table2_synthetic.py`` and the real annotated soundscapes of ``table2_real.py``, through the
same score cache):

- ``new tracks``: the full-band separator's best track per window and species (``--mode separated``);
- ``old tracks + high band``: the old separator's best track with the whole band above its own
  added back (what a user of the old design could give a classifier at best);
- ``old tracks``: the old separator's best track alone;
- the same three under the paper's max rule (mix and tracks);

and the paired bootstrap 95 % interval (over recordings, the same draws for every input) of
``new`` minus ``old + high band``.

    .venv/bin/python benchmarks/full_band.py [--new separator_stft_m4] [--old separator_small_m4] [--reps 1000]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

import table2_common as T2
from table2_real import DATA, recordings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", default="separator_stft_m4", help="the full-band separator (default: separator_stft_m4)")
    ap.add_argument("--old", default="separator_small_m4", help="the band-limited one (default: separator_small_m4)")
    ap.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--scenes", type=int, default=96, help="synthetic test scenes (seed 0), as table2_synthetic.py")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    started = time.time()
    new_det, new_cache, _ = T2.start(argparse.Namespace(model=a.new, threads=a.threads, full_band=False), DATA,
                                     "Full-band tracks against tracks + high band, paired, BirdNET on the Table 2 "
                                     "benchmarks")
    old_det, old_cache, _ = T2.start(argparse.Namespace(model=a.old, threads=a.threads, full_band=False), DATA, None)
    if old_det.separator.config.sample_rate / 2 >= 15000:
        raise SystemExit(f"{a.old} already covers BirdNET's band: no high band to compare with")
    import table2_synthetic as TS
    from birdsep import metrics
    from birdsep.combination import PAPER

    labels = new_det.classifier.labels
    real_recs, _ = recordings(labels)
    sets = {"synthetic": TS.scene_recordings(a.scenes, 0, labels), "real": real_recs}
    high = replace(PAPER, input=T2.HIGH_BAND)
    for name, recs in sets.items():
        new = T2.matrices(recs, new_cache, labels, (T2.RAW,))
        old = T2.matrices(recs, old_cache, labels, (T2.RAW, T2.HIGH_BAND))
        assert np.array_equal(new.y, old.y)
        scores = {"mix": new.scores("mix"), "new tracks": new.scores("separated"),
                  "old tracks + high band": _separated(old, high), "old tracks": old.scores("separated"),
                  "max: mix, new tracks": new.scores(PAPER), "max: mix, old tracks + high band": old.scores(high),
                  "max: mix, old tracks": old.scores(PAPER)}
        full = {k: T2._values(metrics.score_all(new.y, s)) for k, s in scores.items()}
        boot = metrics.bootstrap(new.y, scores, new.recording, reps=a.reps)
        rows = []
        for k in scores:
            rows.append({"input to BirdNET": k, **{m: f"{v:.3f}" for m, v in zip(("cmAP", "lwlrap", "d′", "top-1"),
                                                                                   full[k])}})
        for new_k, old_k in (("new tracks", "old tracks + high band"),
                             ("max: mix, new tracks", "max: mix, old tracks + high band")):
            d = boot[new_k] - boot[old_k]
            lo, hi = np.nanpercentile(d, 2.5, axis=0), np.nanpercentile(d, 97.5, axis=0)
            gain = np.array(full[new_k]) - np.array(full[old_k])
            rows.append({"input to BirdNET": f"Δ {new_k} − {old_k.split(', ')[-1]}", **{
                m: f"{g:+.3f} [{lo_:+.3f}, {hi_:+.3f}]" for m, g, lo_, hi_ in zip(("cmAP", "lwlrap", "d′", "top-1"),
                                                                                 gain, lo, hi)}})
        print(f"\n{name}: {len(recs)} recordings, {len(new.y)} windows of 5 s, {len(new.species)} species; "
              f"Δ with paired bootstrap 95 % intervals over recordings ({a.reps} replicates)")
        from common import table

        table(rows)
    print(f"\n{time.time() - started:.0f} s ({new_cache.computed_s + old_cache.computed_s:.0f} s computing scores, "
          f"the rest from the cache)")


def _separated(m: T2.Matrices, rule) -> np.ndarray:
    """The best track's scores (``--mode separated``) as heard through ``rule``'s track input."""
    from birdsep.detect import combine

    return np.concatenate([combine("separated", fs, rule)[0][:, m.columns] for fs in m.files])


if __name__ == "__main__":
    main()
