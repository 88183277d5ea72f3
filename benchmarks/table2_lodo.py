"""Separate + classify on every annotated data set, each on its own, with the combination rule
chosen leave-one-dataset-out: for each data set the rule is chosen on the *other* sets and only
then scored on this one, so no figure here comes from a choice that saw its own data.

Data sets (all read in place from ../shared/data; BirdNET scores cached, see table2_common):

- **NIPS4B**, **Queensland**: as ``table2_real.py`` (short clips, France/Spain; Australian ARU clips).
- **North America**: the annotated 10 s of an eastern North American dawn (Connecticut's Raven
  table) and the Vermont survey (23.5 s, three Black-throated Green Warbler and four Ovenbird
  songs, one of them faint), on 5 s windows.
- **Kenya**: twelve one-minute Mt Kenya recorder soundscapes with foreground and background
  species per minute (no times): each minute is one row, a species' score its best window's.
- **Jura planted**: long continuous recorder audio as users run it: the 96 ten-second Jura
  recorder files of a day, joined in time order into four 4-minute recordings (night, dawn,
  day, evening), with songs of species the shipped separators never heard
  (``benchmarks/splits/heldout_species.txt``) planted every 4–12 s at −35…0 dB against the
  background (distant to near birds); 5 s windows. The recorder's own birds are unlabelled and
  not scored (only planted species are).
- **synthetic**: ``table2_synthetic.py``'s 96 test scenes (seed 0).

Every rule is scored three ways: on the full score matrices (ranking), and as users read
``birdsep classify``'s output, on the detections at or above ``--min-conf`` 0.1 (the default) and
0.01 (scores below set to 0); plus the number of correct and wrong detections at 0.1. A rule is
chosen for a held-out set by the largest mean ΔcmAP (detections ≥ 0.1) over the other sets among
the rules whose ΔcmAP, Δlwlrap, Δd′ and Δtop-1 (at 0.1 and on full scores) are each ≥ −0.005 on
every other set. The pooled line stacks every real set's windows, each scored with its own
held-out choice; intervals are paired bootstrap 95 % over recordings.

    .venv/bin/python benchmarks/table2_lodo.py [--model SEPARATOR] [--reps 1000] [--threads 1]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import table2_common as T2
from common import table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RATE = 48000
THRESHOLDS = (0.1, 0.01)
TOLERANCE = 0.005
REAL = ("NIPS4B", "Queensland", "North America", "Kenya", "Jura planted")
SETS = REAL + ("synthetic",)


def rules() -> list:
    """The candidates: the mix, the paper's max, the previous default (a weighted mean) and the
    family of floor rules (``pool="gain"``: the mix's logit raised by a share of what the tracks,
    or the mixture without its noise-floor track's steady part, say above it)."""
    from birdsep.combination import DENOISED_STEADY, PAPER, Rule

    out = [PAPER, Rule("previous default (weighted mean)", input=T2.MIX_UNDER, pool="mean", track_weight=1 / 4,
                       denoised=1 / 3, denoise_input=DENOISED_STEADY)]
    for name, inp in (("tracks", T2.RAW), ("tracks + mix 15 dB under", T2.MIX_UNDER)):
        for w in (0.25, 0.5, 0.75, 1.0):
            for wd in (0.0, 0.25, 0.5, 1.0):
                if inp is T2.RAW and w == 1.0 and wd == 0.0:
                    continue  # = max (paper)
                label = f"gain: {name} ×{w:g}" + (f" + denoised ×{wd:g}" if wd else "")
                out.append(Rule(label, input=inp, pool="gain", track_weight=w, denoised=wd,
                                denoise_input=DENOISED_STEADY))
    for wd in (0.25, 0.5, 1.0):
        out.append(Rule(f"gain: denoised ×{wd:g}", input=T2.RAW, pool="gain", track_weight=0.0, denoised=wd,
                        denoise_input=DENOISED_STEADY))
    # gated gains: only what a track says above max(the mix, a confidence gate) raises the mix
    for name, inp in (("tracks", T2.RAW), ("tracks + mix 15 dB under", T2.MIX_UNDER)):
        for gate in (0.1, 0.3, 0.5):
            for w in (0.5, 0.75, 1.0):
                for wd in (0.0, 0.5, 1.0):
                    label = f"gated gain ≥ {gate:g}: {name} ×{w:g}" + (f" + denoised ×{wd:g}" if wd else "")
                    out.append(Rule(label, input=inp, pool="gain", track_weight=w, denoised=wd, gate=gate,
                                    denoise_input=DENOISED_STEADY))
    # the weighted mean floored at the mix's logit (pool="floor")
    for name, inp in (("tracks", T2.RAW), ("tracks + mix 15 dB under", T2.MIX_UNDER)):
        for w, wd in ((1 / 4, 1 / 3), (1 / 4, 1 / 2), (1 / 3, 1 / 3), (1 / 4, 1 / 4), (1 / 2, 0.0), (1 / 3, 0.0),
                      (1 / 4, 0.0), (0.0, 1 / 3), (0.0, 1 / 2)):
            if inp is T2.RAW and w == 0:
                continue  # no track term: the same rule with either input
            label = f"floored mean: {name} {w:.2g}" + (f" + denoised {wd:.2g}" if wd else "")
            out.append(Rule(label, input=inp, pool="floor", track_weight=w, denoised=wd, denoise_input=DENOISED_STEADY))
    return out


# ------------------------------------------------------------------------------ data sets


def north_america(labels: list[str]) -> list[T2.Recording]:
    import table2_real as TR

    recs, _ = TR.recordings(labels)
    ct = [r for r in recs if r.group == "Connecticut"]
    v = DATA / "soundscapes" / "extra_annotated" / "vermont_survey"
    events = [(float(r["start_s"]), float(r["end_s"]), r["birdnet_label"])
              for r in csv.DictReader(open(v / "survey_anno.csv", newline=""))]
    out = [T2.Recording(r.name, r.path, r.events, "North America") for r in ct]
    return out + [T2.Recording("vermont_survey", v / "survey.wav", events, "North America")]


def kenya(labels: list[str]) -> list[T2.Recording]:
    """Each minute with its weak labels as one event covering the whole minute."""
    k = DATA / "soundscapes" / "extra_annotated" / "kenya_mt_kenya"
    known = set(labels)
    out = []
    for row in csv.DictReader(open(k / "labels_recording_level.csv", newline="")):
        labs = [lab for lab in row["all_birdnet_labels"].split(";") if lab]
        missing = [lab for lab in labs if lab not in known]
        if missing:
            raise SystemExit(f"Kenya labels not in BirdNET's list: {missing}")
        out.append(T2.Recording(row["filename"], k / "audio" / row["filename"],
                                [(0.0, float(row["duration_s"]), lab) for lab in labs], "Kenya"))
    return out


def jura_planted(labels: list[str], work: Path, seed: int = 0) -> list[T2.Recording]:
    """Four long recordings of real recorder background with held-out species' songs planted
    at −35…0 dB against it (built once into ``work``)."""
    index = work / "recordings.json"
    if not index.is_file():
        _build_jura(labels, work, seed)
    return [T2.Recording(r["name"], work / f"{r['name']}.flac", [tuple(e[:3]) for e in r["events"]], "Jura planted")
            for r in json.loads(index.read_text())]


def _build_jura(labels: list[str], work: Path, seed: int) -> None:
    import fnmatch

    import table2_synthetic as TS
    from birdsep import audio, files

    rng = np.random.default_rng(seed)
    heldout = [g for g in (Path(__file__).parent / "splits" / "heldout_species.txt").read_text().splitlines()
               if g and not g.startswith("#")]
    mapping = TS.species_map(labels)  # xc folder → BirdNET label
    clips = {}
    for sp, lab in mapping.items():
        fs = [f for f in sorted((DATA / "xc" / sp).glob("*.mp3")) if not f.stem.startswith(TS.BAD_CLIPS)
              and any(fnmatch.fnmatch(str(f), g) for g in heldout)]
        if fs:
            clips[sp] = fs
    species = sorted(clips)
    backgrounds = sorted((DATA / "soundscapes" / "jura_forest_24h").glob("*.flac"))
    quarter = len(backgrounds) // 4
    out = []
    queue: list[str] = []
    for q, part in enumerate(("night", "dawn", "day", "evening")):
        bg = np.concatenate([audio.load(p, RATE)[0] for p in backgrounds[q * quarter:(q + 1) * quarter]])
        mix = bg.astype(np.float64).copy()
        events = []
        t = rng.uniform(1, 6)
        while True:
            if not queue:
                queue = list(rng.permutation(species))
            sp = queue.pop()
            src = audio.load(clips[sp][rng.integers(len(clips[sp]))], RATE)[0]
            m = int(min(rng.uniform(1.5, 4.0), len(src) / RATE) * RATE)
            at = int(t * RATE)
            if at + m > len(mix):
                break
            starts = rng.integers(0, max(1, len(src) - m), size=8)
            best = max(starts, key=lambda s: TS._rms(src[s:s + m]))
            ex = src[best:best + m] * np.hanning(m).clip(0, 1) ** 0.1
            level = rng.uniform(-35, 0)
            mix[at:at + m] += ex * (TS._rms(bg[at:at + m]) / TS._rms(ex)) * 10 ** (level / 20)
            events.append((at / RATE, (at + m) / RATE, mapping[sp], round(level, 2)))
            t += m / RATE + rng.uniform(4, 12)
        peak = np.abs(mix).max()
        if peak > 0.99:
            mix *= 0.99 / peak
        name = f"jura_{part}_planted"
        audio.write(work / f"{name}.flac", mix.astype(np.float32), RATE, subtype="PCM_24")
        out.append({"name": name, "events": events})
    files.write_text(work / "recordings.json", json.dumps(out))


# ------------------------------------------------------------------------------ scoring


@dataclass
class SetScores:
    """One data set: truth (R, S) over the species of all sets, recording id per row, and per
    rule name the (R, S) scores."""

    y: np.ndarray
    recording: np.ndarray
    scores: dict


def set_scores(m: T2.Matrices, all_rules: list, clip_level: bool) -> SetScores:
    """Rows are the windows, or with ``clip_level`` the recordings (a species' score the best of
    its windows, the truth any of its windows)."""
    names = [r if isinstance(r, str) else r.name for r in all_rules]
    scores = {n: m.scores(r) for n, r in zip(names, all_rules)}
    if not clip_level:
        return SetScores(m.y, m.recording, scores)
    ids = np.unique(m.recording)
    pick = lambda a: np.stack([a[m.recording == i].max(0) for i in ids])  # noqa: E731
    return SetScores(pick(m.y), ids, {n: pick(s) for n, s in scores.items()})


def thresholded(s: np.ndarray, thr: float | None) -> np.ndarray:
    return s if thr is None else np.where(s >= thr, s, 0.0)


def values(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    from birdsep import metrics

    cols = np.flatnonzero(y.any(0))
    r = metrics.score_all(y[:, cols], s[:, cols])
    return np.array([r.cmap, r.lwlrap, r.dprime, r.top1])


def gains(ss: SetScores, thr: float | None) -> dict:
    """rule → (4,) gain over the mix on this set (point estimates)."""
    base = values(ss.y, thresholded(ss.scores["mix"], thr))
    return {n: values(ss.y, thresholded(s, thr)) - base for n, s in ss.scores.items()}


def choose(per_set: dict, held: str, names: list[str]) -> str:
    """The rule chosen without ``held``: largest mean ΔcmAP (≥ 0.1) over the other sets among
    rules within TOLERANCE of the mix on every metric, at 0.1 and on full scores, on each."""
    others = [s for s in per_set if s != held]
    ok = []
    for n in names:
        if n == "mix":
            continue
        fine = all(np.all(np.nan_to_num(per_set[s][key][n], nan=0.0) >= -TOLERANCE)
                   for s in others for key in (0.1, None))
        if fine:
            ok.append(n)
    if not ok:
        return "mix"
    return max(ok, key=lambda n: np.mean([np.nan_to_num(per_set[s][0.1][n][0]) for s in others]))


def detections(y: np.ndarray, s: np.ndarray, thr: float) -> tuple[int, int]:
    hit = s >= thr
    return int((hit & (y > 0)).sum()), int((hit & (y == 0)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    T2.add_arguments(ap)
    ap.add_argument("--scenes", type=int, default=96, help="synthetic test scenes (seed 0), as table2_synthetic.py")
    ap.add_argument("--json", default=None, help="also write the per-set tables as JSON")
    a = ap.parse_args()
    started = time.time()
    det, cache, _ = T2.start(a, DATA, "Separate + classify per data set, combination rules chosen "
                             "leave-one-dataset-out")
    import table2_real as TR
    import table2_synthetic as TS
    from birdsep import metrics

    labels = det.classifier.labels
    real, _ = TR.recordings(labels)
    recs = {
        "NIPS4B": [r for r in real if r.group == "NIPS4B"],
        "Queensland": [r for r in real if r.group == "Queensland"],
        "North America": north_america(labels),
        "Kenya": kenya(labels),
        "Jura planted": jura_planted(labels, T2.cache_root().parent / "table2_scenes" / "jura_planted_seed0"),
        "synthetic": TS.scene_recordings(a.scenes, 0, labels),
    }
    cands = rules()
    all_rules = ["mix", "separated"] + cands
    names = [r if isinstance(r, str) else r.name for r in all_rules]
    inputs = T2.inputs_of(cands)
    species = sorted({e[2] for rs in recs.values() for r in rs for e in r.events})
    sets: dict[str, SetScores] = {}
    for key, rs in recs.items():
        m = T2.matrices(rs, cache, labels, inputs, progress=False)
        cols = [species.index(s) for s in m.species]
        y = np.zeros((len(m.y), len(species)), np.int8)
        y[:, cols] = m.y
        idx = {lab: j for j, lab in enumerate(labels)}
        m = T2.Matrices(species, y, m.recording, m.group, m.files, np.array([idx[s] for s in species]))
        sets[key] = set_scores(m, all_rules, clip_level=(key == "Kenya"))
        n = sum(len(r.events) for r in rs)
        print(f"{key}: {len(rs)} recordings, {len(sets[key].y)} rows ({'minutes' if key == 'Kenya' else '5 s windows'}), "
              f"{n} events of {int(sets[key].y.any(0).sum())} species, "
              f"{int((sets[key].y.sum(0) >= metrics.MIN_POSITIVES).sum())} with ≥ {metrics.MIN_POSITIVES} positive rows")
    print(f"\nscored in {time.time() - started:.0f} s ({cache.computed_s:.0f} s computing BirdNET and separation)\n")

    per_set = {k: {thr: gains(ss, thr) for thr in (None,) + THRESHOLDS} for k, ss in sets.items()}
    chosen = {k: choose(per_set, k, names) for k in sets}
    report = {"chosen": chosen, "sets": {}}
    print("## Every candidate: ΔcmAP of the detections ≥ 0.1 per set (point estimates), and the worst gain of "
          "any metric on any set at ≥ 0.1 and on full scores (a rule is eligible when that is ≥ −0.005)")
    rows = []
    metric_names = ("cmAP", "lwlrap", "d′", "top-1")
    for n in names[1:]:
        where = [(float(np.nan_to_num(per_set[k][key][n][j], nan=0.0)), k, key, j)
                 for k in sets for key in (0.1, None) for j in range(4)]
        worst = min(where, key=lambda w: w[0])
        mean = np.mean([np.nan_to_num(per_set[k][0.1][n][0]) for k in sets])
        rows.append({"rule": n, **{k: f"{per_set[k][0.1][n][0]:+.3f}" for k in sets},
                     "mean": f"{mean:+.3f}", "worst Δ anywhere": f"{worst[0]:+.3f} ({worst[1]}, "
                     f"{metric_names[worst[3]]}, {'full' if worst[2] is None else '≥ 0.1'})", "_m": mean})
    rows.sort(key=lambda r: -r.pop("_m"))
    table(rows)
    report["candidates"] = rows
    shown = ["mix", "separated", "max (paper)", "previous default (weighted mean)"]
    for key, ss in sets.items():
        rows_names = list(dict.fromkeys(shown + [chosen[key]]))
        print(f"## {key} (rule chosen on the other sets: {chosen[key]})")
        rows = []
        report["sets"][key] = {}
        for thr in (0.1, 0.01, None):
            scored = {n: thresholded(ss.scores[n], thr) for n in rows_names}
            boot = metrics.bootstrap(ss.y[:, ss.y.any(0)], {n: s[:, ss.y.any(0)] for n, s in scored.items()},
                                     ss.recording, reps=a.reps, seed=0)
            for n in rows_names:
                v = values(ss.y, scored[n])
                d = boot[n] - boot["mix"]
                with np.errstate(invalid="ignore"):
                    lo, hi = np.nanpercentile(d, 2.5, axis=0), np.nanpercentile(d, 97.5, axis=0)
                g = v - values(ss.y, scored["mix"])
                row = {"scores": "full" if thr is None else f"≥ {thr:g}", "rule": n + (" ← chosen" if n == chosen[key] else "")}
                for k, met in enumerate(("cmAP", "lwlrap", "d′", "top-1")):
                    row[met] = f"{v[k]:.3f}" + ("" if n == "mix" else f" ({g[k]:+.3f} [{lo[k]:+.3f}, {hi[k]:+.3f}])")
                if thr is not None:
                    ok, bad = detections(ss.y, ss.scores[n], thr)
                    row["correct / wrong detections"] = f"{ok} / {bad}"
                else:
                    row["correct / wrong detections"] = ""
                rows.append(row)
                report["sets"][key].setdefault(n, {})["full" if thr is None else str(thr)] = {
                    "values": v.tolist(), "gain": g.tolist(), "low": lo.tolist(), "high": hi.tolist(),
                    **({"detections": detections(ss.y, ss.scores[n], thr)} if thr is not None else {})}
        table(rows)

    # pooled over the real sets, each scored with its held-out choice
    y = np.concatenate([sets[k].y for k in REAL])
    rec = np.concatenate([sets[k].recording + 100000 * i for i, k in enumerate(REAL)])
    pooled = {"mix": np.concatenate([sets[k].scores["mix"] for k in REAL]),
              "held-out choices": np.concatenate([sets[k].scores[chosen[k]] for k in REAL]),
              "max (paper)": np.concatenate([sets[k].scores["max (paper)"] for k in REAL]),
              "previous default (weighted mean)": np.concatenate(
                  [sets[k].scores["previous default (weighted mean)"] for k in REAL])}
    print("## All real sets pooled (each set's rows scored with the rule chosen without it)")
    rows = []
    for thr in (0.1, 0.01, None):
        sc = {n: thresholded(s, thr) for n, s in pooled.items()}
        keep = y.any(0)
        boot = metrics.bootstrap(y[:, keep], {n: s[:, keep] for n, s in sc.items()}, rec, reps=a.reps, seed=0)
        base = values(y, sc["mix"])
        for n, s in sc.items():
            v = values(y, s)
            d = boot[n] - boot["mix"]
            with np.errstate(invalid="ignore"):
                lo, hi = np.nanpercentile(d, 2.5, axis=0), np.nanpercentile(d, 97.5, axis=0)
            row = {"scores": "full" if thr is None else f"≥ {thr:g}", "rule": n}
            for k, met in enumerate(("cmAP", "lwlrap", "d′", "top-1")):
                row[met] = f"{v[k]:.3f}" + ("" if n == "mix" else f" ({v[k] - base[k]:+.3f} [{lo[k]:+.3f}, {hi[k]:+.3f}])")
            rows.append(row)
            report.setdefault("pooled", {}).setdefault(n, {})["full" if thr is None else str(thr)] = {
                "values": v.tolist(), "gain": (v - base).tolist(), "low": lo.tolist(), "high": hi.tolist()}
    table(rows)
    print("Held-out choices: " + "; ".join(f"{k}: {v}" for k, v in chosen.items()))
    everywhere = choose(per_set, "", names)
    print(f"Chosen on all sets together (the shipped default follows this): {everywhere}")
    report["chosen_on_all"] = everywhere
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print(f"run time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
