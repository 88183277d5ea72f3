"""Separate + classify (paper §2.5): species detections from the mix and its separated tracks
(``birdsep classify``). Scoring detections against annotations is :mod:`birdsep.evaluation`.

For each window of a recording (``window`` seconds, ``overlap`` fraction shared with the
next) a species' score is the classifier's score on the mix (``mix``), the maximum over the M
separated tracks (``separated``) or the maximum over both (``mix+separated``); the track that
gave the kept score is recorded (``mix`` or ``source_k``). A classifier whose own window is
shorter than ``window`` (BirdNET: 3 s) is run on evenly spaced windows covering it and the
maximum kept; a window shorter than the classifier's (a longer model, or the end of a file) is
zero-padded.

Recordings are processed in pieces of about a minute (each read, resampled, separated and
classified on its own), so memory stays flat however long the file. For each input,
``OUT/<relative path>.birdsep.selection.table.txt`` (Raven), ``.birdsep.labels.txt`` (Audacity)
and, last, ``.birdsep.results.csv`` are written; the CSV's presence marks the input as done.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from birdsep import audio, files
from birdsep.batch import BatchSummary, Done, run_batch, threads_per_job
from birdsep.errors import UsageError
from birdsep.outputs import Detection, write_audacity, write_csv, write_raven
from birdsep.separation import runtime
from birdsep.separation.runtime import Runtime
from birdsep.taxonomy import label_names, read_species_list

log = logging.getLogger(__name__)

MODES = ("mix", "separated", "mix+separated")
SUFFIXES = {"raven": ".birdsep.selection.table.txt", "audacity": ".birdsep.labels.txt", "csv": ".birdsep.results.csv"}
PIECE_SECONDS = 60.0


@dataclass(frozen=True)
class ClassifyOptions:
    out: str = "detections"
    classifier: str = "birdnet"  # "birdnet" or a train-classifier run directory
    mode: str = "mix+separated"
    window: float = 5.0
    overlap: float = 0.0
    min_conf: float = 0.1
    species_list: str | None = None
    model: str | None = None  # separator: run directory / model folder, None → the shipped default
    device: str = "auto"  # see birdsep.separation.runtime
    precision: str = "auto"
    jobs: int | None = 1  # None: 1 here, or as many Ray workers as the cluster holds
    threads: int | None = None
    progress: bool = True
    ray: str | None = None  # a Ray cluster's address (birdsep.cluster); local: start Ray here

    def check(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.window <= 0 or not 0 <= self.overlap < 1:
            raise UsageError("--window must be positive and --overlap in [0, 1)")
        if not 0 <= self.min_conf <= 1:
            raise UsageError("--min-conf must be in [0, 1]")


# ------------------------------------------------------------------------------ scoring


def window_spans(duration: float, window: float, overlap: float = 0.0) -> list[tuple[float, float]]:
    """(start, end) of each window; a trailing window shorter than a quarter is dropped unless it is the only one."""
    hop = window * (1.0 - overlap)
    spans, start = [], 0.0
    while start < duration - 1e-9:
        end = min(start + window, duration)
        if spans and end - start < window / 4:
            break
        spans.append((round(start, 6), round(end, 6)))
        if end >= duration:
            break
        start += hop
    return spans or [(0.0, duration)]


def sub_windows(x: np.ndarray, n: int) -> np.ndarray:
    """(..., T) → (..., K, n): K = ⌈T / n⌉ evenly spaced windows of n samples covering T
    (one zero-padded window if T < n)."""
    t = x.shape[-1]
    if t <= n:
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - t)])[..., None, :]
    k = math.ceil(t / n)
    starts = np.round(np.linspace(0, t - n, k)).astype(int)
    return np.stack([x[..., s : s + n] for s in starts], axis=-2)


@dataclass
class FileScores:
    """Scores of one recording: ``mix`` (N, L) and/or ``separated`` (N, M, L) for N windows."""

    spans: list[tuple[float, float]]
    mix: np.ndarray | None
    separated: np.ndarray | None


def score_file(path, classifier, separator=None, *, window: float = 5.0, overlap: float = 0.0,
               mix: bool = True, separated: bool = True, rt: Runtime = Runtime(),
               tracks: list[Path] | None = None, progress=None) -> FileScores:
    """Classifier scores per window for the mix and/or each separated track of an audio file,
    read a piece at a time. Raises AudioError.

    ``tracks``: the recording's separated tracks already on disk (``birdsep separate``'s
    ``source_k.wav``), read instead of separating again, so that ``source_k`` in the
    detections is the voice in that file. ``progress``, if given, is called with the fraction
    done after each piece.
    """
    meta = audio.info(path, min_duration=audio.MIN_SECONDS)
    return _score(lambda t0, t1: audio.load(path, start=t0, duration=t1 - t0)[0], meta.sample_rate, meta.duration,
                  classifier, separator, window, overlap, mix, separated, rt, tracks, progress)


def score_array(x: np.ndarray, sample_rate: int, classifier, separator=None, *, window: float = 5.0,
                overlap: float = 0.0, mix: bool = True, separated: bool = True, rt: Runtime = Runtime()) -> FileScores:
    """:func:`score_file` for mono audio (T,) in memory at ``sample_rate``."""
    def read(t0: float, t1: float) -> np.ndarray:  # the samples audio.load(start=t0, duration=t1 - t0) reads
        first = int(round(t0 * sample_rate))
        return x[first : first + int(round((t1 - t0) * sample_rate))]

    return _score(read, sample_rate, len(x) / sample_rate, classifier, separator, window, overlap, mix, separated, rt)


def _score(read, sr_in: int, duration: float, classifier, separator, window: float, overlap: float, mix: bool,
           separated: bool, rt: Runtime, tracks: list[Path] | None = None, progress=None) -> FileScores:
    """``read(t0, t1)`` → (T,) mono samples of [t0, t1) s at ``sr_in``; ``tracks``, ``progress``:
    as :func:`score_file`."""
    from birdsep.separation.apply import BlockSettings, separate_array

    sr_cls = classifier.sample_rate
    n_cls = int(round(classifier.window_seconds * sr_cls))
    spans = window_spans(duration, window, overlap)
    hop = window * (1.0 - overlap)
    per_piece = max(1, int(PIECE_SECONDS // hop))
    n_lab = len(classifier.labels)
    m = (len(tracks) if tracks is not None else separator.config.num_sources) if separated else 0
    mix_out = np.zeros((len(spans), n_lab), np.float32) if mix else None
    sep_out = np.zeros((len(spans), m, n_lab), np.float32) if separated else None
    settings = BlockSettings(device=rt.device, precision=rt.precision)
    for p0 in range(0, len(spans), per_piece):
        piece = spans[p0 : p0 + per_piece]
        t0, t1 = piece[0][0], piece[-1][1]
        x = read(t0, t1)  # (T,) native rate
        parts = []  # (1 + M or 1 or M, T') at the classifier's rate
        if mix:
            parts.append(audio.resample(x, sr_in, sr_cls)[None])
        if separated and tracks is not None:
            parts.append(np.stack([audio.load(t, sr_cls, start=t0, duration=t1 - t0)[0] for t in tracks]))
        elif separated:
            sr_m = separator.config.sample_rate
            src = separate_array(separator, audio.resample(x, sr_in, sr_m), sr_m, settings)  # (M, T_m)
            parts.append(audio.resample(src, sr_m, sr_cls))
        length = min(t.shape[1] for t in parts)
        y = np.concatenate([t[:, :length] for t in parts])  # (R, T')
        wins = []  # per window (R, K, n); K differs for a short last window
        for s, e in piece:
            a, b = int(round((s - t0) * sr_cls)), int(round((e - t0) * sr_cls))
            wins.append(sub_windows(y[:, a:b], n_cls))
        flat = classifier.predict(np.concatenate([w.reshape(-1, n_cls) for w in wins]))  # (Σ R·K, L)
        scores, i = [], 0
        for w in wins:
            r, k = w.shape[:2]
            scores.append(flat[i : i + r * k].reshape(r, k, n_lab).max(axis=1))
            i += r * k
        scores = np.stack(scores)  # (P, R, L)
        rows = slice(p0, p0 + len(piece))
        if mix:
            mix_out[rows] = scores[:, 0]
        if separated:
            sep_out[rows] = scores[:, int(mix):]
        if progress is not None:
            progress(min(1.0, (p0 + len(piece)) / len(spans)))
    return FileScores(spans, mix_out, sep_out)


def combine(mode: str, fs: FileScores) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, L), channel (N, L)): channel 0 is the mix, k ≥ 1 the k-th separated track."""
    if mode == "mix":
        return fs.mix, np.zeros(fs.mix.shape, np.int16)
    if mode == "separated":
        stack = fs.separated
        return stack.max(axis=1), (stack.argmax(axis=1) + 1).astype(np.int16)
    if mode == "mix+separated":
        stack = np.concatenate([fs.mix[:, None], fs.separated], axis=1)  # (N, 1 + M, L)
        return stack.max(axis=1), stack.argmax(axis=1).astype(np.int16)
    raise UsageError(f"unknown mode {mode!r}")


@dataclass(frozen=True)
class Classification:
    """Per-window species scores of one recording (what :func:`birdsep.classify` returns)."""

    labels: list[str]  # (L,) the classifier's species labels
    spans: np.ndarray  # (N, 2) start and end of each window, seconds
    mix: np.ndarray | None  # (N, L) scores of the mix (None in mode "separated")
    separated: np.ndarray | None  # (N, M, L) scores of each separated track (None in mode "mix")
    scores: np.ndarray  # (N, L) the mode's scores
    channel: np.ndarray  # (N, L) where each score came from: 0 the mix, k source_k
    mode: str

    def rows(self, min_conf: float = 0.1) -> list[dict]:
        """One dict per (window, species) scoring ≥ ``min_conf``: start, end, species,
        confidence, channel (``pandas.DataFrame(result.rows())`` makes it a table)."""
        dets = detections("", [tuple(s) for s in self.spans.tolist()], self.scores, self.channel, self.labels,
                          min_conf)
        return [{k: v for k, v in asdict(d).items() if k != "file"} for d in sorted(dets, key=lambda d: d.start)]

    def to_pandas(self, min_conf: float = 0.1):
        """:meth:`rows` as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows(min_conf), columns=["start", "end", "species", "confidence", "channel"])


def channel_name(k: int) -> str:
    return "mix" if k == 0 else f"source_{k}"


def detections(file: str, spans, scores: np.ndarray, channel: np.ndarray, labels: list[str],
               min_conf: float = 0.1, keep: np.ndarray | None = None) -> list[Detection]:
    """Rows with score ≥ ``min_conf`` (among species ``keep``, a boolean mask over labels)."""
    ok = scores >= min_conf
    if keep is not None:
        ok &= keep[None, :]
    return [Detection(file, spans[i][0], spans[i][1], labels[j], float(scores[i, j]), channel_name(int(channel[i, j])))
            for i, j in zip(*np.nonzero(ok))]


def species_mask(labels: list[str], species_file: str | None) -> np.ndarray | None:
    """Boolean mask of the labels named in ``species_file`` (one per line: a full label, a
    scientific or a common name); None without a file."""
    if not species_file:
        return None
    wanted = {w.lower() for w in read_species_list(species_file)}
    mask = np.array([bool(label_names(lab) & wanted) for lab in labels])
    found = set().union(*(label_names(lab) for lab, k in zip(labels, mask) if k)) if mask.any() else set()
    missing = sorted(wanted - found)
    if not mask.any():
        raise UsageError(f"{species_file}: none of its species are among the classifier's labels")
    if missing:
        log.warning("%s: %d species not among the classifier's labels (e.g. %s)", species_file, len(missing),
                    ", ".join(missing[:3]))
    return mask


# ------------------------------------------------------------------------------ files and batches


def outputs_of(base: Path) -> dict[str, Path]:
    return {k: base.with_name(base.name + s) for k, s in SUFFIXES.items()}


def is_done(base: Path) -> bool:
    return all(p.is_file() for p in outputs_of(base).values())


class Detector:
    """A loaded classifier (+ separator when the mode needs one), the options and the runtime
    (``rt``: resolved from the options' device and precision unless given)."""

    def __init__(self, opts: ClassifyOptions, rt: Runtime | None = None):
        from birdsep.backends import load_classifier

        self.opts = opts
        self.rt = rt or Runtime(runtime.resolve_device(opts.device), "fp32", "no separator")
        self.classifier = load_classifier(opts.classifier, threads=opts.threads or 1)
        self.keep = species_mask(self.classifier.labels, opts.species_list)
        self.separator = None
        if opts.mode != "mix":
            from birdsep.pretrained import load_model, probe_audio

            self.separator = load_model(opts.model, self.rt.device)
            if rt is None:
                probe = partial(probe_audio, self.separator.config.sample_rate)
                self.rt = runtime.resolve(self.rt.device, opts.precision, self.separator, probe)

    def scores(self, path, tracks: list[Path] | None = None, progress=None) -> FileScores:
        o = self.opts
        return score_file(path, self.classifier, self.separator, window=o.window, overlap=o.overlap,
                          mix=o.mode != "separated", separated=o.mode != "mix", rt=self.rt, tracks=tracks,
                          progress=progress)

    def run(self, path: Path, base: Path, tracks: list[Path] | None = None, progress=None) -> float:
        """Classify one file and write its three tables; returns its duration in seconds.
        ``tracks``, ``progress``: as :func:`score_file`."""
        fs = self.scores(path, tracks, progress)
        scores, channel = combine(self.opts.mode, fs)
        dets = detections(str(path), fs.spans, scores, channel, self.classifier.labels, self.opts.min_conf, self.keep)
        paths = outputs_of(base)
        write_raven(paths["raven"], dets)
        write_audacity(paths["audacity"], dets)
        write_csv(paths["csv"], dets)  # last: marks the input as done
        return fs.spans[-1][1]


def _detector_worker(opts: ClassifyOptions, rt: Runtime, detector: Detector | None = None):
    """Load the classifier (and separator) once per process; return work(path, base, progress) -> Done."""
    runtime.tune_allocator()
    detector = detector or Detector(opts, rt)
    return lambda path, base, progress: Done(detector.run(path, base, progress=progress))


def classify_batch(inputs: list[str], opts: ClassifyOptions) -> BatchSummary:
    """``birdsep classify``: resumable, one error line per bad file (and OUT/errors.log), parallel
    jobs or a Ray cluster (whose workers each settle device and precision on their own node)."""
    opts.check()
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    # a bad classifier, separator, species list or device fails here, before any file
    detector = Detector(opts) if opts.ray is None else Detector(opts, Runtime(reason="checked only"))
    out = Path(opts.out)
    threads = threads_per_job(opts.threads, opts.jobs, opts.ray)
    worker_opts = ClassifyOptions(**{**opts.__dict__, "threads": threads})
    rt = detector.rt if opts.ray is None else None
    return run_batch(inputs, out, target_for=lambda f, root: files.output_path(f, root, out), is_done=is_done,
                     make_worker=_detector_worker, worker_args=(worker_opts, rt), jobs=opts.jobs, threads=threads,
                     progress=opts.progress, verb="classifying", past="classified",
                     work=_detector_worker(worker_opts, rt, detector) if opts.ray is None else None,
                     cluster=opts.ray, device=opts.device)
