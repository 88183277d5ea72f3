"""The Python API: separate a waveform held in memory."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from birdsep import audio
from birdsep.pretrained import load_model, probe_audio
from birdsep.separation import runtime
from birdsep.separation.apply import DEFAULT_BLOCK_SECONDS, DEFAULT_OVERLAP, BlockSettings, separate_array


def separate(waveform, sample_rate: int, model=None, *, output_rate: int | None = None,
             block_seconds: float = DEFAULT_BLOCK_SECONDS, overlap: float = DEFAULT_OVERLAP, device: str = "auto",
             precision: str = "auto"):
    """Separate ``waveform`` into the model's M sources.

    waveform: numpy array or torch tensor, (T,) mono or (C, T) (channels are averaged).
    model: a loaded separator, a model folder / run directory, or None for the shipped default.
    device, precision: as ``birdsep separate``'s ``--device`` / ``--precision`` (see
    :mod:`birdsep.separation.runtime`); the default ``auto`` measures once per model and device.
    Returns ``(sources, rate)``: sources (M, T') of the same kind as the input (numpy or torch),
    at ``output_rate`` (default: ``sample_rate``), summing to the input within the model's band.
    """
    is_torch = isinstance(waveform, torch.Tensor)
    x = waveform.detach().cpu().numpy() if is_torch else np.asarray(waveform)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"waveform must be (T,) or (C, T), got shape {tuple(waveform.shape)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or infinite samples")
    if x.size == 0:
        raise ValueError("waveform is empty")
    sep = model if isinstance(model, torch.nn.Module) else load_model(model)
    sr_model = sep.config.sample_rate
    rate = output_rate or sample_rate
    rt = runtime.resolve(device, precision, sep, partial(probe_audio, sr_model))
    settings = BlockSettings(block_seconds, overlap, rt.device, rt.precision)
    y = separate_array(sep, audio.resample(x, sample_rate, sr_model), sr_model, settings)  # (M, T_model)
    y = audio.resample(y, sr_model, rate)
    expected = int(round(len(x) * rate / sample_rate))
    y = np.pad(y, ((0, 0), (0, max(0, expected - y.shape[1]))))[:, :expected]
    return (torch.from_numpy(np.ascontiguousarray(y)) if is_torch else y), rate
