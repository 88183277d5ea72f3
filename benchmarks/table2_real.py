"""Table 2 on real annotated soundscapes: BirdNET on the mix, on the separated tracks, and on
both under each candidate combination rule, with bootstrap 95 % intervals over recordings,
printed next to the same rules on the synthetic soundscapes of table2_synthetic.py.

Real recordings (../shared/data/soundscapes, read in place):

- **NIPS4B** train clips (France and Spain, 1–5 s) with their NIPS4Bplus event annotations.
  A code (genus + species initials, ``Sylmel``) is resolved to species through the checklists
  birdsep ships (``birdsep.taxonomy.species_for_code``); where several species share a code,
  those BirdNET's metadata model expects in southern France or central Spain are kept;
  :data:`FORMER_NAMES` maps the six codes of species renamed since 2013. Codes of insects, frogs,
  ``Human``, ``Unknown``, and codes that stay ambiguous are left out (counted and printed);
  clips without annotations are windows without birds.
- **Connecticut**: the first 10 s of an annotated forest soundscape (Raven table, four-letter
  alpha codes resolved through the same checklists).
- **Queensland**: ARU clips for two target species, Southern Boobook (``boobook_set/positive``
  boxed; ``negative/`` without it; the three ``neg_2`` clips that repeat a ``positive`` one are
  left out) and Noisy Pitta (``noisypitta/pos`` boxed, ``neg`` without it). Only the target is
  boxed there.

Every recording is scored on 5 s windows; the species scored are every species annotated in
any of the three sets (a species of one continent is a true negative on the others), each data
set's windows are also scored on their own. Candidates are the rules of
``table2_common.CANDIDATES`` (``--full-band`` adds tracks with the band above a 22.05 kHz
separator's); the calibrated one is fitted on separate synthetic training scenes
(``--calibration-scenes``, seed 1). Scores are cached (see table2_common), so a re-run with the
same separator only re-evaluates.

    .venv/bin/python benchmarks/table2_real.py [--model SEPARATOR] [--reps 1000] [--full-band] [--threads 1]
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import table2_common as T2

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOUNDSCAPES = DATA / "soundscapes"
#: BIOTOPE recorded NIPS4B in southern France and Spain: species BirdNET expects at either place.
NIPS4B_SITES = ((43.6, 3.9), (40.4, -3.7))
#: NIPS4B codes of species whose scientific names changed since 2013 (code → BirdNET V2.4's name).
FORMER_NAMES = {
    "Parcae": "Cyanistes caeruleus",  # Parus caeruleus
    "Parate": "Periparus ater",  # Parus ater
    "Carcan": "Linaria cannabina",  # Carduelis cannabina
    "Sylmel": "Curruca melanocephala",  # Sylvia melanocephala
    "Sylund": "Curruca undata",  # Sylvia undata
    "Sylcan": "Curruca iberiae",  # Sylvia cantillans; the Western Subalpine Warbler of France and Spain
}
BOOBOOK, PITTA = "Ninox boobook_Southern Boobook", "Pitta versicolor_Noisy Pitta"


def nips4b_codes(labels: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(code → BirdNET label, code → why it is left out) for every code in the annotations."""
    from birdsep.backends import location_species
    from birdsep.taxonomy import species_for_code

    by_sci = {lab.split("_")[0]: lab for lab in labels}
    expected = {lab for lat, lon in NIPS4B_SITES for lab, _ in location_species(lat, lon, -1)}
    codes = sorted({row["label"].split("_")[0] for f in (SOUNDSCAPES / "nips4b" / "annotations").glob("*.csv")
                    for row in csv.DictReader(open(f, newline=""))})
    mapped, left = {}, {}
    for code in codes:
        names = [FORMER_NAMES[code]] if code in FORMER_NAMES else species_for_code(code)
        cands = [by_sci[n] for n in names if n in by_sci]
        if len(cands) > 1:
            cands = [c for c in cands if c in expected] or cands
        if len(cands) == 1:
            mapped[code] = cands[0]
        elif code in ("Unknown", "Human"):
            left[code] = "not a species"
        elif not names:
            left[code] = "no bird of this code in the checklists (insect or frog)"
        elif not cands:
            left[code] = "not among BirdNET's labels"
        else:
            left[code] = "ambiguous: " + " / ".join(c.split("_")[1] for c in cands)
    return mapped, left


def recordings(labels: list[str]) -> tuple[list[T2.Recording], list[str]]:
    """The real recordings with their events as BirdNET labels, and lines describing what was left out."""
    from birdsep.outputs import read_table
    from birdsep.taxonomy import species_for_code

    notes: list[str] = []
    recs: list[T2.Recording] = []
    # NIPS4B
    mapped, left = nips4b_codes(labels)
    dropped: Counter = Counter()
    kept = 0
    for clip in sorted((SOUNDSCAPES / "nips4b" / "train").glob("*.ogg")):
        ann = SOUNDSCAPES / "nips4b" / "annotations" / f"{clip.stem}.csv"
        events = []
        if ann.is_file():
            for row in csv.DictReader(open(ann, newline="")):
                code = row["label"].split("_")[0]
                if code in mapped:
                    s = float(row["onset"])
                    events.append((s, s + float(row["duration"]), mapped[code]))
                else:
                    dropped[code] += 1
        kept += len(events)
        recs.append(T2.Recording(clip.stem, clip, events, "NIPS4B"))
    notes.append(f"NIPS4B: {sum(r.group == 'NIPS4B' for r in recs)} clips, {len(mapped)} codes mapped to BirdNET "
                 f"labels ({kept} events kept), {len(left)} left out ({sum(dropped.values())} events):")
    for code, why in sorted(left.items(), key=lambda kv: -dropped[kv[0]]):
        notes.append(f"  {code:<8} {dropped[code]:>4} events  {why}")
    # Connecticut
    by_sci = {lab.split("_")[0]: lab for lab in labels}
    ct = SOUNDSCAPES / "annotated"
    events, missing = [], Counter()
    for d in read_table(ct / "Recording_1_Segment_07.Table.1.selections.txt"):
        if d.start >= 10.0:
            continue
        names = species_for_code(d.species)
        if len(names) == 1 and names[0] in by_sci:
            events.append((d.start, min(d.end, 10.0), by_sci[names[0]]))
        else:
            missing[d.species] += 1
    recs.append(T2.Recording("Connecticut", ct / "Recording_1_Segment_07-first10s.flac", events, "Connecticut"))
    notes.append(f"Connecticut: 10 s, {len(events)} events of {len({e[2] for e in events})} species"
                 + (f"; left out {dict(missing)}" if missing else ""))
    # Queensland
    q = SOUNDSCAPES / "queensland"
    boxed = lambda clip, label: [(d.start, d.end, label) for d in read_table(  # noqa: E731
        clip.with_name(clip.name[: -len(".ogg")] + ".Table.1.selections.txt"), species=label)]
    positive = sorted((q / "boobook_set" / "positive").glob("*.ogg"))
    repeats = {p.name for p in positive}
    for clip in positive:
        recs.append(T2.Recording(clip.stem, clip, boxed(clip, BOOBOOK), "Queensland"))
    negatives = [c for c in sorted((q / "boobook_set" / "negative").rglob("*.ogg")) if c.name not in repeats]
    recs += [T2.Recording(c.stem, c, [], "Queensland") for c in negatives]
    pitta_pos = sorted((q / "noisypitta" / "pos").rglob("*.ogg"))
    recs += [T2.Recording(c.stem, c, boxed(c, PITTA), "Queensland") for c in pitta_pos]
    pitta_neg = sorted((q / "noisypitta" / "neg").rglob("*.ogg"))
    recs += [T2.Recording(c.stem, c, [], "Queensland") for c in pitta_neg]
    notes.append(f"Queensland: boobook {len(positive)} boxed + {len(negatives)} negative clips "
                 f"({len(repeats & {c.name for c in (q / 'boobook_set' / 'negative').rglob('*.ogg')})} repeats of "
                 f"boxed clips left out), pitta {len(pitta_pos)} boxed + {len(pitta_neg)} negative clips")
    return recs, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    T2.add_arguments(ap)
    ap.add_argument("--scenes", type=int, default=96, help="synthetic test scenes (seed 0), as table2_synthetic.py")
    ap.add_argument("--selection-scenes", type=int, default=96,
                    help="synthetic scenes (seed 1) on which rules are chosen and the calibration is fitted")
    a = ap.parse_args()
    started = time.time()
    det, cache, rules = T2.start(a, DATA, "Table 2 on real annotated soundscapes (and the synthetic ones): BirdNET on "
                                 "the mix, the separated tracks, and both, by combination rule")
    import table2_synthetic as TS
    from birdsep.combination import DEFAULT

    labels = det.classifier.labels
    recs, notes = recordings(labels)
    print("\n".join(notes) + "\n")

    inputs = T2.inputs_of(rules)
    selection = T2.matrices(TS.scene_recordings(a.selection_scenes, 1, labels), cache, labels, inputs)
    calibration = T2.fit_calibration(selection)
    rules = T2.with_calibration(rules, calibration)
    synthetic = T2.matrices(TS.scene_recordings(a.scenes, 0, labels), cache, labels, inputs)
    real = T2.matrices(recs, cache, labels, inputs)
    scored = time.time() - started
    print(f"\ncalibrated tracks: logit ℓ → {calibration[0]:.3f}·ℓ {calibration[1]:+.3f} (logistic fits of presence "
          f"on the mix's and the best track's logits, {a.selection_scenes} selection scenes)\n")

    all_rules = ["mix", "separated"] + rules
    tables = {}

    def show(key, title, m, rows=None):
        tables[key] = T2.evaluate_rules(m, all_rules, rows=rows, reps=a.reps)
        T2.print_rules(title, tables[key])

    show("selection", f"Synthetic selection scenes (seed 1, {a.selection_scenes} scenes, {len(selection.y)} windows, "
         f"{len(selection.species)} species): the rules are chosen here", selection)
    show("synthetic", f"Synthetic test scenes (table2_synthetic.py: seed 0, {a.scenes} scenes, {len(synthetic.y)} "
         f"windows, {len(synthetic.species)} species)", synthetic)
    show("real", f"Real recordings, all together ({len(recs)} recordings, {len(real.y)} windows of 5 s, "
         f"{int(real.y.any(1).sum())} with birds, {len(real.species)} species, "
         f"{int((real.y.sum(0) >= 5).sum())} with ≥ 5 positive windows)", real)
    for group in ("NIPS4B", "Queensland"):
        rows = real.group == group
        y = real.y[rows]
        show(group, f"{group} only ({len(set(real.recording[rows]))} recordings, {int(rows.sum())} windows, "
             f"{int(y.any(1).sum())} with birds, {int((y.sum(0) >= 5).sum())} species with ≥ 5 positive windows)",
             real, rows)

    chosen = T2.choose(tables["selection"])
    default = next((r.name for r in rules if T2.same_rule(r, DEFAULT)), None)
    print(f"Chosen on the selection scenes for this separator (largest cmAP gain among rules whose lwlrap, d′ and "
          f"top-1 are at most {T2.TOLERANCE} below the mix): {chosen or 'none'}; birdsep's default (--combine "
          f"default): {default}\n")
    T2.print_summary([n for n in (default, chosen) if n], {k: tables[k] for k in ("synthetic", "real")})
    print(f"run time {time.time() - started:.0f} s (scores: {cache.computed_s:.0f} s computed here, "
          f"{scored - cache.computed_s:.0f} s other loading; the rest bootstrap)")


if __name__ == "__main__":
    main()
