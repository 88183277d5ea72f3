"""``birdsep detect-activity`` and ``birdsep classify-clips``: the batch runner around
classification's per-clip functions (:mod:`birdsep.classification.activity`,
:mod:`birdsep.classification.infer`), one output line per window on stdout, a file that
cannot be read one line on stderr while the others go on."""
from __future__ import annotations

import os
from typing import TextIO

import numpy as np

from birdsep import limits
from birdsep.audio import MIN_SECONDS, load
from birdsep.batch import BatchSummary, Done, run_batch
from birdsep.classification.activity import MAX_WINDOWS, WINDOW_SECONDS, detect_activity
from birdsep.errors import UsageError


def detect_activity_files(inputs: list[str | os.PathLike], *, window_seconds: float = WINDOW_SECONDS,
                          max_windows: int = MAX_WINDOWS, stream: TextIO | None = None) -> BatchSummary:
    """``birdsep detect-activity``: one tab-separated line per window (file, rank, start_s,
    end_s, energy) on ``stream`` (stdout), through the batch runner: a file that cannot be read
    gets one line on stderr and the others go on."""
    if max_windows < 1:
        raise UsageError("--max-windows must be at least 1")
    limits.window(window_seconds, "--window")
    return run_batch([str(i) for i in inputs], None, make_worker=_activity_worker,
                     worker_args=(window_seconds, max_windows), progress=False,
                     header="file\trank\tstart_s\tend_s\tenergy", stream=stream, prefix="birdsep detect-activity: ")


def _activity_worker(window_seconds: float, max_windows: int):
    def work(path, target, progress) -> Done:
        x, sr = load(path, min_duration=MIN_SECONDS)
        wins = detect_activity(x, sr, window_seconds, max_windows)
        return Done(len(x) / sr, tuple(f"{path}\t{rank}\t{w.start:.2f}\t{w.end:.2f}\t{w.energy:.1f}"
                                        for rank, w in enumerate(wins, 1)))

    return work


def classify_clips(model_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top: int | None = None,
                   threads: int | None = None, stream: TextIO | None = None) -> BatchSummary:
    """``birdsep classify-clips``: CSV on ``stream`` (stdout), through the batch runner.

    ``file,start_s,end_s,bird,<species 1>,…`` with sigmoid probabilities per window of the
    model's length (5 s; 3 s for heads on BirdNET embeddings); with
    ``top`` = K instead ``file,start_s,end_s,rank,species,probability`` for the K most probable
    species. A file that cannot be read gets one line on stderr and the others go on.
    """
    from birdsep.classification.infer import load_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    model = load_model(model_dir)  # a bad run directory fails here, before any file
    species = model.cfg.species
    header = ("file,start_s,end_s,rank,species,probability" if top
              else ",".join(["file", "start_s", "end_s", "bird", *map(_csv_field, species)]))
    return run_batch([str(i) for i in inputs], None, make_worker=_clips_worker, worker_args=(model_dir, top),
                     work=_clips_worker(model_dir, top, model), progress=False, header=header, stream=stream,
                     prefix="birdsep classify-clips: ")


def _clips_worker(model_dir, top: int | None, model=None):
    from birdsep.classification.infer import clip_probabilities, load_model

    model = model or load_model(model_dir)
    species = model.cfg.species

    def work(path, target, progress) -> Done:
        x, _ = load(path, model.cfg.sample_rate, min_duration=MIN_SECONDS)
        spans, bird, prob = clip_probabilities(model, x)
        name, lines = _csv_field(str(path)), []
        for i, (s, e) in enumerate(spans):
            if top:
                lines += [f"{name},{s:.2f},{e:.2f},{r},{_csv_field(species[j])},{prob[i, j]:.4f}"
                          for r, j in enumerate(np.argsort(-prob[i])[:top], 1)]
            else:
                lines.append(",".join([name, f"{s:.2f}", f"{e:.2f}", f"{bird[i]:.4f}", *(f"{p:.4f}" for p in prob[i])]))
        return Done(len(x) / model.cfg.sample_rate, tuple(lines))

    return work


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s
