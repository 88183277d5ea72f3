"""Separate recordings on disk: one file (streamed block by block) or a whole batch
(resumable, atomic outputs, an error log, parallel jobs, a progress bar).

For each input, ``OUT/<name>/`` receives ``source_1.flac … source_M.flac`` (``--format``,
``--bits``: 24-bit FLAC by default), for inputs sampled above the model's rate
``high_band.flac`` (what lies above the model's band, so that all files together sum to the
input), optionally ``separation.png`` / ``separation.mp4``, and last ``separation.json``,
whose presence marks the input as finished.

Integer tracks are quantised here (:class:`birdsep.audio.TrackWriter`), and the high band is
the input minus the tracks *as stored*, so the stored files sum to the input to within half a
step of the chosen precision (2^-24 of full scale at 24 bits, 2^-16 at 16), unless a track
clipped at full scale (counted in ``clipped_samples``). The sources alone sum to the input
within the model's band, to within M half-steps.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from birdsep import audio, files
from birdsep.version import __version__
from birdsep.batch import BatchSummary, Done, run_batch
from birdsep.errors import UsageError
from birdsep.separation import architectures, runtime
from birdsep.separation.apply import DEFAULT_BLOCK_SECONDS, DEFAULT_OVERLAP, BlockSettings, separate_stream
from birdsep.separation.runtime import Runtime

log = logging.getLogger(__name__)

RESULT_NAME = files.RESULT_NAME


@dataclass(frozen=True)
class SeparateOptions:
    out: str = "separated"
    model: str | None = None
    sample_rate: str = "native"  # native | an integer rate
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    overlap: float = DEFAULT_OVERLAP
    device: str = "auto"  # cpu | cuda | auto
    precision: str = "auto"  # fp32 | bf16 | auto
    format: str = "flac"  # flac | wav: the tracks' file format
    bits: int = 24  # 16 | 24 (integer) | 32 (float, wav only)
    plot: bool = False
    video: bool = False
    jobs: int | None = 1  # None: chosen here (batch.plan_jobs), or as many Ray workers as the cluster holds
    threads: int | None = None
    progress: bool = True
    ray: str | None = None  # a Ray cluster's address (birdsep.cluster); local: start Ray here


class _Tee:
    """Passes chunks through while keeping a copy in a FIFO (to line the input up with outputs);
    chunks pass in one thread and are taken in another (:func:`audio.ahead`), hence the lock."""

    def __init__(self, chunks: Iterator[np.ndarray]):
        self.chunks, self.fifo, self.size = chunks, deque(), 0
        self.lock = threading.Lock()

    def __iter__(self):
        for c in self.chunks:
            with self.lock:
                self.fifo.append(c)
                self.size += len(c)
            yield c

    def take(self, n: int) -> np.ndarray:
        parts, got = [], 0
        with self.lock:
            while got < n and self.fifo:
                c = self.fifo.popleft()
                k = min(n - got, len(c))
                parts.append(c[:k])
                if k < len(c):
                    self.fifo.appendleft(c[k:])
                got += k
            self.size -= got
        x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return np.pad(x, (0, n - len(x)))


def is_done(folder: Path, opts: SeparateOptions) -> bool:
    meta = read_result(folder)
    if meta is None or "sources" not in meta:
        return False
    wanted = track_files(folder, meta) + [folder / n for n, on in (("separation.png", opts.plot),
                                                                   ("separation.mp4", opts.video)) if on]
    return all(f.is_file() for f in wanted)


def holds_tracks_of(folder: Path, path: Path, model_sha256: str) -> bool:
    """Whether ``folder`` holds finished tracks of ``path`` made by the separator with these weights."""
    meta = read_result(folder)
    return (is_done(folder, SeparateOptions()) and meta.get("model_sha256") == model_sha256
            and meta.get("input_resolved") == str(Path(path).resolve()))


def separate_file(path: Path, folder: Path, model, opts: SeparateOptions, rt: Runtime, model_name: str = "",
                  progress: Callable[[float], None] | None = None) -> dict:
    """Separate one file into ``folder`` on the resolved runtime ``rt``; returns what goes into
    separation.json. Raises AudioError.

    ``progress``, if given, is called with the fraction of the input done after each chunk.
    Each source's ``level_db`` in separation.json is its energy relative to the mixture's (the
    sum of the outputs, i.e. the input within the chosen rate): the levels the picture's and
    the page's legends show.
    """
    from birdsep.plots import SpectrogramAccumulator, VideoError, make_video, plot_separation
    from birdsep.pretrained import weights_sha256

    started = time.time()
    meta = audio.info(path, min_duration=audio.MIN_SECONDS)
    sr_in, sr_model = meta.sample_rate, model.config.sample_rate
    sr_out = sr_in if opts.sample_rate == "native" else int(opts.sample_rate)
    m = model.config.num_sources
    settings = BlockSettings(opts.block_seconds, opts.overlap, rt.device, rt.precision)
    keep_high_band = sr_out == sr_in and sr_in > sr_model
    # An input below the model's rate goes up to it and its tracks come back down: the round
    # trip's small error (filter edges) is shared equally by the tracks, as the model's mixture
    # consistency shares its own, so that the stored tracks still sum to the input.
    share_residual = sr_out == sr_in and sr_in < sr_model

    files.make_folder(folder)
    files.remove_stale_temps(folder)  # left by an interrupted earlier run
    names = [f"source_{k + 1}.{opts.format}" for k in range(m)] + [f"high_band.{opts.format}"] * keep_high_band
    expected = int(round(meta.frames * sr_out / sr_in))
    energy = np.zeros(m + 1)
    mixture_energy = 0.0
    written = 0
    spec = None
    if opts.plot or opts.video:
        spec = SpectrogramAccumulator(sr_model, m + 1, int(meta.duration * sr_model) + 1)
    with contextlib.ExitStack() as stack:  # all tracks appear under their names together, or none
        tmps = [stack.enter_context(files.atomic(folder / n)) for n in names]
        writers = [stack.enter_context(audio.TrackWriter(t, sr_out, opts.format, opts.bits, expected)) for t in tmps]
        source = audio.blocks(path, block_seconds=10.0)
        # the input is kept in step with the outputs only when it is read back (high band, shared
        # residual): a tee that nobody reads from would hold the whole recording
        native = _Tee(source) if keep_high_band or share_residual else None
        model_rate = audio.resampled(iter(native) if native is not None else source, sr_in, sr_model)

        # decoding, resampling and the model run a chunk ahead in a thread, while this one draws,
        # quantises, encodes and writes the chunk before (the same chunks, in the same order).
        # Closed on the way out, first: an error or Ctrl-C here stops that thread at once, not
        # when the traceback holding this frame is freed (a thread left running at exit keeps
        # soxr's stream alive, which nanobind reports as a leak on stderr)
        separated = stack.enter_context(contextlib.closing(
            audio.ahead(separate_stream(model, model_rate, sr_model, settings))))

        def with_spectrogram(chunks):  # the sources sum to the model-rate mixture: row 0 of the picture
            for s in chunks:
                if spec is not None:
                    spec.add(np.concatenate([s.sum(0, keepdims=True), s], axis=0))
                yield s

        for chunk in audio.resampled(with_spectrogram(separated), sr_model, sr_out, channels=m):
            chunk = chunk[:, : max(0, expected - written)]
            if chunk.shape[1] == 0:
                continue
            if share_residual:
                chunk = chunk + (native.take(chunk.shape[1]) - chunk.sum(0)) / m
            chunk = np.stack([writers[k].write(chunk[k]) for k in range(m)])  # (M, t) as stored
            energy[:m] += np.einsum("mt,mt->m", chunk, chunk)  # per chunk in float32, summed in float64
            mixture = chunk.sum(0)
            if keep_high_band:
                residual = writers[m].write(native.take(chunk.shape[1]) - mixture)
                energy[m] += float(np.dot(residual, residual))
                mixture = mixture + residual
            mixture_energy += float(np.dot(mixture, mixture))
            written += chunk.shape[1]
            if progress is not None:
                progress(min(1.0, written / max(expected, 1)))
        if written < expected:  # resampler rounding: pad the last few samples
            pad = np.zeros(expected - written, np.float32)
            if share_residual:  # the tracks share what is left of the input
                pad = native.take(len(pad)) / m
            for k, w in enumerate(writers[:m]):
                stored = w.write(pad)
                energy[k] += float(np.dot(stored, stored))
            if share_residual:
                mixture_energy += float(np.dot(pad * m, pad * m))
            if keep_high_band:  # the sources are silent there: the input is all high band
                rest = writers[m].write(native.take(len(pad)))
                energy[m] += float(np.dot(rest, rest))
                mixture_energy += float(np.dot(rest, rest))

    clipped = sum(w.clipped for w in writers)
    if clipped:
        log.warning("%s: %d sample(s) of the tracks clipped at full scale (--bits %d); --format wav --bits 32 "
                    "keeps them", path, clipped, opts.bits)
    total = energy[:m].sum() + energy[m] if keep_high_band else energy[:m].sum()
    result = {
        "birdsep_version": __version__,
        "input": str(path),
        "input_resolved": str(Path(path).resolve()),
        "duration_s": round(meta.frames / sr_in, 4),
        "input_sample_rate": sr_in,
        "input_channels": meta.channels,
        "output_sample_rate": sr_out,
        "model": model_name,
        "model_sha256": weights_sha256(model_name) if model_name else None,
        "model_config": architectures.to_stored(model.config),  # names the architecture, as config.json does
        "settings": {**asdict(settings), "sample_rate": opts.sample_rate, "format": opts.format, "bits": opts.bits},
        "clipped_samples": clipped,
        "runtime": {"asked": {"device": opts.device, "precision": opts.precision}, **rt.to_dict()},
        "mixture_energy_db": _db(mixture_energy),
        "sources": [{"file": names[k], "energy_db": _db(energy[k]), "energy_share": _share(energy[k], total),
                     "level_db": _level(energy[k], mixture_energy)} for k in range(m)],
        "high_band": names[m] if keep_high_band else None,
        "high_band_energy_db": _db(energy[m]) if keep_high_band else None,
        "high_band_level_db": _level(energy[m], mixture_energy) if keep_high_band else None,
    }
    if spec is not None:
        power, times, freqs = spec.result()  # (1 + M, F, N) at the model's rate
        inside = freqs <= min(sr_in, sr_model) / 2  # an upsampled input holds nothing above its own band
        power, freqs = power[:, inside], freqs[inside]
        area = plot_separation(power[0], power[1:], times, freqs, folder / "separation.png",
                               title=_picture_title(path.name, m, model_name),
                               levels_db=[s["level_db"] for s in result["sources"]])
        if opts.video:
            try:
                make_video(folder / "separation.png", path, meta.duration, area, folder / "separation.mp4")
            except VideoError as exc:  # no ffmpeg, or it failed: not the audio's fault
                raise UsageError.of(path, str(exc)) from None
    result["elapsed_s"] = round(time.time() - started, 3)
    files.write_json(folder / RESULT_NAME, result)
    return result


def _db(e: float) -> float:
    return round(float(10 * np.log10(e + 1e-20)), 2)


def _share(e: float, total: float) -> float:
    return round(float(e / total), 4) if total > 0 else 0.0


def _level(e: float, mixture: float) -> float:
    """dB of ``e`` relative to the mixture's energy."""
    return round(float(10 * np.log10((e + 1e-20) / (mixture + 1e-20))), 2)


def _picture_title(name: str, m: int, model_name: str) -> str:
    return f"{name} — {m} sources ({Path(model_name).name or 'model'})"


# ------------------------------------------------------------------------------ reading results


def read_result(folder: Path) -> dict | None:
    """separation.json of a finished folder, or None."""
    try:
        return json.loads((folder / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None


def track_files(folder: Path, result: dict) -> list[Path]:
    """The separated tracks, then the high band if there is one."""
    names = [s["file"] for s in result["sources"]] + ([result["high_band"]] if result.get("high_band") else [])
    return [folder / n for n in names]


def levels_db(result: dict) -> list[float] | None:
    """Each source's level relative to the mixture (``level_db``; None for results written
    before birdsep recorded it)."""
    levels = [s.get("level_db") for s in result["sources"]]
    return None if any(v is None for v in levels) else levels


def track_spectrogram(folder: Path, result: dict, start: float = 0.0, end: float | None = None,
                      max_columns: int = 2400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrograms of a finished separation between ``start`` and ``end`` seconds, read
    block by block from its tracks: (C, F, N) with row 0 the mixture (the sum of all tracks,
    high band included), then each source, then the high band; times (N,) from ``start``;
    freqs (F,)."""
    from birdsep.plots import SpectrogramAccumulator, fft_size

    paths = track_files(folder, result)
    sr = int(result["output_sample_rate"])
    total = float(result["duration_s"])
    start = min(max(0.0, start), total)
    end = total if end is None else min(max(end, start), total)
    spec = SpectrogramAccumulator(sr, 1 + len(paths), int((end - start) * sr) + 1, n_fft=fft_size(sr),
                                  max_columns=max_columns)
    streams = [audio.blocks(f, 10.0, start=start, duration=end - start) for f in paths]
    for parts in zip(*streams):
        n = min(len(p) for p in parts)
        x = np.stack([p[:n] for p in parts])  # (C, n)
        spec.add(np.concatenate([x.sum(0, keepdims=True), x]))
    power, times, freqs = spec.result()
    return power, times + start, freqs


def plot_folder(folder: Path) -> Path:
    """Draw separation.png for a finished separation (one made without ``--plot``)."""
    from birdsep.plots import plot_separation

    result = read_result(folder)
    if result is None:
        raise UsageError.of(folder, f"no {RESULT_NAME} here: not a finished separation")
    power, times, freqs = track_spectrogram(folder, result)
    m = len(result["sources"])
    plot_separation(power[0], power[1 : 1 + m], times, freqs, folder / "separation.png",
                    title=_picture_title(Path(result["input"]).name, m, result.get("model", "")),
                    levels_db=levels_db(result))
    return folder / "separation.png"


# ------------------------------------------------------------------------------ batches


def _separator_worker(model: str, opts: SeparateOptions, rt: Runtime | None, loaded=None):
    """Load the model once per process; return work(path, folder, progress) -> Done.

    ``model``: as ``--model`` takes it. ``rt`` None: the device and precision are settled here
    (a Ray worker, on its node's hardware)."""
    from birdsep.pretrained import load_model, resolve

    runtime.tune_allocator()
    model_folder = str(resolve(model))
    if loaded is None:
        loaded, rt = runtime.settle(opts.device, opts.precision, load=partial(load_model, model_folder), given=rt)
    return lambda path, folder, progress: Done(separate_file(path, folder, loaded, opts, rt, model_folder,
                                                             progress)["duration_s"])


def separate_batch(inputs: list[str], opts: SeparateOptions) -> BatchSummary:
    """``birdsep separate``. The model, ``--device`` and ``--precision`` are settled here, once,
    before any file (a missing model or GPU is one line, not one per file); with ``--ray`` the
    model is checked here and each worker settles device and precision on its own node."""
    from birdsep.pretrained import load_model, portable, resolve

    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    audio.check_track_format(opts.format, opts.bits)
    out = Path(opts.out)
    model_folder = resolve(opts.model)
    if opts.ray is None:
        model, rt = runtime.settle(opts.device, opts.precision, load=partial(load_model, str(model_folder)))
        worker_args = (str(model_folder), opts, rt)
        work = _separator_worker(*worker_args, model)
    else:
        load_model(model_folder)
        worker_args, work = (portable(model_folder), opts, None), None
    return run_batch(inputs, out, target_for=lambda f, root: files.output_path(f, root, out),
                     is_done=lambda folder: is_done(folder, opts), make_worker=_separator_worker,
                     worker_args=worker_args, jobs=opts.jobs, threads=opts.threads, progress=opts.progress,
                     verb="separating", past="separated", work=work, cluster=opts.ray, device=opts.device)
