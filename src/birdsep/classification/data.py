"""Weakly labelled training data: recordings with one primary species (and maybe background
species), their activity windows, label vectors per taxonomy head, and the augmenting dataset.

Input is either a folder with one sub-folder per species (``xc/<species>/*.mp3``) or a CSV
with a header and the columns ``file`` (relative to the CSV's folder), ``primary`` (or
``species``/``label``) and optionally ``background`` (labels separated by ``;``).

Decoded, resampled activity windows are cached in ``RUN_DIR/cache`` (float16 ``.npy``, one
file per recording keyed by path, size, mtime and settings), so later epochs, resumed runs
and further ensemble members never decode an MP3 again.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from birdsep import files
from birdsep.classification.activity import MAX_WINDOWS, WINDOW_SECONDS, detect_activity
from birdsep.audio import load
from birdsep.classification import augment as aug
from birdsep.classification.model import HEADS, ClassifierConfig
from birdsep.errors import AudioError, UsageError
from birdsep.files import AUDIO_EXTENSIONS, find_audio
from birdsep.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledRecording:
    path: Path
    primary: str
    background: tuple[str, ...] = ()


def read_labelled(data: str | os.PathLike) -> list[LabelledRecording]:
    """Recordings of a species-per-folder tree or a labels CSV (see module doc)."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return _read_csv(data)
    if not data.is_dir():
        raise UsageError.of(data, "training data must be a folder of species folders or a labels CSV")
    recs = []
    for sub in sorted(p for p in data.iterdir() if p.is_dir()):  # symlinked folders count too
        recs.extend(LabelledRecording(f, sub.name) for f, _ in find_audio([sub]))
    if not recs:
        raise UsageError.of(data, "no audio files inside species folders")
    return recs


def _read_csv(path: Path) -> list[LabelledRecording]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UsageError.of(path, "labels CSV is empty")
    cols = {c.lower().strip(): c for c in rows[0]}
    fcol = cols.get("file") or cols.get("path")
    pcol = cols.get("primary") or cols.get("species") or cols.get("label")
    bcol = cols.get("background")
    if not fcol or not pcol:
        raise UsageError.of(path, "labels CSV needs columns 'file' and 'primary' (optional 'background')")
    recs = []
    for row in rows:
        f = Path(row[fcol].strip())
        f = f if f.is_absolute() else path.parent / f
        bg = tuple(b.strip() for b in (row.get(bcol) or "").split(";") if b.strip()) if bcol else ()
        if f.suffix.lower() not in AUDIO_EXTENSIONS:
            log.warning("%s: skipped (not an audio file name)", f)
            continue
        recs.append(LabelledRecording(f, row[pcol].strip(), bg))
    return recs


# ---------------------------------------------------------------------------- labels


class LabelSpace:
    """Maps recordings to target vectors and loss masks for each head (see :func:`taxonomic_loss`)."""

    def __init__(self, cfg: ClassifierConfig, taxonomy: Taxonomy):
        self.cfg = cfg
        self.taxonomy = taxonomy
        self.index = {h: {name: i for i, name in enumerate(getattr(cfg, h))} for h in ("species",) + LEVELS}

    @classmethod
    def build(cls, recordings: list[LabelledRecording], targets: list[str] | None, taxonomy: Taxonomy,
              **config) -> tuple["LabelSpace", ClassifierConfig]:
        species = list(targets) if targets else sorted({r.primary for r in recordings})
        all_species = species + sorted({s for r in recordings for s in (r.primary, *r.background)} - set(species))
        levels = {lvl: sorted({t for s in all_species if (t := taxonomy.lookup(s).level(lvl)) is not None})
                  for lvl in LEVELS}
        cfg = ClassifierConfig(species=tuple(species), **levels, **config)
        return cls(cfg, taxonomy), cfg

    def sizes(self) -> dict[str, int]:
        return self.cfg.head_sizes()

    def empty(self, mask: float) -> dict[str, np.ndarray]:
        out = {}
        for h, n in self.sizes().items():
            out[f"y_{h}"] = np.zeros(n, np.float32)
            out[f"m_{h}"] = np.full(n, mask, np.float32)
        return out

    def encode(self, rec: LabelledRecording) -> dict[str, np.ndarray]:
        """Targets ``y_<head>`` and masks ``m_<head>`` for one recording."""
        lab = self.empty(1.0)
        lab["y_bird"][:] = 1.0
        sp = self.index["species"]
        if rec.primary in sp:
            lab["y_species"][sp[rec.primary]] = 1.0
            for b in rec.background:
                if b in sp and b != rec.primary:
                    lab["m_species"][sp[b]] = 0.0  # background species: no loss either way
        else:
            lab["m_species"][:] = 0.0  # outside the target list: taxonomy heads only
        primary = self.taxonomy.lookup(rec.primary, warn=False)
        for lvl in LEVELS:
            idx = self.index[lvl]
            value = primary.level(lvl)
            if value is None or value not in idx:
                lab[f"m_{lvl}"][:] = 0.0
                continue
            lab[f"y_{lvl}"][idx[value]] = 1.0
            for b in rec.background:
                bv = self.taxonomy.lookup(b, warn=False).level(lvl)
                if bv is not None and bv != value and bv in idx:
                    lab[f"m_{lvl}"][idx[bv]] = 0.0
        return lab

    @staticmethod
    def no_labels(like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Labels of noise alone: every target 0 (not a bird, no species), every mask 1."""
        return {k: (np.zeros_like(v) if k.startswith("y_") else np.ones_like(v)) for k, v in like.items()}

    @staticmethod
    def union(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Labels of a mix of two examples: positives of either; masked where either is unsure."""
        out = {}
        for h in HEADS:
            y = np.maximum(a[f"y_{h}"], b[f"y_{h}"])
            out[f"y_{h}"] = y
            out[f"m_{h}"] = np.where(y > 0, 1.0, np.minimum(a[f"m_{h}"], b[f"m_{h}"])).astype(np.float32)
        return out


# ---------------------------------------------------------------------------- cache


def _cache_key(path: Path, *parts) -> str:
    st = path.stat()
    text = "|".join(map(str, (path.resolve(), st.st_size, st.st_mtime_ns, *parts)))
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _cached(cache_dir: Path, key: str, make) -> np.ndarray:
    f = cache_dir / f"{key}.npy"
    if f.is_file():
        try:
            return np.load(f)
        except (OSError, ValueError):
            f.unlink(missing_ok=True)  # a damaged cache file is rebuilt
    arr = make().astype(np.float16)
    with files.atomic(f) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)
    return arr


def activity_windows(path: Path, sr: int, cache_dir: Path | None, window_seconds: float = WINDOW_SECONDS,
                     max_windows: int = MAX_WINDOWS) -> np.ndarray:
    """Up to ``max_windows`` activity windows of ``path`` as (K, window samples) float16."""
    n = int(round(window_seconds * sr))

    def make():
        x, _ = load(path, sr, min_duration=0.5)
        wins = detect_activity(x, sr, window_seconds, max_windows)
        out = np.zeros((len(wins), n), np.float32)
        for i, w in enumerate(wins):
            seg = x[int(round(w.start * sr)) : int(round(w.start * sr)) + n]
            out[i, : len(seg)] = seg
        return out

    if cache_dir is None:
        return make().astype(np.float16)
    return _cached(cache_dir, _cache_key(path, "windows", sr, window_seconds, max_windows), make)


def noise_clips(folders: list[str | os.PathLike], sr: int, cache_dir: Path | None) -> list[np.ndarray]:
    """Every readable file of the noise folders, whole, at ``sr`` (unreadable ones are reported)."""
    clips = []
    for f, _ in find_audio(list(folders)):
        try:
            if cache_dir is None:
                clips.append(load(f, sr, min_duration=0.1)[0].astype(np.float16))
            else:
                clips.append(_cached(cache_dir, _cache_key(f, "noise", sr), lambda f=f: load(f, sr, min_duration=0.1)[0]))
        except AudioError as exc:
            log.warning("noise skipped: %s", exc)
    return clips


# ---------------------------------------------------------------------------- dataset


class WindowDataset(torch.utils.data.Dataset):
    """(recording, window) pairs → augmented 5 s examples with labels.

    Each item is a dict: ``audio`` (T,) float32, ``band_gain`` (C,) float32 and the
    ``y_<head>``/``m_<head>`` vectors of :class:`LabelSpace`. With ``augment=None`` it yields
    the centre 5 s of each window, unaugmented (evaluation).
    """

    def __init__(self, windows: list[np.ndarray], labels: list[dict[str, np.ndarray]], cfg: ClassifierConfig,
                 augment: aug.AugmentConfig | None, noise: list[np.ndarray] = (), seed: int = 0):
        self.items = [(r, k) for r, w in enumerate(windows) for k in range(len(w))]
        self.windows, self.labels, self.cfg, self.augment = windows, labels, cfg, augment
        self.noise = list(noise)
        self.seed = seed
        self.length = int(round(cfg.window_seconds * cfg.sample_rate))
        from birdsep.classification.frontend import mel_centres

        self.centres = mel_centres(cfg.frontend).numpy()
        self._epoch_rng: np.random.Generator | None = None
        self._order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))  # an epoch and its permutation

    def __len__(self) -> int:
        return len(self.items)

    def _rng(self) -> np.random.Generator:
        # One generator per worker process, seeded from the run seed and the worker id.
        if self._epoch_rng is None:
            info = torch.utils.data.get_worker_info()
            self._epoch_rng = np.random.default_rng([self.seed, info.id if info else 0, info.seed % 2**32 if info else 0])
        return self._epoch_rng

    def _window(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, dict]:
        r, k = self.items[index]
        x = self.windows[r][k].astype(np.float32)
        a = self.augment
        x = aug.random_crop(x, self.length, rng if (a and a.crop) else None)
        if a and a.gain:
            x = aug.random_gain(x, rng, *a.gain_range)
        return x, self.labels[r]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Example ``index``, augmented with the dataset's own generator (one per loader worker)."""
        return self.example(index, self._rng() if self.augment else None)

    def batch(self, size: int, place: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Training batch number ``place`` (:mod:`birdsep.stepbatches`): examples ``place·size`` to
        ``place·size + size − 1`` of an endless run of epochs, each a permutation of the items
        seeded by (seed, epoch), augmented with ``rng``."""
        picks = []
        for position in range(place * size, (place + 1) * size):
            epoch, i = divmod(position, len(self.items))
            if self._order[0] != epoch:
                self._order = (epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.items)))
            picks.append(int(self._order[1][i]))
        return torch.utils.data.default_collate([self.example(i, rng) for i in picks])

    def example(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """Example ``index``, augmented with ``rng`` (None: not augmented)."""
        a = self.augment
        gain = np.ones(len(self.centres), np.float32)
        if a and a.noise_only and self.noise and rng.random() < a.noise_only_p:
            clip = self.noise[rng.integers(len(self.noise))].astype(np.float32)
            x = aug.noise_only(clip, self.length, rng, *a.gain_range)
            lab = LabelSpace.no_labels(self.labels[0])
        else:
            x, lab = self._window(index, rng)
            if a and a.mix and rng.random() < a.mix_p and len(self.items) > 1:
                x2, lab2 = self._window(int(rng.integers(len(self.items))), rng)
                x, lab = x + x2, LabelSpace.union(lab, lab2)
            if a and a.noise and self.noise and rng.random() < a.noise_p:
                clip = self.noise[rng.integers(len(self.noise))].astype(np.float32)
                x = aug.add_noise(x, clip, float(rng.uniform(*a.snr_range_db)), rng)
        if a and a.lowpass and rng.random() < a.lowpass_p:
            gain = aug.lowpass_band_gain(self.centres, float(rng.uniform(*a.lowpass_cutoff_hz)),
                                         a.lowpass_ramp_channels)
        return {"audio": x.astype(np.float32), "band_gain": gain, **lab}

