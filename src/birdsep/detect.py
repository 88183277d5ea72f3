"""Separate + classify (paper §2.5): species detections from the mix and its separated tracks
(``birdsep classify``). Scoring detections against annotations is :mod:`birdsep.evaluation`.

For each window of a recording (``window`` seconds, ``overlap`` seconds shared with the next)
a species' score comes from the classifier's score on the mix (``mix``), on the M separated
tracks (``separated``: the best track) or on both (``mix+separated``: pooled by a combination
rule, :mod:`birdsep.combination`); the input that gave the kept score is recorded (``mix`` or
``source_k``). A classifier whose own window is shorter than ``window`` (BirdNET: 3 s) is run on
evenly spaced windows covering it and the maximum kept; a window shorter than the classifier's
(a longer model, or the end of a file) is zero-padded. BirdNET-Analyzer's conveniences apply on
top: a species list or its location/season filter, its sensitivity, its output types.

Recordings are processed in pieces of about a minute (each read, resampled, separated and
classified on its own), so memory stays flat however long the file. Tracks that ``birdsep
separate`` wrote with the same separator are read instead of separating again, and
``keep_tracks`` writes the ones made here in the same layout. For each input the requested
tables (``--rtype``) are written under ``OUT/<relative path>``; an input is done when all of
them exist. At the end of every batch run the combined tables are rebuilt over all its done
inputs.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from birdsep import audio, combination, files, limits
from birdsep.batch import BatchSummary, Done, run_batch
from birdsep.combination import DEFAULT, RAW, Rule, TrackInput, track_levels
from birdsep.errors import UsageError
from birdsep.modes import DEFAULT_MODE, DEFAULT_RULE, POOLED, check_mode
from birdsep.outputs import HIGH_FREQ, Context, Detection, paths_of, write_combined, write_outputs
from birdsep.separation import runtime
from birdsep.separation.runtime import Runtime
from birdsep.taxonomy import label_names, read_species_list
from birdsep.threads import count as thread_count, use as use_threads

log = logging.getLogger(__name__)

#: seconds of windows scored at a time: the scores do not depend on it (the mix and the tracks are
#: streams through the file); shorter holds less (3 pieces at once, ~6 MB a second of audio with
#: 4 tracks at BirdNET's 48 kHz), longer gives BirdNET more windows a call
PIECE_SECONDS = 20.0


@dataclass(frozen=True)
class ClassifyOptions:
    out: str = "detections"
    classifier: str = "birdnet"  # "birdnet" or a train-classifier run directory
    mode: str = DEFAULT_MODE  # one of MODES
    combine: str = DEFAULT_RULE  # the rule of mix+separated: a name in combination.RULES
    window: float = 5.0
    overlap: float = 0.0  # seconds shared by consecutive windows (BirdNET-Analyzer's --overlap)
    min_conf: float = 0.1
    sensitivity: float = 1.0
    species_list: str | None = None
    lat: float | None = None
    lon: float | None = None
    week: int = -1
    sf_thresh: float = 0.03
    rtype: tuple[str, ...] = ("table", "csv", "audacity")
    model: str | None = None  # separator: run directory / model folder, None → the shipped default
    device: str = "auto"  # see birdsep.separation.runtime
    precision: str = "auto"
    tracks: str | None = "separated"  # where birdsep separate's tracks are looked for (and kept)
    keep_tracks: bool = False
    jobs: int | None = 1  # None: chosen here (batch.plan_jobs), or as many Ray workers as the cluster holds
    threads: int | None = None
    progress: bool = True
    ray: str | None = None  # a Ray cluster's address (birdsep.cluster); local: start Ray here

    def check(self) -> None:
        from birdsep.backends import check_location, check_sensitivity
        from birdsep.outputs import RTYPES

        check_mode(self.mode, self.combine)
        limits.windows(self.window, self.overlap, ("--window", "--overlap"))
        if not 0 <= self.min_conf <= 1:
            raise UsageError(f"--min-conf must be in [0, 1], not {self.min_conf:g}")
        check_sensitivity(self.sensitivity)
        check_location(self.lat, self.lon, self.week, self.sf_thresh)
        if self.species_list and self.lat is not None:
            raise UsageError("--species-list and --lat/--lon cannot be used together (as in BirdNET-Analyzer): "
                             "make a list with 'birdsep species' and edit it")
        bad = [r for r in self.rtype if r not in RTYPES]
        if bad or not self.rtype:
            raise UsageError(f"--rtype takes {', '.join(RTYPES)} (comma-separated), not {','.join(bad) or 'nothing'}")
        if self.keep_tracks and not self.tracks:
            raise UsageError("--keep-tracks needs a --tracks folder")

    @property
    def location(self) -> bool:
        """Whether the location filter is on (BirdNET-Analyzer's −1/−1 means off)."""
        return self.lat is not None and (self.lat, self.lon) != (-1, -1)


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
    k = sub_window_count(t, n)
    starts = np.round(np.linspace(0, t - n, k)).astype(int)
    return np.stack([x[..., s : s + n] for s in starts], axis=-2)


def sub_window_count(t: int, n: int) -> int:
    """K of :func:`sub_windows` for T = ``t`` samples."""
    return 1 if t <= n else math.ceil(t / n)


@dataclass
class FileScores:
    """Scores of one recording's N windows: ``mix`` (N, L) (None when not asked for), ``tracks``
    {track input: (N, M, L)} and ``levels`` (N, M): each track's share of the tracks' energy in
    the window, dB (None without tracks)."""

    spans: list[tuple[float, float]]
    mix: np.ndarray | None
    tracks: dict[TrackInput, np.ndarray] = field(default_factory=dict)
    levels: np.ndarray | None = None


#: tracks_for(read, input rate, duration, piece start s, piece end s) → the piece's tracks (M, T')
#: at the classifier's rate. ``read(t0, t1)`` → (T,) input samples of [t0, t1) s; pieces come in
#: order (a piece never starts before the one before it), so a provider can stream the recording.
TracksFor = Callable[[Callable[[float, float], np.ndarray], int, float, float, float], np.ndarray]

#: seconds of input read at a time for the streams (the mix at the classifier's rate, the tracks)
STREAM_SECONDS = 10.0


def segments(read, duration: float, seconds: float = STREAM_SECONDS) -> Iterator[np.ndarray]:
    """``read`` over [0, duration) s in consecutive segments of ``seconds``: the samples of one read."""
    k = 0
    while k * seconds < duration:
        yield read(k * seconds, min((k + 1) * seconds, duration))
        k += 1


class Cursor:
    """Samples [a, b) of a stream of chunks ((t,) or (C, t)), asked for in order (``a`` never goes
    back): the chunks that reach past ``a`` are kept as they came, and each answer is a new array
    of just [a, b) (a slice would keep the chunks it came from)."""

    def __init__(self, chunks: Iterator[np.ndarray]):
        self.chunks, self.held, self.start, self.end = chunks, deque(), 0, 0  # held: samples [start, end)
        self.lead: tuple[int, ...] = ()  # the chunks' leading shape: () or (C,)

    def take(self, a: int, b: int) -> np.ndarray:
        if a < self.start:
            raise ValueError(f"a stream is read in order: sample {a} is before {self.start}")
        while self.end < b or self.end == 0:  # (one chunk at least: its shape)
            c = next(self.chunks, None)
            if c is None:  # the stream ended: what there is
                break
            self.held.append(c)
            self.end += c.shape[-1]
            self.lead = c.shape[:-1]
        while self.held and self.start + self.held[0].shape[-1] <= a:  # wholly before a: let go
            self.start += self.held.popleft().shape[-1]
        parts, at = [], self.start
        for c in self.held:
            if at >= b:
                break
            parts.append(c[..., max(0, a - at) : b - at])
            at += c.shape[-1]
        if not parts:
            return np.zeros(self.lead + (0,), np.float32)
        return np.concatenate(parts, axis=-1)

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


class _Streamed:
    """A :data:`TracksFor` that makes the recording's tracks as one stream (``make(read, sr_in,
    duration)`` → (M, t) chunks at ``sr_out``, from the recording's start), whatever the pieces."""

    def __init__(self, make, sr_out: int):
        self.make, self.sr_out, self.cursor = make, sr_out, None

    def __call__(self, read, sr_in: int, duration: float, t0: float, t1: float) -> np.ndarray:
        if self.cursor is None:
            self.cursor = Cursor(self.make(read, sr_in, duration))
        return self.cursor.take(int(round(t0 * self.sr_out)), int(round(t1 * self.sr_out)))

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()


def separating(separator, sr_out: int, rt: Runtime = Runtime()) -> TracksFor:
    """Tracks made here as ``birdsep separate`` makes them: the recording resampled to the
    separator's rate and separated as one stream (the same blocks from its start, each track the
    same voice from block to block, whatever the pieces), the tracks resampled to ``sr_out``."""
    from birdsep.separation.apply import BlockSettings, separate_stream

    settings = BlockSettings(device=rt.device, precision=rt.precision)
    sr_m, m = separator.config.sample_rate, separator.config.num_sources

    def make(read, sr_in, duration):
        model_rate = audio.resampled(segments(read, duration), sr_in, sr_m)
        return audio.resampled(separate_stream(separator, model_rate, sr_m, settings), sr_m, sr_out, channels=m)

    return _Streamed(make, sr_out)


def reading(tracks: list[Path], sr_out: int) -> TracksFor:
    """Tracks already on disk (``birdsep separate``'s ``source_k`` files), read and resampled to
    ``sr_out`` as one stream; ``source_k`` in the detections is then the voice in that file."""

    def make(read, sr_in, duration):
        sr_t = audio.info(tracks[0]).sample_rate

        def read_tracks(t0, t1):  # (M, t): the files hold the same number of samples
            parts = [audio.load(t, start=t0, duration=t1 - t0)[0] for t in tracks]
            n = min(len(p) for p in parts)
            return np.stack([p[:n] for p in parts])

        return audio.resampled(segments(read_tracks, duration), sr_t, sr_out, channels=len(tracks))

    return _Streamed(make, sr_out)


def score_file(path, classifier, tracks_for: TracksFor | None = None, *, window: float = 5.0,
               overlap: float = 0.0, mix: bool = True, inputs: tuple[TrackInput, ...] = (RAW,),
               progress=None) -> FileScores:
    """Classifier scores per window of an audio file, read a piece at a time: the mix's and,
    with ``tracks_for`` (:func:`separating`, :func:`reading`), each separated track's as heard
    through each of ``inputs``. ``progress``, if given, is called with the fraction done after
    each piece. Raises AudioError."""
    return gathered(file_pieces(path, classifier, tracks_for, window=window, overlap=overlap, mix=mix, inputs=inputs,
                                progress=progress))


def file_pieces(path, classifier, tracks_for: TracksFor | None = None, *, window: float = 5.0,
                overlap: float = 0.0, mix: bool = True, inputs: tuple[TrackInput, ...] = (RAW,),
                progress=None) -> Iterator[FileScores]:
    """:func:`score_file` a piece at a time (:func:`score_pieces`). Raises AudioError here, before
    the first piece, for a file that cannot be read."""
    meta = audio.info(path, min_duration=audio.MIN_SECONDS)
    return score_pieces(lambda t0, t1: audio.load(path, start=t0, duration=t1 - t0)[0], meta.sample_rate,
                        meta.duration, classifier, tracks_for, window, overlap, mix, inputs, progress)


def score_array(x: np.ndarray, sample_rate: int, classifier, tracks_for: TracksFor | None = None, *,
                window: float = 5.0, overlap: float = 0.0, mix: bool = True,
                inputs: tuple[TrackInput, ...] = (RAW,)) -> FileScores:
    """:func:`score_file` for mono audio (T,) in memory at ``sample_rate``."""
    def read(t0: float, t1: float) -> np.ndarray:  # the samples audio.load(start=t0, duration=t1 - t0) reads
        first = int(round(t0 * sample_rate))
        return x[first : first + int(round((t1 - t0) * sample_rate))]

    return gathered(score_pieces(read, sample_rate, len(x) / sample_rate, classifier, tracks_for, window, overlap,
                                 mix, inputs))


@dataclass
class _Piece:
    """One piece of a recording, ready for the classifier: its windows' spans, each window's
    sub-windows of every stream (R, K, n) flattened into ``windows`` (Σ R·K, n), and the tracks'
    levels per window (P, M) (None without tracks)."""

    first: int  # index of its first window in the recording
    spans: list[tuple[float, float]]
    shapes: list[tuple[int, int]]  # (R, K) per window
    windows: np.ndarray
    levels: np.ndarray | None
    sources: int


def gathered(pieces: Iterator[FileScores]) -> FileScores:
    """The scores of consecutive pieces of a recording as one :class:`FileScores`."""
    parts = list(pieces)

    def joined(arrays):
        return None if arrays[0] is None else np.concatenate(arrays)

    return FileScores([s for p in parts for s in p.spans], joined([p.mix for p in parts]),
                      {inp: np.concatenate([p.tracks[inp] for p in parts]) for inp in parts[0].tracks},
                      joined([p.levels for p in parts]))


def score_pieces(read, sr_in: int, duration: float, classifier, tracks_for: TracksFor | None, window: float,
                 overlap: float, mix: bool, inputs: tuple[TrackInput, ...], progress=None) -> Iterator[FileScores]:
    """``read(t0, t1)`` → (T,) mono samples of [t0, t1) s at ``sr_in``; the rest as :func:`score_file`.

    The scores of a recording a piece (:data:`PIECE_SECONDS`) at a time, in order: what is held does not
    grow with the recording's length (an hour's (N, M, L) scores of BirdNET's 6,522 labels are
    ~95 MB, a day's 2.3 GB), for callers that use each piece and let it go (the CLI's detections).

    While the classifier scores one piece, the next is read, resampled and separated in a thread
    beside it (:func:`audio.ahead`): at most three pieces are held (one scored, one ready, one
    being made), and the scores are those of one piece after another."""
    sr_cls = classifier.sample_rate
    n_cls = int(round(classifier.window_seconds * sr_cls))
    spans = window_spans(duration, window, overlap)
    hop = window * (1.0 - overlap)
    per_piece = max(1, int(PIECE_SECONDS // hop))
    n_lab = len(classifier.labels)
    inputs = tuple(inputs) if tracks_for is not None else ()

    # the mix at the classifier's rate, resampled as one stream: no edges where pieces meet, so the
    # scores do not depend on the pieces' length
    mix_rate = Cursor(audio.resampled(segments(read, duration), sr_in, sr_cls))

    def at(t: float) -> int:
        return int(round(t * sr_cls))

    def prepare(p0: int) -> _Piece:
        piece = spans[p0 : p0 + per_piece]
        t0, t1 = piece[0][0], piece[-1][1]
        x_cls = mix_rate.take(at(t0), at(t1))  # (T,)
        src = None
        if inputs:
            src = tracks_for(read, sr_in, duration, t0, t1)  # (M, T)
            length = min(len(x_cls), src.shape[1])
            src, x_cls = src[:, :length], x_cls[:length]
        bounds = [(at(s) - at(t0), at(e) - at(t0)) for s, e in piece]

        def streams(a: int, b: int) -> np.ndarray:
            """What is classified in the window [a, b): the mix, then each input's rows (M tracks, or 1). (R, b − a)"""
            rows = [x_cls[None, a:b]] if mix else []
            return np.concatenate(rows + [inp.apply(src[:, a:b], x_cls[a:b]) for inp in inputs])

        rows = int(mix) + sum(inp.rows(src.shape[0]) for inp in inputs)  # R
        shapes = [(rows, sub_window_count(b - a, n_cls)) for a, b in bounds]  # (R, K) per window; K varies
        windows = np.empty((sum(r * k for r, k in shapes), n_cls), np.float32)  # (Σ R·K, n), filled in place
        i = 0
        for (a, b), (r, k) in zip(bounds, shapes):
            windows[i : i + r * k] = sub_windows(streams(a, b), n_cls).reshape(r * k, n_cls)
            i += r * k
        levels = np.stack([track_levels(src[:, a:b]) for a, b in bounds]) if inputs else None  # (P, M)
        return _Piece(p0, piece, shapes, windows, levels, 0 if src is None else src.shape[0])

    # closed on the way out: an error or Ctrl-C here stops the thread ahead at once (see pipeline),
    # then the streams (soxr's resamplers)
    with contextlib.ExitStack() as stack:
        stack.callback(mix_rate.close)
        if tracks_for is not None and hasattr(tracks_for, "close"):
            stack.callback(tracks_for.close)
        pieces = stack.enter_context(contextlib.closing(
            audio.ahead(prepare(p0) for p0 in range(0, len(spans), per_piece))))
        for p in pieces:
            flat = classifier.predict(p.windows)  # (Σ R·K, L)
            scores, k0 = [], 0
            for r, k in p.shapes:
                scores.append(flat[k0 : k0 + r * k].reshape(r, k, n_lab).max(axis=1))
                k0 += r * k
            scores = np.stack(scores)  # (P, R, L)
            tracks, first = {}, int(mix)
            for inp in inputs:
                tracks[inp] = scores[:, first : first + inp.rows(p.sources)]  # (P, rows, L)
                first += inp.rows(p.sources)
            yield FileScores(p.spans, scores[:, 0] if mix else None, tracks, p.levels)
            if progress is not None:
                progress(min(1.0, (p.first + len(p.spans)) / len(spans)))


def rule_for(mode: str, name: str = DEFAULT_RULE) -> Rule:
    """The combination rule of a mode: ``--combine``'s for mix+separated; "separated" is the
    best of the tracks as they come (the paper's)."""
    return combination.RULES[name] if mode == POOLED else combination.PAPER


#: windows pooled at a time by :func:`combine` (the rules work window by window; an hour's (N, M, L)
#: logits in float64 at once would be ~150 MB, and several such temporaries)
COMBINE_WINDOWS = 64


def combine(mode: str, fs: FileScores, rule: Rule = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, L), channel (N, L)): channel 0 is the mix, k ≥ 1 the k-th separated track."""
    tracks = fs.tracks.get(rule.input) if mode != "mix" else None
    if mode != "mix" and tracks is None:
        raise ValueError(f"no scores for {rule.input.name}")
    denoised = fs.tracks.get(rule.denoise_input) if mode == POOLED and rule.denoised else None
    if denoised is not None:
        denoised = denoised[:, 0]

    def rows(a, at: slice):
        return None if a is None else a[at]

    n = len(fs.spans)
    parts = [combination.combine(rule, mode, rows(fs.mix, at), rows(tracks, at), rows(fs.levels, at),
                                 rows(denoised, at))
             for at in (slice(i, i + COMBINE_WINDOWS) for i in range(0, max(n, 1), COMBINE_WINDOWS))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class Classification:
    """Per-window species scores of one recording (what :func:`birdsep.classify` returns)."""

    labels: list[str]  # (L,) the classifier's species labels
    spans: np.ndarray  # (N, 2) start and end of each window, seconds
    mix: np.ndarray | None  # (N, L) scores of the mix (None in mode "separated")
    separated: np.ndarray | None  # (N, M, L) scores of each separated track as the mode heard it (None in "mix")
    scores: np.ndarray  # (N, L) the mode's scores
    channel: np.ndarray  # (N, L) where each score came from: 0 the mix, k source_k
    mode: str
    denoised: np.ndarray | None = None  # (N, L) scores of the mix without one track (the rule's denoise_input), where the rule uses it

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


def names_mask(labels: list[str], wanted: list[str], source: str) -> np.ndarray:
    """Boolean mask of the labels named in ``wanted`` (full labels, scientific or common names;
    case and punctuation do not matter). UsageError if none is; a warning for those not found."""
    wanted_keys = {n for w in wanted for n in label_names(w)}
    keys = [label_names(lab) for lab in labels]
    mask = np.array([bool(k & wanted_keys) for k in keys])
    if not mask.any():
        raise UsageError(f"{source}: none of its species are among the classifier's labels")
    found = set().union(*(k for k, m in zip(keys, mask) if m))
    missing = [w for w in wanted if not label_names(w) & found]
    if missing:
        log.warning("%s: %d species not among the classifier's labels (e.g. %s)", source, len(missing),
                    ", ".join(missing[:3]))
    return mask


def species_mask(labels: list[str], species_file: str | None) -> np.ndarray | None:
    """Boolean mask of the labels named in ``species_file`` (one per line: a full label, a
    scientific or a common name; ``#`` comments; a folder means its ``species_list.txt``, as in
    BirdNET-Analyzer); None without a file."""
    if not species_file:
        return None
    path = Path(species_file)
    if path.is_dir():
        path = path / "species_list.txt"
    return names_mask(labels, read_species_list(path), str(path))


def location_mask(labels: list[str], opts: ClassifyOptions) -> np.ndarray:
    """The labels BirdNET's metadata model expects at ``opts``' place and week."""
    from birdsep.backends import location_species

    expected = [lab for lab, _ in location_species(opts.lat, opts.lon, opts.week, opts.sf_thresh)]
    return names_mask(labels, expected, f"species expected at {opts.lat:g}, {opts.lon:g} in week {opts.week}")


# ------------------------------------------------------------------------------ files and batches


def is_done(base: Path, rtype: tuple[str, ...] = ClassifyOptions.rtype) -> bool:
    """Whether an input's tables of every type in ``rtype`` exist (``base``: OUT/<relative path>)."""
    return all(p.is_file() for p in paths_of(base, rtype).values())


class Detector:
    """A loaded classifier (+ separator when the mode needs one), the species kept, the
    combination rule, the options and the runtime (``rt``: settled from the options' device and
    precision unless given). ``separator``: ``opts.model`` already loaded on ``rt``'s device
    (the page keeps one per model), so that it is not loaded twice."""

    def __init__(self, opts: ClassifyOptions, rt: Runtime | None = None, separator=None):
        from birdsep.backends import load_classifier

        self.opts = opts
        self.classifier = load_classifier(opts.classifier, threads=opts.threads or thread_count())
        labels = self.classifier.labels
        self.keep = location_mask(labels, opts) if opts.location else species_mask(labels, opts.species_list)
        self.rule = rule_for(opts.mode, opts.combine)
        if opts.mode == "mix":
            self.separator, self.rt = runtime.settle(opts.device, opts.precision, given=rt)
            return
        from birdsep.pretrained import load_model, resolve, weights_sha256

        self.model_folder = resolve(opts.model)
        load = partial(load_model, self.model_folder) if separator is None else None
        self.separator, self.rt = runtime.settle(opts.device, opts.precision, load=load, model=separator, given=rt)
        self.model_sha256 = weights_sha256(self.model_folder)

    def tracks_for(self, path: Path, base: Path | None = None, tracks: list[Path] | None = None) -> TracksFor | None:
        """Where a file's tracks come from: ``tracks`` (files) if given; ``birdsep separate``'s
        folder for it under ``--tracks`` when that holds this separator's tracks of this file;
        else separated here (and kept there with ``keep_tracks``). None in mode ``mix``."""
        if self.separator is None:
            return None
        sr = self.classifier.sample_rate
        if tracks is not None:
            return reading(tracks, sr)
        o = self.opts
        if o.tracks and base is not None:
            from birdsep.pipeline import (RESULT_NAME, SeparateOptions, holds_tracks_of, read_result, separate_file,
                                          track_files)

            folder = Path(o.tracks) / base.relative_to(o.out)
            if not holds_tracks_of(folder, path, self.model_sha256) and o.keep_tracks:
                if (folder / RESULT_NAME).is_file():
                    raise UsageError.of(path, f"{folder} holds other tracks (another separator or input); "
                                              "choose another --tracks folder")
                settings = SeparateOptions(out=o.tracks, model=str(self.model_folder), device=o.device,
                                           precision=o.precision, progress=False)
                separate_file(path, folder, self.separator, settings, self.rt, str(self.model_folder))
            if holds_tracks_of(folder, path, self.model_sha256):
                result = read_result(folder)
                return reading(track_files(folder, result)[: len(result["sources"])], sr)
        return separating(self.separator, sr, self.rt)

    def scores(self, path, inputs: tuple[TrackInput, ...] | None = None, base: Path | None = None,
               tracks: list[Path] | None = None, progress=None) -> FileScores:
        """Window scores of the mix and of the tracks through ``inputs`` (default: the rule's)."""
        return gathered(self.pieces(path, inputs, base, tracks, progress))

    def pieces(self, path, inputs: tuple[TrackInput, ...] | None = None, base: Path | None = None,
               tracks: list[Path] | None = None, progress=None) -> Iterator[FileScores]:
        """:meth:`scores` a piece at a time (:func:`score_pieces`)."""
        o = self.opts
        return file_pieces(path, self.classifier, self.tracks_for(Path(path), base, tracks), window=o.window,
                           overlap=o.overlap / o.window, mix=o.mode != "separated",
                           inputs=inputs or self.rule.inputs, progress=progress)

    def detections(self, path, base: Path | None = None, tracks: list[Path] | None = None,
                   progress=None) -> tuple[list[Detection], float]:
        """One file's detections (≥ min_conf after the sensitivity, species kept) and its duration,
        a piece at a time: only the detections are kept, so memory does not grow with the file."""
        from birdsep.backends import apply_sensitivity

        dets, end = [], 0.0
        for fs in self.pieces(path, base=base, tracks=tracks, progress=progress):
            scores, channel = combine(self.opts.mode, fs, self.rule)
            scores = apply_sensitivity(scores, self.opts.sensitivity)
            dets += detections(str(path), fs.spans, scores, channel, self.classifier.labels, self.opts.min_conf,
                               self.keep)
            end = fs.spans[-1][1]
        return dets, end

    def context(self, path) -> Context:
        o = self.opts
        return Context(high_freq=int(min(HIGH_FREQ, audio.info(path).sample_rate // 2)),
                       lat=o.lat if o.location else -1, lon=o.lon if o.location else -1,
                       week=o.week if o.location else -1, overlap=o.overlap, sensitivity=o.sensitivity)

    def run(self, path: Path, base: Path, tracks: list[Path] | None = None, progress=None) -> float:
        """Classify one file and write its tables; returns its duration in seconds. ``tracks``:
        the recording's separated tracks already on disk; ``progress``: as :func:`score_file`."""
        dets, duration = self.detections(path, base, tracks, progress)
        write_outputs(base, dets, self.opts.rtype, self.context(path))
        return duration



def _detector_worker(opts: ClassifyOptions, rt: Runtime, detector: Detector | None = None):
    """Load the classifier (and separator) once per process; return work(path, base, progress) -> Done."""
    runtime.tune_allocator()
    detector = detector or Detector(opts, rt)
    return lambda path, base, progress: Done(detector.run(path, base, progress=progress))


def classify_batch(inputs: list[str], opts: ClassifyOptions) -> BatchSummary:
    """``birdsep classify``: resumable, one error line per bad file (and OUT/errors.log), parallel
    jobs or a Ray cluster (whose workers each settle device and precision on their own node), and
    the batch's combined tables rebuilt over every done input at the end."""
    opts.check()
    use_threads(opts.threads)
    # a bad classifier, separator, species list or device fails here, before any file
    detector = Detector(opts) if opts.ray is None else Detector(opts, Runtime(reason="checked only"))
    out = Path(opts.out)
    rt = detector.rt if opts.ray is None else None
    done_here = partial(is_done, rtype=opts.rtype)
    summary = run_batch(inputs, out, target_for=lambda f, root: files.output_path(f, root, out), is_done=done_here,
                        make_worker=_detector_worker, worker_args=(opts, rt), jobs=opts.jobs, threads=opts.threads,
                        progress=opts.progress, verb="classifying", past="classified",
                        work=_detector_worker(opts, rt, detector) if opts.ray is None else None,
                        cluster=opts.ray, device=rt.device if rt is not None else opts.device, also_written=(opts.tracks,) if opts.tracks else ())
    done = [(f, Path(base), audio.info(f).duration) for f, base in summary.targets if done_here(Path(base))]
    if done:
        write_combined(out, done, opts.rtype)
    return summary
