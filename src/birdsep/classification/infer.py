"""Applying a trained classifier: per-window species probabilities (what `birdsep classify-clips` writes, see :mod:`birdsep.clips`)."""
from __future__ import annotations

import os

import numpy as np
import torch

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
