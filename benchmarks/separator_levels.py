"""Faint birds: how separators keep a quiet recording under a loud one, on species they never
heard (``splits/heldout_species.txt``).

Three tables per separator, all on the held-out species' recordings, drawn with fixed seeds (the
same mixtures for every separator), at the separator's own rate:

1. **Level differences.** Mixtures of mixtures of two 6 s windows of recordings of two different
   held-out species, first brought to the same RMS, the second then lowered by 0, 6, 12, 18 or
   24 dB (``--per-gap`` mixtures each). Per gap: MoMi (mean SI-SNR improvement of the two
   estimated mixtures under the MixIT assignment) with a 95 % bootstrap interval, the share of
   mixtures that *lose a recording* (one reference's estimate below −10 dB SI-SNR), and the
   SI-SNR improvement of the quieter recording alone.
2. **Natural levels.** The paper's evaluation: random 6 s windows of two held-out recordings
   summed as they are (``--natural`` mixtures), MoMi and lost recordings.
3. **Faint songs over real background.** A song (the loudest vocalisation of a held-out
   recording, ``separation.data.cut_song``) planted in a 6 s window of the Jura recorder's real
   background at −35…0 dB against it. Per level band: the share of the song in its best track
   (the regression coefficient ⟨ŝ_m, s⟩ / ‖s‖², which sums to about 1 over the tracks) and
   BirdNET's score for the planted species on that track against its score on the mix (3 s
   around the song).

    .venv/bin/python benchmarks/separator_levels.py --models separator_stft_m4 separator_stft_m8 [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import fnmatch
import time
from pathlib import Path

import numpy as np
import torch

from common import header, table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
GAPS = (0, 6, 12, 18, 24)
SECONDS = 6.0
LOST_DB = -10.0
LEVEL_BANDS = ((-35, -25), (-25, -15), (-15, -5), (-5, 0))


def heldout_files() -> list[Path]:
    from birdsep.separation.data import collect
    from separator_ablation import HELDOUT, read_globs

    globs = read_globs(HELDOUT)
    return [f for f in collect([str(DATA)]) if any(fnmatch.fnmatch(str(f), g) for g in globs)]


def _window(sampler, i: int, rng: np.random.Generator) -> np.ndarray:
    """A window of recording i, drawn as training draws them (favouring windows with energy)."""
    from birdsep.separation.data import FRAME_SECONDS

    rec, w = sampler.recordings[i], sampler.weights[i]
    j = rng.choice(len(w), p=w / w.sum())
    start = min((sampler.starts[i][j] + rng.uniform(0, 1)) * FRAME_SECONDS, max(0.0, rec.duration - sampler.seconds))
    x = sampler.read(rec, start)
    return np.pad(x, (0, max(0, sampler.length - len(x))))[: sampler.length]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def pairs(sampler, count: int, seed: int, gap: float | None) -> torch.Tensor:
    """(count, 2, T): two windows of recordings of different species each; equal RMS with the second
    ``gap`` dB lower, or with ``gap`` None as they are (natural levels)."""
    rng = np.random.default_rng(seed)
    species = np.array([Path(r.path).parent.name for r in sampler.recordings])
    out = []
    while len(out) < count:
        i = int(rng.choice(len(species), p=sampler.file_p))
        others = np.flatnonzero(species != species[i])
        p = sampler.file_p[others] / sampler.file_p[others].sum()
        k = int(rng.choice(others, p=p))
        a, b = _window(sampler, i, rng), _window(sampler, k, rng)
        if _rms(a) < 1e-6 or _rms(b) < 1e-6:
            continue
        if gap is not None:
            level = 10 ** (rng.uniform(-35, -20) / 20)
            a = a * (level / _rms(a))
            b = b * (level * 10 ** (-gap / 20) / _rms(b))
        out.append(np.stack([a, b]).astype(np.float32))
    return torch.from_numpy(np.stack(out))


#: how the benchmark separates: "forward" (the model's own forward, fp32) or "fp32" / "bf16"
#: (birdsep's inference path, as ``birdsep separate`` and ``birdsep.separate`` run it)
PATH = {"how": "bf16"}


def separate(model, mixtures: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(K, T) → (K, M, T)."""
    if PATH["how"] == "forward":
        with torch.inference_mode():
            return torch.cat([model(c) for c in mixtures.split(chunk)])
    from birdsep.separation.apply import BlockSettings, separate_array

    settings = BlockSettings(precision=PATH["how"])
    rate = model.config.sample_rate
    return torch.from_numpy(np.stack([separate_array(model, m.numpy(), rate, settings) for m in mixtures]))


def scores(refs: torch.Tensor, sources: torch.Tensor) -> dict:
    """Per mixture: MoMi, each reference's SI-SNR and SI-SNRi under the MixIT assignment."""
    from birdsep.separation.mixit import best_assignment, si_snr, si_snr_improvement

    a = best_assignment(refs.double(), sources.double())
    est = torch.bmm(a, sources.double())  # (K, 2, T)
    mom = refs.double().sum(1, keepdim=True)
    sisnr = si_snr(refs.double(), est)  # (K, 2)
    sisnri = si_snr_improvement(refs.double(), est, mom)
    return {"momi": sisnri.mean(1).numpy(), "sisnr": sisnr.numpy(), "sisnri": sisnri.numpy()}


def ci(values: np.ndarray) -> str:
    from separator_ablation import bootstrap

    lo, hi = bootstrap(np.asarray(values, np.float64))
    return f"{np.mean(values):.2f} [{lo:.2f}, {hi:.2f}]"


def lost_rows(g: int, refs: torch.Tensor, sources: torch.Tensor, lost: np.ndarray) -> list[dict]:
    """For each mixture that loses a recording: both references' SI-SNR, which outputs the MixIT
    assignment gives each, and each output's share of each reference (⟨ŝ_m, r⟩ / ‖r‖²)."""
    from birdsep.separation.mixit import best_assignment, si_snr

    rows = []
    for k in np.flatnonzero(lost):
        r, s = refs[k].double(), sources[k].double()  # (2, T), (M, T)
        a = best_assignment(r[None], s[None])[0]  # (2, M)
        share = (s @ r.T) / (r * r).sum(-1)  # (M, 2)
        rows.append({"gap": f"{g} dB", "mixture": int(k),
                     "SI-SNR louder / quieter": " / ".join(f"{v:.1f}" for v in si_snr(r, a @ s).tolist()),
                     "outputs of louder / quieter": " / ".join(
                         ",".join(str(m + 1) for m in np.flatnonzero(a[i].numpy())) or "none" for i in range(2)),
                     "each output's share of louder | quieter": "  ".join(
                         f"{share[m, 0]:.2f}|{share[m, 1]:.2f}" for m in range(s.shape[0]))})
    return rows


def level_table(model, sampler, per_gap: int, seed: int, show_lost: list | None = None) -> tuple[list[dict], dict]:
    rows, summary = [], {}
    for g in GAPS:
        refs = pairs(sampler, per_gap, seed + g, g)
        sources = separate(model, refs.sum(1))
        s = scores(refs, sources)
        quiet = s["sisnri"][:, 1]
        lost = (s["sisnr"].min(1) < LOST_DB)
        if show_lost is not None:
            show_lost += lost_rows(g, refs, sources, lost)
        rows.append({"level difference": f"{g} dB", "MoMi [95 % CI]": ci(s["momi"]),
                     "quieter recording SI-SNRi": ci(quiet), "its SI-SNR": ci(s["sisnr"][:, 1]),
                     "louder's SI-SNR": ci(s["sisnr"][:, 0]), "lose a recording": f"{lost.mean():.1%}"})
        summary[g] = {"momi": float(s["momi"].mean()), "lost": float(lost.mean()), "quiet_sisnri": float(quiet.mean()),
                      "quiet_sisnr": float(s["sisnr"][:, 1].mean())}
    return rows, summary


def natural_table(model, sampler, count: int, seed: int) -> dict:
    refs = pairs(sampler, count, seed, None)
    s = scores(refs, separate(model, refs.sum(1)))
    lost = s["sisnr"].min(1) < LOST_DB
    return {"mixtures": count, "MoMi [95 % CI]": ci(s["momi"]), "median": f"{np.median(s['momi']):.2f}",
            "10th percentile": f"{np.percentile(s['momi'], 10):.2f}", "lose a recording": f"{lost.mean():.1%}"}


def planted(rate: int, count: int, seed: int, labels: list[str]) -> list[dict]:
    """Songs of held-out species (with BirdNET labels) planted in Jura background windows."""
    import table2_synthetic as TS
    from birdsep import audio
    from birdsep.separation.data import cut_song

    mapping = TS.species_map(labels)
    held = heldout_files()
    songs = {}
    for f in held:
        sp = f.parent.name
        if sp in mapping and f.suffix == ".mp3" and not f.stem.startswith(TS.BAD_CLIPS):
            x = audio.load(f, rate)[0]
            for k in range(0, max(1, int(len(x) / rate) - 8), 8):  # one song per 8 s stretch
                s = cut_song(x[k * rate:(k + 8) * rate], rate)
                if s is not None:
                    songs.setdefault(sp, []).append(s)
    backgrounds = sorted((DATA / "soundscapes" / "jura_forest_24h").glob("*.flac"))
    rng = np.random.default_rng(seed)
    n = int(SECONDS * rate)
    species = sorted(songs)
    out = []
    for i in range(count):
        bg = audio.load(backgrounds[rng.integers(len(backgrounds))], rate)[0][:n]
        bg = np.pad(bg, (0, n - len(bg)))
        sp = species[i % len(species)]
        song = songs[sp][rng.integers(len(songs[sp]))][:n - rate // 10]
        at = int(rng.integers(0, n - len(song)))
        level = rng.uniform(-35, 0)
        src = np.zeros(n)
        span = slice(at, at + len(song))
        src[span] = song * (_rms(bg[span]) / _rms(song)) * 10 ** (level / 20)
        out.append({"background": bg, "song": src, "span": (at, at + len(song)), "level": level,
                    "label": mapping[sp]})
    return out


def planted_table(model, scenes: list[dict], classifier) -> list[dict]:
    from birdsep import audio

    rate = model.config.sample_rate
    mix = torch.from_numpy(np.stack([sc["background"] + sc["song"] for sc in scenes]).astype(np.float32))
    tracks = separate(model, mix).double().numpy()  # (K, M, T)
    shares, mix_scores, track_scores = [], [], []
    col = {lab: j for j, lab in enumerate(classifier.labels)}
    n_cls = int(round(classifier.window_seconds * classifier.sample_rate))
    for sc, tr, mx in zip(scenes, tracks, mix.numpy()):
        s = sc["song"]
        share = tr @ s / max(s @ s, 1e-20)  # (M,)
        best = int(np.argmax(share))
        shares.append(float(share[best]))
        a, b = sc["span"]
        centre = (a + b) // 2
        half = int(classifier.window_seconds * rate / 2)
        lo = max(0, min(centre - half, len(s) - 2 * half))

        def score(x):
            y = audio.resample(x[lo:lo + 2 * half], rate, classifier.sample_rate)
            y = np.pad(y, (0, max(0, n_cls - len(y))))[:n_cls]
            return float(classifier.predict(y[None].astype(np.float32))[0, col[sc["label"]]])

        mix_scores.append(score(mx))
        track_scores.append(score(tr[best]))
    levels = np.array([sc["level"] for sc in scenes])
    shares, mix_scores, track_scores = map(np.array, (shares, mix_scores, track_scores))
    rows = []
    for lo_db, hi_db in LEVEL_BANDS:
        sel = (levels >= lo_db) & (levels < hi_db)
        if not sel.any():
            continue
        rows.append({"song level vs background": f"{lo_db}…{hi_db} dB", "songs": int(sel.sum()),
                     "share in best track": f"{shares[sel].mean():.2f}",
                     "BirdNET on mix": f"{mix_scores[sel].mean():.3f}",
                     "BirdNET on best track": f"{track_scores[sel].mean():.3f}",
                     "track > mix": f"{np.mean(track_scores[sel] > mix_scores[sel]):.0%}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["separator_stft_m4", "separator_stft_m8"])
    ap.add_argument("--per-gap", type=int, default=48, help="mixtures per level difference")
    ap.add_argument("--natural", type=int, default=200, help="mixtures at natural levels (0: skip)")
    ap.add_argument("--planted", type=int, default=96, help="songs planted in real background (0: skip)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--show-lost", action="store_true",
                    help="list the level mixtures that lose a recording: where each reference went")
    ap.add_argument("--path", choices=("bf16", "fp32", "forward"), default="bf16",
                    help="birdsep's inference path in bf16 (default: what `birdsep separate` takes on a CPU with "
                         "bf16 support) or fp32, or the model's own forward")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    PATH["how"] = a.path
    header("Faint birds: separators across level differences, on held-out species")
    from birdsep.pretrained import load_model, resolve
    from birdsep.separation.data import RecordingIndex, WindowSampler

    index = RecordingIndex.build([str(f) for f in heldout_files()], progress=False)
    print(f"held-out recordings: {len(index.recordings)} ({index.hours * 60:.0f} min) of "
          f"{len({Path(r.path).parent.name for r in index.recordings})} species\n")
    classifier = None
    if a.planted:
        from birdsep.backends import load_classifier

        classifier = load_classifier("birdnet", threads=a.threads)
    summaries, natural = {}, []
    for name in a.models:
        t0 = time.time()
        model = load_model(name)
        rate = model.config.sample_rate
        sampler = WindowSampler(index, SECONDS, rate)
        folder = resolve(name)
        print(f"## {name} ({folder}; M = {model.config.num_sources}, {rate} Hz; separated by {a.path})")
        shown = [] if a.show_lost else None
        rows, summaries[name] = level_table(model, sampler, a.per_gap, a.seed, shown)
        print(f"Level differences ({a.per_gap} mixtures each; equal RMS, the second recording lowered)")
        table(rows)
        if shown:
            print("Mixtures that lose a recording (outputs numbered 1…M)")
            table(shown)
        if a.natural:
            natural.append({"separator": name, **natural_table(model, sampler, a.natural, a.seed + 100)})
        if a.planted:
            print(f"Faint songs planted in real Jura recorder background ({a.planted} songs, 6 s windows)")
            table(planted_table(model, planted(rate, a.planted, a.seed + 200, classifier.labels), classifier))
        print(f"({time.time() - t0:.0f} s)\n")
    if natural:
        print("Natural levels (the paper's evaluation: random 6 s windows summed as they are)")
        table(natural)
    print("Summary: MoMi (dB) by level difference, and recordings lost over all gaps")
    rows = []
    for name, s in summaries.items():
        rows.append({"separator": name, **{f"{g} dB": f"{s[g]['momi']:.1f}" for g in GAPS},
                     **{f"quieter's SI-SNR at {g} dB": f"{s[g]['quiet_sisnr']:.1f}" for g in GAPS[2:]},
                     "lost": f"{np.mean([s[g]['lost'] for g in GAPS]):.1%}"})
    table(rows)


if __name__ == "__main__":
    main()
