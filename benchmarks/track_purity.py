"""One bird per track: how much of each planted bird ends up in its single best track.

Builds long recordings (default 4 scenes × 3 min, 32 kHz) from a real recorder background
(../shared/data/noise/field/BR_clear_*: ARU clips with no rain, looped with cross-fades) and
2–4 birds of species kept out of separator training (``splits/heldout_species.txt``), each
repeating one of its own songs, cut from its Xeno-canto recording, with 3–12 s of silence
between songs. Each scene is separated with ``birdsep.separate`` exactly as a user would
(12 s blocks unless `--block` says otherwise, cross-fades, track alignment, default precision).

For every planted song s (samples t0…t1) and every output track y_m, the share of the song
in the track is its projection coefficient c_m = ⟨y_m, s⟩ / ‖s‖² over t0…t1 (the tracks sum
to the input, so the c_m sum to ≈ 1; negative ones count as 0). A bird's share in track m
over the whole file is the song-energy-weighted mean of c_m over its songs; its **purity**
is its share in its single best track. For a 22.05 kHz model, whatever the model could not
see (``high_band.wav``: the input minus the sum of the tracks) is one more "track" that can
hold part of a bird but is never its best one. ``songs on track`` is the share of songs whose
largest part lies in the bird's best track (1.0: no identity swaps). ``song purity`` is the
song-energy-weighted mean of each song's own largest share: purity as it would be with perfect
alignment between blocks, so purity well below song purity means identity swaps, and song
purity below 1 means songs split over tracks (over-separation). ``frame purity`` is the same
per 20 ms frame of each song (the frame's largest share, energy-weighted): song purity well
below frame purity means a song's notes alternate between tracks (one note here, the next
there); frame purity below 1, that the same instant is split (one band here, another there).
Purity alone would reward a
separator that puts everything in one track: ``own track`` is the share of birds whose best
track is no other planted bird's best track in the same scene (1.0: every bird has a track of
its own). ``in background`` is the share of birds whose best track is the background's (the
track holding most of the energy between songs): a bird kept with the recorder's noise.

``merged`` is song purity after an oracle regrouping: in each block, the tracks whose largest
part is the same planted bird (or the background) are summed into one. It bounds what any
regrouping of the separator's tracks after the fact could reach while keeping birds apart (it
knows which bird each track holds; a part of a bird left in a track the background or another
bird dominates stays there).

Goal (issue 11): mean purity ≥ 0.9 and no bird below 0.8. The mean comes with a 95 % bootstrap
interval over the planted birds.

With ``--birdnet``, every song is also scored by BirdNET V2.4 (3 s windows centred on the
song, at 48 kHz) for the planted species (species BirdNET does not know are left out): on
the mixture, on the bird's best track, and, for band-limited models, on that track plus
``high_band`` (the whole part of the input the model never saw, given back to the track):
how much of what a classifier needs each kind of track keeps.

    .venv/bin/python benchmarks/track_purity.py --model src/birdsep/models/separator_small_m4 \\
        --model ~/birdsep-runs/stft_m4
"""
from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import header, table
from birdsep.separation.data import cut_song

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RATE = 32000
FRAME = RATE // 50  # 20 ms, for frame purity


@dataclass
class Song:
    bird: int
    start: int
    signal: np.ndarray  # (n,) as planted


@dataclass
class Scene:
    mixture: np.ndarray  # (T,)
    songs: list[Song]
    birds: list[str]  # species per bird


def heldout_recordings(data: Path) -> dict[str, list[Path]]:
    globs = [g for g in (line.split("#", 1)[0].strip() for line in (HERE / "splits" / "heldout_species.txt")
                         .read_text().splitlines()) if g]
    by_species: dict[str, list[Path]] = {}
    for folder in ("xc", "xc_extra"):
        for f in sorted((data / folder).glob("*/*.mp3")):
            if any(fnmatch.fnmatch(str(f), g) for g in globs):
                by_species.setdefault(f.parent.name, []).append(f)
    return by_species


def background(data: Path, seconds: float) -> np.ndarray:
    from birdsep import audio

    clips = [audio.load(f, RATE)[0] for f in sorted((data / "noise" / "field").glob("BR_clear_*"))]
    fade = int(0.5 * RATE)
    out = clips[0].astype(np.float64)
    i = 1
    while len(out) < seconds * RATE:
        nxt = clips[i % len(clips)].astype(np.float64)
        ramp = np.sin(0.5 * np.pi * np.arange(fade) / fade) ** 2
        out[-fade:] = out[-fade:] * ramp[::-1] + nxt[:fade] * ramp
        out = np.concatenate([out, nxt[fade:]])
        i += 1
    out = out[: int(seconds * RATE)]
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12) * 10 ** (-40 / 20)  # −40 dBFS RMS


def make_scenes(data: Path, count: int, seconds: float, seed: int) -> list[Scene]:
    from birdsep import audio

    rng = np.random.default_rng(seed)
    recordings = heldout_recordings(data)
    songs: dict[str, np.ndarray] = {}
    for species, files in recordings.items():
        for f in files:
            s = cut_song(audio.load(f, RATE)[0], RATE)
            if s is not None:
                songs[species] = s
                break
    names = sorted(songs)
    bg = background(data, seconds)
    scenes = []
    for i in range(count):
        n_birds = [2, 3, 4][i % 3]
        chosen = list(rng.choice(names, n_birds, replace=False))
        mix = bg.copy()
        planted = []
        for b, species in enumerate(chosen):
            song = songs[species]
            level = rng.uniform(-6, 12)  # dB of the song's RMS over the background's
            t = rng.uniform(0, 6)
            while t * RATE + len(song) < len(mix):
                gain = 10 ** ((level + rng.uniform(-2, 2)) / 20) * 10 ** (-40 / 20) / (np.sqrt(np.mean(song ** 2)) + 1e-12)
                start = int(t * RATE)
                planted.append(Song(b, start, song * gain))
                mix[start:start + len(song)] += song * gain
                t += len(song) / RATE + rng.uniform(3, 12)
        scenes.append(Scene(mix.astype(np.float32), planted, chosen))
    return scenes


def purity(scene: Scene, tracks: np.ndarray) -> list[dict]:
    """tracks (K, T): the separated tracks (plus, for band-limited models, the high band as the last)."""
    n_birds = len(scene.birds)
    share = np.zeros((n_birds, tracks.shape[0]))
    weight = np.zeros(n_birds)
    song_best: list[list[int]] = [[] for _ in range(n_birds)]
    song_top = np.zeros(n_birds)  # Σ energy × the song's largest share
    frame_top = np.zeros(n_birds)  # Σ over 20 ms frames of energy × the frame's largest share
    hop = FRAME
    for song in scene.songs:
        s = song.signal
        seg = tracks[:, song.start:song.start + len(s)].astype(np.float64)  # (K, n)
        energy = float(s @ s)
        c = np.maximum(seg @ s / energy, 0.0)
        c = c / (c.sum() + 1e-12)
        share[song.bird] += energy * c
        weight[song.bird] += energy
        song_best[song.bird].append(int(np.argmax(c)))
        song_top[song.bird] += energy * float(c.max())
        n = len(s) // hop
        frames = s[: n * hop].reshape(n, hop)  # (n, hop)
        e = np.einsum("nh,nh->n", frames, frames)
        cf = np.maximum(np.einsum("knh,nh->kn", seg[:, : n * hop].reshape(len(seg), n, hop), frames), 0.0)
        cf = cf / (cf.sum(0) + 1e-12 * e.max())  # (K, n) each frame's shares
        frame_top[song.bird] += float(e @ cf.max(0)) * energy / max(float(e.sum()), 1e-30)
    best = [int(np.argmax(share[b])) for b in range(n_birds)]
    quiet = np.ones(tracks.shape[1], bool)  # samples where no planted song sounds
    for song in scene.songs:
        quiet[song.start:song.start + len(song.signal)] = False
    background = int(np.argmax(np.einsum("kt,kt->k", tracks[:, quiet].astype(np.float64),
                                         tracks[:, quiet].astype(np.float64))))
    rows = []
    for b in range(n_birds):
        sh = share[b] / weight[b]
        rows.append({"species": scene.birds[b], "purity": float(sh[best[b]]), "track": best[b],
                     "songs": len(song_best[b]), "on_track": float(np.mean(np.asarray(song_best[b]) == best[b])),
                     "song_purity": float(song_top[b] / weight[b]), "frame_purity": float(frame_top[b] / weight[b]),
                     "own_track": float(best.count(best[b]) == 1),
                     "in_background": float(best[b] == background)})
    return rows


def oracle_merge(scene: Scene, tracks: np.ndarray, block: int) -> np.ndarray:
    """(K, T) tracks → (birds + 1, T): in each ``block`` of samples, every track summed into the
    row of what holds most of it there (bird b → row b; the background → the last row).

    A track's content from bird b in a block is Σ over b's songs there of ‖s‖² · c (c the
    song's projection coefficient on the track, as in :func:`purity`); its background content
    is its energy where no song sounds, scaled to the block's length.
    """
    n_birds = len(scene.birds)
    t = tracks.astype(np.float64)
    merged = np.zeros((n_birds + 1, t.shape[1]))
    for b0 in range(0, t.shape[1], block):
        b1 = min(t.shape[1], b0 + block)
        held = np.zeros((n_birds + 1, len(t)))  # (birds + 1, K)
        quiet = np.ones(b1 - b0, bool)
        for song in scene.songs:
            a, e = max(song.start, b0), min(song.start + len(song.signal), b1)
            if e <= a:
                continue
            s = song.signal[a - song.start:e - song.start].astype(np.float64)
            held[song.bird] += np.maximum(t[:, a:e] @ s, 0.0)  # = ‖s‖² · c
            quiet[a - b0:e - b0] = False
        if quiet.any():
            held[n_birds] = np.einsum("kt,kt->k", t[:, b0:b1][:, quiet], t[:, b0:b1][:, quiet]) * len(quiet) / quiet.sum()
        owner = held.argmax(0)  # (K,)
        for k, o in enumerate(owner):
            merged[o, b0:b1] += t[k, b0:b1]
    return merged


def birdnet_label(species_slug: str, backend) -> int | None:
    """The BirdNET label index of a Xeno-canto folder's species (common name match), or None."""
    common = species_slug.replace("_", " ").lower()
    variants = {common, common.replace("s ", "'s ", 1)}
    for i, label in enumerate(backend.labels):
        name = label.split("_", 1)[-1].lower().replace("-", " ")
        if name in variants or name.replace("'", "") == common:
            return i
    return None


def birdnet_scores(scene: Scene, tracks: np.ndarray, best: dict[int, int], high_band: np.ndarray | None,
                   backend) -> list[dict]:
    """Per song: BirdNET's score for its species on the mix, the best track (and track + high band)."""
    from birdsep import audio

    n = int(backend.window_seconds * RATE)
    rows = []
    for song in scene.songs:
        label = birdnet_label(scene.birds[song.bird], backend)
        if label is None:
            continue
        centre = song.start + len(song.signal) // 2
        a = min(max(0, centre - n // 2), len(scene.mixture) - n)
        track = tracks[best[song.bird], a:a + n]
        windows = {"mix": scene.mixture[a:a + n], "track": track}
        if high_band is not None:
            windows["track+high"] = track + high_band[a:a + n]
        x = np.stack([audio.resample(w.astype(np.float32), RATE, backend.sample_rate) for w in windows.values()])
        x = x[:, : int(backend.window_seconds * backend.sample_rate)]
        scores = backend.predict(x)[:, label]
        rows.append(dict(zip(windows, scores.tolist())))
    return rows


def separate(model: str | None, mixture: np.ndarray, block_seconds: float = 12.0) -> np.ndarray:
    import birdsep

    sources, _ = birdsep.separate(mixture, RATE, model=model, block_seconds=block_seconds)  # (M, T) at RATE
    residual = mixture - sources.sum(0)  # what the model's band left out (zero for a 32 kHz model)
    if np.sqrt(np.mean(residual ** 2)) > 1e-3 * np.sqrt(np.mean(mixture ** 2)):
        sources = np.concatenate([sources, residual[None]], axis=0)
    return sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="model folder or run directory (repeatable; default: the shipped model)")
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--block", type=float, default=12.0,
                    help="block length in seconds, as `birdsep separate --block` (default 12)")
    ap.add_argument("--per-bird", action="store_true", help="also print every bird's row")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write each model's summary as JSON")
    ap.add_argument("--birdnet", action="store_true", help="also score every song with BirdNET (needs birdsep[birdnet])")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    header(f"Track purity: {args.scenes} scenes × {args.minutes:g} min, held-out birds over a real background")
    scenes = make_scenes(DATA, args.scenes, args.minutes * 60, args.seed)
    from birdsep.pretrained import load_model

    backend = None
    if args.birdnet:
        from birdsep.backends import BirdNET

        backend = BirdNET(threads=args.threads or 1)
    print(f"{sum(len(s.birds) for s in scenes)} planted birds, {sum(len(s.songs) for s in scenes)} songs\n")
    summary, detail, found = [], [], {}
    for model in args.model or [None]:
        rows, scored = [], []
        for i, scene in enumerate(scenes):
            tracks = separate(model, scene.mixture, args.block)
            scene_rows = purity(scene, tracks)
            for r, m in zip(scene_rows, purity(scene, oracle_merge(scene, tracks, int(args.block * RATE)))):
                r["merged"] = m["song_purity"]
            if backend is not None:
                banded = tracks.shape[0] > (load_model(model).config.num_sources)
                best = {b: r["track"] for b, r in enumerate(scene_rows)}
                scored += birdnet_scores(scene, tracks[:-1] if banded else tracks, best,
                                         tracks[-1] if banded else None, backend)
            for r in scene_rows:
                rows.append(r)
                detail.append({"model": Path(model).name if model else "shipped", "scene": i, **{
                    k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()}})
        p = np.array([r["purity"] for r in rows])
        boot = np.random.default_rng(0).choice(p, (1000, len(p))).mean(1)  # birds resampled
        lo, hi = np.percentile(boot, [2.5, 97.5])
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("on_track", "song_purity", "frame_purity", "own_track",
                                                              "in_background", "merged")}
        found[model or "shipped default"] = {"mean": float(p.mean()), "mean_ci": [float(lo), float(hi)], "min": float(p.min()), "birds": len(rows),
                                             "songs_on_track": mean["on_track"], "song_purity": mean["song_purity"],
                                             "frame_purity": mean["frame_purity"], "merged": mean["merged"],
                                             "own_track": mean["own_track"], "in_background": mean["in_background"]}
        summary.append({"model": model or "shipped default", "birds": len(rows), "mean purity": f"{p.mean():.3f}",
                        "95 % CI (birds)": f"[{lo:.3f}, {hi:.3f}]",
                        "min purity": f"{p.min():.3f}", "birds ≥ 0.8": f"{(p >= 0.8).mean():.2f}",
                        "songs on track": f"{mean['on_track']:.3f}", "song purity": f"{mean['song_purity']:.3f}",
                        "frame purity": f"{mean['frame_purity']:.3f}", "merged": f"{mean['merged']:.3f}",
                        "own track": f"{mean['own_track']:.2f}", "in background": f"{mean['in_background']:.2f}"})
        if scored:
            for kind in ("mix", "track", "track+high"):
                vals = [r[kind] for r in scored if kind in r]
                summary[-1][f"BirdNET {kind}"] = f"{np.mean(vals):.3f}" if vals else "–"
                if vals:
                    found[model or "shipped default"][f"birdnet_{kind}"] = float(np.mean(vals))
    table(summary)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(found, indent=2))
    if args.per_bird:
        table(detail)


if __name__ == "__main__":
    main()
