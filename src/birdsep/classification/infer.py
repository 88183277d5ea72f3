"""Applying a trained classifier: per-window species probabilities (``birdsep classify-clips``)."""
from __future__ import annotations

import os
import sys
from typing import TextIO

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


def classify_clips(model_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top: int | None = None,
                   threads: int | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The ``classify-clips`` command; returns the exit code (1 if any file failed).

    Prints CSV: ``file,start_s,end_s,bird,<species 1>,…`` with sigmoid probabilities per 5 s
    window; with ``top`` = K instead ``file,start_s,end_s,rank,species,probability`` for the
    K most probable species. A file that cannot be read gets one line on ``err``.
    """
    from birdsep.audio import load
    from birdsep.errors import AudioError, InputError
    from birdsep.files import find_audio

    out, err = out or sys.stdout, err or sys.stderr
    if threads:
        torch.set_num_threads(threads)
    model = M.load(model_dir)
    species = model.cfg.species
    failed = 0
    files = []
    for item in inputs:
        try:
            files.extend(f for f, _ in find_audio([item]))
        except InputError as exc:
            print(f"birdsep classify-clips: error: {exc}", file=err)
            failed += 1
    if top:
        print("file,start_s,end_s,rank,species,probability", file=out)
    else:
        print(",".join(["file", "start_s", "end_s", "bird", *map(_csv_field, species)]), file=out)
    for f in files:
        try:
            x, _ = load(f, model.cfg.sample_rate, min_duration=0.05)
        except AudioError as exc:
            print(f"birdsep classify-clips: error: {exc}", file=err)
            failed += 1
            continue
        logits, spans = window_logits(model, x)
        prob = 1.0 / (1.0 + np.exp(-logits["species"]))
        bird = 1.0 / (1.0 + np.exp(-logits["bird"][:, 0]))
        name = _csv_field(str(f))
        for i, (s, e) in enumerate(spans):
            if top:
                for r, j in enumerate(np.argsort(-prob[i])[:top], 1):
                    print(f"{name},{s:.2f},{e:.2f},{r},{_csv_field(species[j])},{prob[i, j]:.4f}", file=out)
            else:
                print(",".join([name, f"{s:.2f}", f"{e:.2f}", f"{bird[i]:.4f}", *(f"{p:.4f}" for p in prob[i])]),
                      file=out)
        out.flush()
    if failed:
        print(f"birdsep classify-clips: {failed} file(s) failed", file=err)
    return 1 if failed else 0


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s
