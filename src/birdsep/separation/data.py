"""Mixtures of mixtures (MoMs) from folders of unlabelled recordings.

A :class:`RecordingIndex` scans the files once (block by block, memory flat) for their
length and an energy profile; windows are then read straight from disk at the file's own
rate and resampled with soxr, so a corpus of thousands of hours needs no decoding pass into
memory. Windows with energy are favoured: all-silent windows teach MixIT nothing.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from birdsep import audio
from birdsep.errors import AudioError
from birdsep.files import find_audio, write_text

log = logging.getLogger(__name__)

FRAME_SECONDS = 0.5  # energy profile resolution
MIN_SECONDS = 1.0  # shorter files are skipped
SILENT_DB = -80.0  # files whose loudest frame is below this (dBFS) are skipped
ACTIVE_MARGIN_DB = 6.0  # a window is "active" this far above the file's noise floor
QUIET_WEIGHT = 0.1  # relative chance of drawing a window that is not active


@dataclass
class ScannedRecording:
    path: str
    sample_rate: int
    frames: int
    frame_db: list[float]  # energy (dBFS) of consecutive FRAME_SECONDS frames

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def scan(path: str | os.PathLike) -> ScannedRecording:
    """Read a file once, block by block, for its energy profile. Raises :class:`AudioError`."""
    meta = audio.info(path)
    if meta.duration < MIN_SECONDS:
        raise AudioError(path, f"too short ({meta.duration:.2f} s < {MIN_SECONDS:g} s)")
    hop = int(FRAME_SECONDS * meta.sample_rate)
    db: list[float] = []
    carry = np.zeros(0, dtype=np.float32)
    frames = 0
    for block in audio.blocks(path, block_seconds=60.0):
        frames += len(block)
        carry = np.concatenate([carry, block])
        n = len(carry) // hop
        if n:
            power = np.mean(carry[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)
            db.extend((10 * np.log10(power + 1e-12)).tolist())
            carry = carry[n * hop:]
    if len(carry) > hop // 4:
        db.append(float(10 * np.log10(np.mean(carry.astype(np.float64) ** 2) + 1e-12)))
    if frames / meta.sample_rate < MIN_SECONDS:
        raise AudioError(path, f"too short ({frames / meta.sample_rate:.2f} s < {MIN_SECONDS:g} s)")
    if not db or max(db) < SILENT_DB:
        raise AudioError(path, f"silent (loudest {FRAME_SECONDS:g} s frame below {SILENT_DB:g} dBFS)")
    return ScannedRecording(str(path), meta.sample_rate, frames, [round(v, 2) for v in db])


def collect(inputs: list[str], exclude: tuple[str, ...] = ()) -> list[Path]:
    """Audio files under ``inputs``, minus those matching any ``exclude`` glob (path or name)."""
    files = []
    for f, _root in find_audio(inputs):
        if any(fnmatch.fnmatch(str(f), pat) or fnmatch.fnmatch(f.name, pat) for pat in exclude):
            continue
        files.append(f)
    return files


class RecordingIndex:
    """The usable recordings of a corpus with their energy profiles (optionally cached as JSON)."""

    def __init__(self, recordings: list[ScannedRecording], skipped: list[str]):
        self.recordings = recordings
        self.skipped = skipped

    @classmethod
    def build(cls, inputs: list[str], exclude: tuple[str, ...] = (), cache: Path | None = None,
              progress: bool = True) -> "RecordingIndex":
        files = collect(inputs, exclude)
        cached: dict[str, dict] = {}
        if cache is not None and cache.exists():
            try:
                cached = json.loads(cache.read_text())
            except (OSError, ValueError):
                cached = {}
        recordings, skipped, fresh = [], [], {}
        from tqdm import tqdm

        for f in tqdm(files, desc="scanning audio", unit="file", disable=not progress or len(files) < 20):
            st = f.stat()
            key = f"{f.resolve()}|{st.st_size}|{int(st.st_mtime)}"
            entry = cached.get(key)
            if entry is None:
                try:
                    entry = asdict(scan(f))
                except AudioError as exc:
                    entry = {"error": exc.reason, "path": str(f)}
            fresh[key] = entry
            if "error" in entry:
                skipped.append(f"{f}: {entry['error']}")
                log.debug("skipping %s: %s", f, entry["error"])
            else:
                recordings.append(ScannedRecording(**entry))
        if cache is not None:
            write_text(cache, json.dumps(fresh))
        return cls(recordings, skipped)

    @property
    def hours(self) -> float:
        return sum(r.duration for r in self.recordings) / 3600


class WindowSampler:
    """Draws ``seconds``-long windows, favouring those with energy, and reads them resampled."""

    def __init__(self, index: RecordingIndex, seconds: float, sample_rate: int):
        if not index.recordings:
            raise ValueError("no usable recordings")
        self.recordings = index.recordings
        self.seconds, self.sample_rate = seconds, sample_rate
        self.length = int(round(seconds * sample_rate))
        self.starts: list[np.ndarray] = []  # candidate start frames per file
        self.weights: list[np.ndarray] = []
        k = max(1, int(round(seconds / FRAME_SECONDS)))
        for rec in self.recordings:
            db = np.asarray(rec.frame_db)
            power = 10 ** (db / 10)
            n = max(1, len(db) - k + 1)
            window_db = 10 * np.log10(np.convolve(power, np.ones(k) / k, mode="valid")[:n] + 1e-12) if len(db) >= k \
                else np.array([10 * np.log10(power.mean() + 1e-12)])
            floor = np.percentile(db, 10)
            w = np.where(window_db >= floor + ACTIVE_MARGIN_DB, 1.0, QUIET_WEIGHT)
            w = np.where(window_db < SILENT_DB, 0.0, w)
            self.starts.append(np.arange(len(w)))
            self.weights.append(w)
        totals = np.array([w.sum() for w in self.weights])
        self.file_p = totals / totals.sum()

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One window (T,) float32 at ``sample_rate``; shorter files are zero-padded at a random offset."""
        i = rng.choice(len(self.recordings), p=self.file_p)
        rec, w = self.recordings[i], self.weights[i]
        j = rng.choice(len(w), p=w / w.sum())
        start = (self.starts[i][j] + rng.uniform(0, 1)) * FRAME_SECONDS
        start = min(start, max(0.0, rec.duration - self.seconds))
        x = self.read(rec, start)
        if len(x) < self.length:
            off = int(rng.integers(0, self.length - len(x) + 1))
            x = np.pad(x, (off, self.length - len(x) - off))
        return x[: self.length]

    def read(self, rec: ScannedRecording, start: float) -> np.ndarray:
        first = int(start * rec.sample_rate)
        n = int(math.ceil(self.seconds * rec.sample_rate)) + 1
        try:
            x, sr = sf.read(rec.path, start=first, frames=n, dtype="float32", always_2d=True)
        except Exception as exc:  # a file that changed or broke since it was scanned
            log.warning("cannot read %s at %.1f s: %s", rec.path, start, exc)
            return np.zeros(self.length, dtype=np.float32)
        x = np.nan_to_num(audio.to_mono(x))
        return audio.resample(x, sr, self.sample_rate)


def normalise(x: np.ndarray, rng: np.random.Generator, low_db: float = -40.0, high_db: float = -15.0) -> np.ndarray:
    """Scale to a random RMS level in [low_db, high_db] dBFS (silent input stays silent)."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if rms < 1e-7:
        return x
    return (x * (10 ** (rng.uniform(low_db, high_db) / 20) / rms)).astype(np.float32)


def floor_noise(x: np.ndarray, rng: np.random.Generator, percentile: float = 20.0, n_fft: int = 1024) -> np.ndarray:
    """Stationary noise (T,) with the spectrum of ``x``'s floor: in each frequency bin the
    ``percentile`` of the window's STFT magnitudes (what is there most of the time: the
    recorder's hiss, insects, wind), given random phases. Bird songs, being brief, are above
    the floor and left out. Empty for a silent ``x``."""
    from scipy.signal import istft, stft

    t = len(x)
    _, _, z = stft(x.astype(np.float64), nperseg=n_fft, noverlap=3 * n_fft // 4)  # (F, frames)
    floor = np.percentile(np.abs(z), percentile, axis=1, keepdims=True)  # (F, 1)
    phases = np.exp(2j * np.pi * rng.random(z.shape))
    _, y = istft(floor * phases, nperseg=n_fft, noverlap=3 * n_fft // 4)
    return np.pad(y, (0, max(0, t - len(y))))[:t].astype(np.float32)


def band_envelope(x: np.ndarray, sample_rate: int, frame: int) -> np.ndarray:
    """(T,) → energy (dB) of consecutive ``frame``-sample frames in 1–12 kHz, where songbirds sing
    (the band stops below Nyquist for low sample rates)."""
    from scipy.signal import butter, sosfilt

    sos = butter(4, [1000, min(12000, 0.45 * sample_rate)], btype="band", fs=sample_rate, output="sos")
    y = sosfilt(sos, np.asarray(x, np.float64))
    n = len(y) // frame
    return 10 * np.log10(np.mean(y[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)


def cut_song(x: np.ndarray, sample_rate: int, min_s: float = 0.6, max_s: float = 4.0,
             margin_db: float = 12.0) -> np.ndarray | None:
    """The loudest vocalisation of a recording (T,): 20 ms frames ≥ ``margin_db`` over its floor
    (20th percentile) in 1–12 kHz, gaps < 0.3 s bridged, ``min_s`` … ``max_s`` long, cut with
    50 ms margins and 20 ms fades. None if nothing fits."""
    frame = int(0.02 * sample_rate)
    db = band_envelope(x, sample_rate, frame)
    if len(db) < 10:
        return None
    active = np.concatenate([[False], db > np.percentile(db, 20) + margin_db, [False]])
    edges = np.flatnonzero(np.diff(active.astype(np.int8)))  # run starts and ends, alternating
    merged: list[list[int]] = []
    for a, b in zip(edges[::2], edges[1::2]):
        if merged and a - merged[-1][1] < 15:  # a gap under 0.3 s
            merged[-1][1] = b
        else:
            merged.append([a, b])
    good = [r for r in merged if min_s <= (r[1] - r[0]) * 0.02 <= max_s]
    if not good:
        return None
    best = max(good, key=lambda r: db[r[0]:r[1]].mean())
    pad = int(0.05 * sample_rate)
    a, b = max(0, best[0] * frame - pad), min(len(x), best[1] * frame + pad)
    song = np.asarray(x[a:b], np.float64).copy()
    fade = min(int(0.02 * sample_rate), len(song) // 2)
    ramp = np.sin(0.5 * np.pi * np.arange(fade) / max(fade, 1)) ** 2
    song[:fade] *= ramp
    song[len(song) - fade:] *= ramp[::-1]
    return song


def draw_song_scene(sampler: WindowSampler, rng: np.random.Generator, sources: int, tries: int = 8) -> np.ndarray:
    """A scene with known sources (M, T), rows summing to the separator's input: row 0 a
    background (the steadier of two windows, −45 … −25 dBFS), rows 1 … K one vocalisation each
    (:func:`cut_song` of a window of another draw, 0 … +20 dB over the background, at a random
    place), K from 1 to M − 1, the remaining rows silent. Trained with :func:`birdsep.separation.
    mixit.pit_loss`, a vocalisation split over two outputs costs loss (unlike MixIT's)."""
    t = sampler.length
    out = np.zeros((sources, t), np.float32)
    backs = [sampler.draw(rng) for _ in range(2)]
    spread = [np.ptp(np.percentile(band_envelope(b, sampler.sample_rate, int(0.02 * sampler.sample_rate)),
                                   [20, 95])) for b in backs]
    back = backs[int(np.argmin(spread))].astype(np.float64)
    back_rms = float(np.sqrt(np.mean(back ** 2)))
    level = 10 ** (rng.uniform(-45, -25) / 20)
    if back_rms > 1e-7:
        out[0] = back * (level / back_rms)
    for k in range(1, 1 + int(rng.integers(1, sources))):
        for _ in range(tries):
            song = cut_song(sampler.draw(rng), sampler.sample_rate)
            if song is not None and len(song) <= t:
                break
        else:
            continue
        off = int(rng.integers(0, t - len(song) + 1))
        rms = float(np.sqrt(np.mean(song ** 2)))
        out[k, off:off + len(song)] = song * (level * 10 ** (rng.uniform(0, 20) / 20) / max(rms, 1e-12))
    return out


def song_batch(sampler: WindowSampler, size: int, sources: int, rng: np.random.Generator) -> dict:
    """``{"sources": (B, M, T)}``: a batch of :func:`draw_song_scene`."""
    return {"sources": torch.from_numpy(np.stack([draw_song_scene(sampler, rng, sources) for _ in range(size)]))}


def draw_mom(sampler: WindowSampler, rng: np.random.Generator, references: int = 2,
             noise_share: float = 0.0, level_gap: float = 0.0) -> np.ndarray:
    """``references`` reference mixtures (N, T), windows of different draws: their sum is the
    separator's input. The paper's MoM has N = 2; N = M (as many as the separator has outputs)
    leaves it no output to spare, so nothing one window holds may be split over two outputs.
    With probability ``noise_share`` the last reference is :func:`floor_noise` of another draw:
    MixIT then asks for the noise on outputs of its own, apart from any bird sound in its band.

    Levels: each window at its own random level (:func:`normalise`), or with ``level_gap`` G > 0
    the first at a random level and every other one below it by a gap drawn from U(0, G) dB, so
    that faint recordings under loud ones (a distant bird under a near one) are common in
    training rather than a tail of the level draw."""
    if level_gap <= 0:
        windows = [normalise(sampler.draw(rng), rng) for _ in range(references)]
        if noise_share > 0 and rng.random() < noise_share:
            windows[-1] = normalise(floor_noise(windows[-1], rng), rng)
        return np.stack(windows)
    windows = [sampler.draw(rng) for _ in range(references)]
    if noise_share > 0 and rng.random() < noise_share:
        windows[-1] = floor_noise(windows[-1], rng)
    top = rng.uniform(-40.0, -15.0)
    levels = [top] + [top - rng.uniform(0.0, level_gap) for _ in windows[1:]]
    order = rng.permutation(len(windows))  # the quieter ones are not always the last (the noise)
    return np.stack([normalise(w, rng, levels[k], levels[k]) for w, k in zip(windows, order)])


def mom_batch(sampler: WindowSampler, size: int, place: int, rng: np.random.Generator,
              references: int = 2, share: float = 0.0, noise_share: float = 0.0,
              song_share: float = 0.0, sources: int = 4, level_gap: float = 0.0) -> torch.Tensor | dict:
    """A training batch of ``size`` MoMs (B, N, T) drawn with ``rng`` (``place``: the batch's
    number, :mod:`birdsep.stepbatches`). N = 2, or N = ``references`` for a ``share`` of the batches;
    ``noise_share``, ``level_gap``: see :func:`draw_mom`. A ``song_share`` of the batches are instead
    :func:`song_batch` es of scenes with ``sources`` known sources."""
    if song_share > 0 and rng.random() < song_share:
        return song_batch(sampler, size, sources, rng)
    n = references if share > 0 and rng.random() < share else 2
    return torch.from_numpy(np.stack([draw_mom(sampler, rng, n, noise_share, level_gap) for _ in range(size)]))


class MoMDataset(torch.utils.data.IterableDataset):
    """An endless stream of MoMs (2, T), seeded per seed, rank and worker."""

    def __init__(self, sampler: WindowSampler, seed: int):
        super().__init__()
        self.sampler, self.seed = sampler, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, worker])
        while True:
            yield torch.from_numpy(draw_mom(self.sampler, rng))


def fixed_moms(sampler: WindowSampler, count: int, seed: int):
    """The same ``count`` MoMs for the same corpus and seed: an evaluation set. Yields (2, T)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield torch.from_numpy(draw_mom(sampler, rng))
