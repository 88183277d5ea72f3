"""Audio I/O: load any format libsndfile reads as mono float32 at a target rate, write
atomically, and iterate over long files block by block without holding them in memory.

Everything that reads a user's audio goes through here, so that every failure becomes one
:class:`~birdsep.errors.AudioError` whose message names the file and the reason.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from birdsep import files, limits
from birdsep.errors import AudioError

#: Shorter inputs are refused by the commands that separate or classify files.
MIN_SECONDS = 0.05


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def amount(done: float, total: float | None = None) -> str:
    """``done`` (of ``total``) seconds of audio in the unit the larger reads best in:
    ``"4.2/10.0 s"``, ``"3.5/12.0 min"``, ``"0.25/1.50 h"``."""
    scale = total if total is not None else done
    unit, per, digits = ("s", 1.0, 1) if scale < 60 else ("min", 60.0, 1) if scale < 3600 else ("h", 3600.0, 2)
    text = f"{done / per:.{digits}f}" + (f"/{total / per:.{digits}f}" if total is not None else "")
    return f"{text} {unit}"


def info(path: str | os.PathLike, min_duration: float = 0.0) -> AudioInfo:
    """Header information; raises :class:`AudioError` for unreadable, empty or too short files."""
    try:
        with open(path, "rb"):  # libsndfile would say "System error" for a file it may not read
            pass
    except PermissionError:
        raise AudioError(path, "permission denied (this file cannot be read)") from None
    except OSError:
        pass  # libsndfile says what is wrong below
    try:
        i = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types; all mean "cannot read"
        raise AudioError(path, f"cannot read audio ({_short(exc)})") from None
    if i.samplerate <= 0 or i.channels <= 0:
        raise AudioError(path, "invalid header (no sample rate or channels)")
    if not limits.MIN_SAMPLE_RATE <= i.samplerate <= limits.MAX_SAMPLE_RATE:
        raise AudioError(path, f"sample rate {i.samplerate} Hz in its header is outside "
                               f"{limits.MIN_SAMPLE_RATE}–{limits.MAX_SAMPLE_RATE} Hz")
    if i.frames <= 0:
        raise AudioError(path, "empty file (0 samples)")
    meta = AudioInfo(str(path), int(i.samplerate), int(i.channels), int(i.frames))
    if meta.duration < min_duration:
        raise AudioError(path, f"too short ({meta.duration:.3f} s < {min_duration:g} s)")
    return meta


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[-1] if msg else type(exc).__name__)[:200]


#: The most channels an in-memory (C, T) or (T, C) array is taken to have, and how many times
#: longer than that its other axis must be, for ``layout="auto"`` to tell the two apart.
MAX_CHANNELS = 32
MIN_SAMPLES_PER_CHANNEL = 100
LAYOUTS = ("auto", "channels_first", "channels_last")


def to_mono(x: np.ndarray, layout: str = "channels_last") -> np.ndarray:
    """(T,), or 2-D audio with channels first (C, T) or last (T, C) → (T,) float32, channels averaged.

    ``layout="auto"`` (for arrays handed to the Python API, e.g. ``soundfile.read``'s (T, C)
    or torchaudio's (C, T)) takes the short axis as channels when that is unambiguous: at most
    ``MAX_CHANNELS`` entries, and the other axis at least ``MIN_SAMPLES_PER_CHANNEL`` times
    longer. Otherwise it raises ValueError asking for ``layout``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"audio must be (T,), (C, T) or (T, C), got shape {x.shape}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} ({' | '.join(LAYOUTS)})")
    if layout == "auto":
        a, b = x.shape
        if a <= MAX_CHANNELS and b >= MIN_SAMPLES_PER_CHANNEL * a:
            layout = "channels_first"
        elif b <= MAX_CHANNELS and a >= MIN_SAMPLES_PER_CHANNEL * b:
            layout = "channels_last"
        else:
            raise ValueError(f"cannot tell channels from samples in an array of shape {x.shape}: pass "
                             "layout='channels_first' for (C, T) or layout='channels_last' for (T, C)")
    return x.mean(axis=0) if layout == "channels_first" else x.mean(axis=1)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality). (..., T) → (..., T').

    Several channels are resampled one at a time into the output (soxr treats channels
    independently: the same samples as all at once through its (T, C) layout, without the two
    transposed copies that would hold a minute of four tracks three times over)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    flat = x.reshape(-1, x.shape[-1])  # (C, T)
    out = None if len(flat) else np.zeros((0, len(resample(np.zeros(x.shape[-1], np.float32), sr_in, sr_out))),
                                          np.float32)
    for i, channel in enumerate(flat):
        y = soxr.resample(np.ascontiguousarray(channel), sr_in, sr_out, quality="HQ")  # (T',)
        if out is None:
            out = np.empty((len(flat), len(y)), np.float32)  # (C, T')
        out[i] = y
    return out.reshape(*x.shape[:-1], out.shape[-1])


def check_finite(path: str | os.PathLike, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        raise AudioError(path, "contains NaN or infinite samples")


def load(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    start: float = 0.0,
    duration: float | None = None,
    min_duration: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Load ``path`` (or a part of it) as mono float32.

    Returns ``(x, sr)`` with ``x`` of shape (T,), resampled to ``sample_rate`` when given.
    Raises :class:`AudioError` (one line naming the file) for unreadable, empty, too short
    or non-finite audio.
    """
    meta = info(path, min_duration)
    first = int(round(start * meta.sample_rate))
    frames = -1 if duration is None else int(round(duration * meta.sample_rate))
    try:
        x, sr = sf.read(str(path), start=first, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(path, f"cannot decode audio ({_short(exc)})") from None
    if x.shape[0] == 0:
        raise AudioError(path, "empty file (0 samples)")
    x = to_mono(x)
    check_finite(path, x)
    if sample_rate is not None and sample_rate != sr:
        x, sr = resample(x, sr, sample_rate), sample_rate
    return x, sr


def resampled(chunks: Iterator[np.ndarray], sr_in: int, sr_out: int, channels: int = 1) -> Iterator[np.ndarray]:
    """Stream-resample chunks ((t,) for one channel, (C, t) for several) with soxr: the same
    samples whatever the chunks (no edges between them), aligned with the input's first sample."""
    if sr_in == sr_out:
        yield from chunks
        return
    stream = soxr.ResampleStream(sr_in, sr_out, channels, dtype="float32", quality="HQ")
    for c in chunks:
        y = stream.resample_chunk(np.ascontiguousarray(c.T if channels > 1 else c))
        if len(y):
            yield np.ascontiguousarray(y.T) if channels > 1 else y  # rows contiguous: fast sums, no copies to write
    y = stream.resample_chunk(np.zeros((0, channels) if channels > 1 else 0, np.float32), last=True)
    if len(y):
        yield np.ascontiguousarray(y.T) if channels > 1 else y  # rows contiguous: fast sums, no copies to write


def blocks(path: str | os.PathLike, block_seconds: float = 10.0, *, start: float = 0.0,
           duration: float | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 blocks at the file's own rate (from ``start`` seconds, for
    ``duration`` seconds or to the end); memory stays flat."""
    meta = info(path)
    size = max(1, int(block_seconds * meta.sample_rate))
    left = None if duration is None else max(0, int(round(duration * meta.sample_rate)))
    try:
        with sf.SoundFile(str(path)) as f:
            if start > 0:
                f.seek(min(meta.frames, int(round(start * meta.sample_rate))))
            while True:
                want = size if left is None else min(size, left)
                x = f.read(want, dtype="float32", always_2d=True) if want else np.zeros((0, 1), np.float32)
                if x.shape[0] == 0:
                    return
                if left is not None:
                    left -= x.shape[0]
                x = to_mono(x)
                check_finite(path, x)
                yield x
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(path, f"cannot decode audio ({_short(exc)})") from None


def ahead(items: Iterator, depth: int = 1) -> Iterator:
    """Yield what ``items`` yields, computed in a thread beside the caller up to ``depth`` items
    ahead: while the caller works on one item (encoding it, classifying it) the next is made
    (decoded, resampled, separated: NumPy, soxr, libsndfile, PyTorch and LiteRT let go of
    Python's lock while they work). At most ``depth`` + 1 items are alive at once, the caller's
    included: the thread starts an item only once the caller is done with the one ``depth``
    before it. An exception in the thread is raised here, in the caller, as the same exception;
    when the caller stops early (an error, Ctrl-C, ``close()``) the thread stops after the item
    it is making."""
    import queue
    import threading

    done = object()
    ready: queue.Queue = queue.Queue()
    slots = threading.Semaphore(max(1, depth) + 1)  # items alive: made or being made, not yet given up by the caller
    stop = threading.Event()

    def make() -> None:
        try:
            source = iter(items)
            while True:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(source, done)
                ready.put((item, None))
                if item is done:
                    return
        except BaseException as exc:  # handed to the caller, which raises it
            ready.put((done, exc))

    worker = threading.Thread(target=make, name="birdsep-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = ready.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
            del item
            slots.release()  # the caller is done with it
    finally:
        stop.set()
        worker.join()


@contextmanager
def system_errors():
    """libsndfile's "System error" (a write the file system refused: full, read-only, no
    permission) raised as the :class:`OSError` behind it, so that the atomic write around it
    reports one :class:`~birdsep.errors.StorageError` line instead of an internal error."""
    try:
        yield
    except sf.LibsndfileError as exc:
        err = sf._ffi.errno  # the C errno of libsndfile's last call in this thread
        if getattr(exc, "code", None) == SF_SYSTEM_ERROR and err:
            raise OSError(err, os.strerror(err)) from exc
        raise


SF_SYSTEM_ERROR = 2  # libsndfile's SFE_SYSTEM: an operating-system call failed (errno says why)


#: ``--format`` × ``--bits`` of separated tracks → libsndfile subtype (32 bits: float, WAV only).
TRACK_SUBTYPES = {"wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, "flac": {16: "PCM_16", 24: "PCM_24"}}
WAV_LIMIT_BYTES = 3_900_000_000  # above this a WAV needs the RF64 container


def check_track_format(fmt: str, bits: int) -> None:
    from birdsep.errors import UsageError

    if fmt not in TRACK_SUBTYPES:
        raise UsageError(f"--format must be one of {', '.join(TRACK_SUBTYPES)}, not {fmt!r}")
    if bits not in TRACK_SUBTYPES[fmt]:
        raise UsageError(f"--format {fmt} takes --bits {' or '.join(map(str, TRACK_SUBTYPES[fmt]))}"
                         + (" (32-bit float needs --format wav)" if bits == 32 else ""))


class TrackWriter:
    """A mono track written chunk by chunk in ``fmt`` (wav | flac) with ``bits`` per sample.

    Integer formats are quantised here (round to the nearest step of 2^-(bits-1), clipped to
    full scale) rather than by libsndfile, so :meth:`write` can return exactly the samples the
    file holds (float32) and the caller can keep sums exact. ``clipped`` counts the samples
    that full scale cut off.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, fmt: str = "flac", bits: int = 24,
                 frames: int = 0):
        check_track_format(fmt, bits)
        container = "FLAC" if fmt == "flac" else ("RF64" if frames * bits // 8 > WAV_LIMIT_BYTES else "WAV")
        with system_errors():
            self.file = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1,
                                     subtype=TRACK_SUBTYPES[fmt][bits], format=container)
        self.bits, self.clipped = bits, 0

    def write(self, x: np.ndarray) -> np.ndarray:
        """Write (t,) float32; returns the (t,) float32 samples the file now holds."""
        if self.bits == 32:
            with system_errors():
                self.file.write(x)
            return x
        top = 2 ** (self.bits - 1)
        n = np.rint(x.astype(np.float64) * top)
        self.clipped += int(np.count_nonzero((n >= top) | (n < -top)))
        n = np.clip(n, -top, top - 1)
        with system_errors():
            self.file.write(n.astype(np.int16) if self.bits == 16 else n.astype(np.int32) << (32 - self.bits))
        return (n / top).astype(np.float32)

    def close(self) -> None:
        with system_errors():
            self.file.close()

    def __enter__(self) -> "TrackWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write(path: str | os.PathLike, x: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Write (T,) or (C, T) audio atomically (temporary name, then rename)."""
    x = np.asarray(x, dtype=np.float32)
    data = x.T if x.ndim == 2 else x
    with files.atomic(path) as tmp, system_errors():
        sf.write(str(tmp), data, sample_rate, subtype=subtype, format=_format_of(Path(path)))


def transcode(src: str | os.PathLike, dst: str | os.PathLike, subtype: str = "PCM_24") -> Path:
    """Write ``src`` as mono ``dst`` (format from its extension, e.g. FLAC) block by block,
    atomically; samples beyond ±1 are clipped by integer formats."""
    meta = info(src)
    with files.atomic(dst) as tmp, system_errors():
        with sf.SoundFile(str(tmp), "w", samplerate=meta.sample_rate, channels=1, subtype=subtype,
                          format=_format_of(Path(dst))) as out:
            for x in blocks(src, 30.0):
                out.write(x)
    return Path(dst)


def _format_of(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}.get(ext, "WAV")
