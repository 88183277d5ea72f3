"""Applying a trained classifier: per-window species probabilities (``birdsep classify-clips``)."""
from __future__ import annotations

import os
from typing import TextIO

import numpy as np
import torch

from birdsep.audio import MIN_SECONDS, load
from birdsep.batch import BatchSummary, Done, run_batch
from birdsep.classification import model as M


def windows_of(x: np.ndarray, sr: int, seconds: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Cut (T,) into consecutive windows (N, seconds·sr), the last zero-padded; ≥ 1 window.

    A trailing piece shorter than a quarter window is dropped (unless it is all there is).
    """
    n = int(round(seconds * sr))
    starts = list(range(0, max(1, len(x)), n))
    if len(starts) > 1 and len(x) - starts[-1] < n // 4:
        starts.pop()
    out = np.zeros((len(starts), n), np.float32)
    spans = []
    for i, s in enumerate(starts):
        seg = x[s : s + n]
        out[i, : len(seg)] = seg
        spans.append((s / sr, min(len(x), s + n) / sr))
    return out, spans


@torch.no_grad()
def window_logits(model: M.Ensemble, x: np.ndarray, batch_size: int = 8) -> tuple[dict[str, np.ndarray], list]:
    """(T,) audio at the model's rate → ({head: logits (N, n_head)}, [(start_s, end_s)] × N)."""
    cfg = model.cfg
    wins, spans = windows_of(x, cfg.sample_rate, cfg.window_seconds)
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(wins), batch_size):
        out = model(torch.from_numpy(wins[i : i + batch_size]).to(device))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, spans


def load_model(model_dir: str | os.PathLike):
    """A train-classifier run: the EfficientNet ensemble, or heads on BirdNET embeddings
    (:class:`birdsep.classification.heads.HeadsBackend`); both have ``cfg`` (species,
    sample_rate, window_seconds)."""
    from birdsep.classification import heads

    return heads.HeadsBackend(model_dir) if heads.is_heads_run(model_dir) else M.load(model_dir)


def clip_probabilities(model, x: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """(T,) audio at the model's rate → (spans [(start_s, end_s)] × N, bird (N,), species (N, S)),
    sigmoid probabilities per window of the model's length."""
    if hasattr(model, "window_scores"):  # heads on embeddings
        wins, spans = windows_of(x, model.cfg.sample_rate, model.cfg.window_seconds)
        return spans, *model.window_scores(wins)
    logits, spans = window_logits(model, x)
    return spans, _sigmoid(logits["bird"][:, 0]), _sigmoid(logits["species"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def classify_clips(model_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top: int | None = None,
                   threads: int | None = None, stream: TextIO | None = None) -> BatchSummary:
    """``birdsep classify-clips``: CSV on ``stream`` (stdout), through the batch runner.

    ``file,start_s,end_s,bird,<species 1>,…`` with sigmoid probabilities per window of the
    model's length (5 s; 3 s for heads on BirdNET embeddings); with
    ``top`` = K instead ``file,start_s,end_s,rank,species,probability`` for the K most probable
    species. A file that cannot be read gets one line on stderr and the others go on.
    """
    if threads:
        torch.set_num_threads(threads)
    model = load_model(model_dir)  # a bad run directory fails here, before any file
    species = model.cfg.species
    header = ("file,start_s,end_s,rank,species,probability" if top
              else ",".join(["file", "start_s", "end_s", "bird", *map(_csv_field, species)]))
    return run_batch([str(i) for i in inputs], None, make_worker=_clips_worker, worker_args=(model_dir, top),
                     work=_clips_worker(model_dir, top, model), progress=False, header=header, stream=stream,
                     prefix="birdsep classify-clips: ")


def _clips_worker(model_dir, top: int | None, model=None):
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
