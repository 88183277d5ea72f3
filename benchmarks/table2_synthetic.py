"""The paper's Table 2 on synthetic soundscapes: mix only, separated only, mix + separated.

Builds seeded soundscapes from ../shared/data: a real background (a 10 s Jura forest night
recording, 00:00–03:45, half the time with a noise file — rain, thunder, engine, train,
street — mixed in at −20…−5 dB) with 1–4 Xeno-canto excerpts of different species (the
loudest of several random excerpts of 1.5–4 s, at random offsets, at −15…+5 dB relative to
the background). The truth is written as one Raven selection table per soundscape. Xeno-canto
species are mapped to BirdNET labels through their common names in xc/recordings.csv (the
recording titles first, e.g. "Western Subalpine Warbler"; a few renamed species by hand);
species BirdNET does not know, and clips the data README flags as mostly noise, are left out.

BirdNET scores every 5 s window on the mix and on each of the separator's tracks (through
the library's ``score_file``; scores cached on disk, see table2_common.py), and the windows are
scored with cmAP, lwlrap, d′ and top-1 for the mix, the separated tracks and every candidate
combination rule (table2_common.CANDIDATES), with paired bootstrap 95 % intervals over scenes
of each rule's gain over the mix. Two diagnostic tables follow: where the paper's max comes
from, and the true (window, species) pairs by level and crowding.

    .venv/bin/python benchmarks/table2_synthetic.py [--scenes 96] [--seed 0] [--model SEPARATOR] [--reps 1000] \
        [--full-band]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

import numpy as np

from common import table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RATE = 48000
SCENE_SECONDS = 10.0
#: Xeno-canto names BirdNET spells differently (by the recordings' localities and titles).
ALIASES = {"alpine chough": "yellow-billed chough", "amazonian royal flycatcher": "royal flycatcher",
           "blackcap": "eurasian blackcap"}
#: Clips ../shared/data/README.md flags as mostly noise or questionable.
BAD_CLIPS = ("veery_recording_1", "spixs_guan_", "rose_breasted_grosbeak_recording_3")


def _norm(name: str) -> str:
    return re.sub(r"\bgrey\b", "gray", name.strip().lower())


def species_map(labels: list[str]) -> dict[str, str]:
    """XC species folder → BirdNET label (folders BirdNET lacks are left out)."""
    by_common = {_norm(lab.split("_", 1)[1]): lab for lab in labels if "_" in lab}
    out = {}
    with open(DATA / "xc" / "recordings.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["species"] in out:
                continue
            title = row["title"].split(" - ")[0]
            for cand in (title, row["common_name"]):
                c = _norm(cand)
                lab = by_common.get(c) or by_common.get(ALIASES.get(c, ""))
                if lab:
                    out[row["species"]] = lab
                    break
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-12))


def build_scenes(work: Path, n: int, seed: int, mapping: dict[str, str]) -> list[dict]:
    from birdsep import audio, files

    rng = np.random.default_rng(seed)
    backgrounds = sorted((DATA / "soundscapes" / "jura_forest_24h").glob("*_0[0-3]*.flac"))
    noises = sorted(p for p in (DATA / "noise").glob("*") if p.is_file())  # not noise/field/ (added later)
    clips = {sp: [f for f in sorted((DATA / "xc" / sp).glob("*.mp3")) if not f.stem.startswith(BAD_CLIPS)]
             for sp in mapping}
    clips = {sp: fs for sp, fs in clips.items() if fs}
    cache: dict[Path, np.ndarray] = {}

    def load(p: Path) -> np.ndarray:
        if p not in cache:
            cache[p] = audio.load(p, RATE)[0]
        return cache[p]

    species = sorted(clips)
    queue: list[str] = []  # species drawn round-robin (reshuffled each round) so all get examples
    length = int(SCENE_SECONDS * RATE)
    scenes = []
    for i in range(n):
        bg = load(backgrounds[i % len(backgrounds)])[:length]
        bg = np.pad(bg, (0, length - len(bg)))
        if rng.random() < 0.5:
            noise = load(noises[rng.integers(len(noises))])
            start = rng.integers(0, max(1, len(noise) - length))
            nz = noise[start : start + length]
            nz = np.pad(nz, (0, length - len(nz)))
            bg = bg + nz * (_rms(bg) / _rms(nz)) * 10 ** (rng.uniform(-20, -5) / 20)
        mix = bg.copy()
        k = int(rng.integers(1, 5))
        chosen: list[str] = []
        while len(chosen) < k:
            if not queue:
                queue = list(rng.permutation(species))
            sp = queue.pop()
            if sp not in chosen:
                chosen.append(sp)
        events = []
        for sp in chosen:
            src = load(clips[sp][rng.integers(len(clips[sp]))])
            dur = min(rng.uniform(1.5, 4.0), len(src) / RATE)
            m = int(dur * RATE)
            starts = rng.integers(0, max(1, len(src) - m), size=8)
            best = max(starts, key=lambda s: _rms(src[s : s + m]))  # the loudest of 8 candidates
            ex = src[best : best + m] * np.hanning(m).clip(0, 1) ** 0.1  # soft edges
            snr = rng.uniform(-15, 5)
            gain = (_rms(bg) / _rms(ex)) * 10 ** (snr / 20)
            at = int(rng.integers(0, length - m + 1))
            mix[at : at + m] += ex * gain
            events.append((at / RATE, (at + m) / RATE, mapping[sp], snr))
        peak = np.abs(mix).max()
        if peak > 0.99:
            mix *= 0.99 / peak
        name = f"scene_{i:03d}"
        audio.write(work / "audio" / f"{name}.flac", mix, RATE, subtype="PCM_24")
        rows = ["\t".join(["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                           "High Freq (Hz)", "Species"])]
        rows += [f"{j}\tSpectrogram 1\t1\t{s:.3f}\t{e:.3f}\t0\t{RATE // 2}\t{lab}"
                 for j, (s, e, lab, _) in enumerate(sorted(events), 1)]
        files.write_text(work / "truth" / f"{name}.Table.1.selections.txt", "\n".join(rows) + "\n")
        scenes.append({"name": name, "events": events})
    return scenes


def scene_recordings(n: int, seed: int, labels: list[str], work: Path | None = None) -> list:
    """The seeded scenes as table2_common Recordings, built once into ``work`` (default: in the cache)."""
    import json

    from table2_common import Recording, cache_root

    work = work or cache_root().parent / "table2_scenes" / f"seed{seed}_n{n}"
    index = work / "scenes.json"
    if index.is_file():
        scenes = json.loads(index.read_text())
    else:
        scenes = build_scenes(work, n, seed, species_map(labels))
        from birdsep import files

        files.write_text(index, json.dumps(scenes))
    return [Recording(sc["name"], work / "audio" / f"{sc['name']}.flac", [(b, e, lab) for b, e, lab, _ in sc["events"]],
                      "synthetic") for sc in scenes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the soundscapes (default: in the score cache)")
    import table2_common as T2

    T2.add_arguments(ap)
    a = ap.parse_args()
    det, cache, rules = T2.start(a, DATA, "Table 2 on synthetic soundscapes: BirdNET on the mix, the separated "
                                 "tracks, and both")
    from birdsep.evaluation import covers

    t0 = time.time()
    recs = scene_recordings(a.scenes, a.seed, det.classifier.labels, Path(a.work) if a.work else None)
    used = sorted({e[2] for r in recs for e in r.events})
    n_events = sum(len(r.events) for r in recs)
    print(f"{len(recs)} soundscapes of {SCENE_SECONDS:g} s at {RATE} Hz ({len(recs) * SCENE_SECONDS / 60:.1f} min), "
          f"{n_events} events of {len(used)} species (seed {a.seed}); ready in {time.time() - t0:.0f} s")

    t0 = time.time()
    rules = [r for r in rules if r.calibration is None]  # fitted on the selection scenes: table2_real.py
    m = T2.matrices(recs, cache, det.classifier.labels, T2.inputs_of(rules), progress=False)
    elapsed = time.time() - t0
    print(f"scored in {elapsed:.0f} s ({cache.computed_s:.0f} s computing, the rest from the cache)\n")
    results = T2.evaluate_rules(m, ["mix", "separated"] + rules, reps=a.reps)
    T2.print_rules(f"{len(m.y)} windows of 5 s ({int(m.y.any(1).sum())} with birds), {len(m.species)} species, "
                   f"{int((m.y.sum(0) >= 5).sum())} with ≥ 5 positive windows (cmAP, AUC and d′ over those); "
                   f"Δ: the gain over the mix, 95 % bootstrap interval over scenes ({a.reps} replicates)", results)

    hits = {"true": [], "false": []}  # did a track beat the mix? for true and false (window, species) pairs
    by_snr = []  # true pairs: (event SNR, species in the window, mix score, best track score)
    scenes = json.loads((recs[0].path.parents[1] / "scenes.json").read_text())
    snrs = {sc["name"]: sc["events"] for sc in scenes}
    for r, fs in zip(recs, m.files):
        raw = fs.tracks[T2.RAW][:, :, m.columns]
        mix = fs.mix[:, m.columns]
        for w, (w0, w1) in enumerate(fs.spans):
            present = {lab: snr for (b, e, lab, snr) in snrs[r.name] if covers(b, e, w0, w1)}
            for j, lab in enumerate(m.species):
                best, mixed = raw[w, :, j].max(), mix[w, j]
                hits["true" if lab in present else "false"].append(best - mixed)
                if lab in present:
                    by_snr.append((present[lab], len(present), mixed, best))
    rows = []
    for key in ("true", "false"):
        d = np.array(hits[key])
        rows.append({"(window, species) pairs": key, "count": len(d),
                     "best track > mix": f"{np.mean(d > 0):.1%}",
                     "median (best track − mix)": f"{np.median(d):+.3f}",
                     "mean (best track − mix)": f"{np.mean(d):+.3f}"})
    print("Where the max comes from: BirdNET's best separated track against the mix, same window and species")
    table(rows)

    print("True (window, species) pairs by the event's level over the background and by how many species share "
          "the window: BirdNET's mean score on the mix and on the best track")
    v = np.array(by_snr)
    rows = []
    for name, sel in [("SNR −15…−8 dB", v[:, 0] < -8), ("SNR −8…−1 dB", (v[:, 0] >= -8) & (v[:, 0] < -1)),
                      ("SNR −1…+5 dB", v[:, 0] >= -1), ("1 species in window", v[:, 1] == 1),
                      ("2 species", v[:, 1] == 2), ("3–4 species", v[:, 1] >= 3)]:
        if sel.any():
            rows.append({"true pairs": name, "count": int(sel.sum()), "mix": f"{v[sel, 2].mean():.3f}",
                         "best track": f"{v[sel, 3].mean():.3f}",
                         "best track > mix": f"{np.mean(v[sel, 3] > v[sel, 2]):.1%}"})
    table(rows)


if __name__ == "__main__":
    main()
