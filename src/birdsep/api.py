"""The Python API: separate or classify a waveform held in memory.

Both functions take the waveform as a NumPy array or a torch tensor: (T,) mono, or 2-D with
channels first (C, T) or last (T, C; what ``soundfile.read`` returns). Channels are averaged.
With ``layout="auto"`` (the default) the short axis is taken as channels when that is
unambiguous (at most 32 of them, and at least 100 samples per channel); otherwise a ValueError
asks for ``layout="channels_first"`` or ``"channels_last"``. ``device`` and ``precision``
mean what ``--device`` / ``--precision`` mean on the command line (default ``auto``; see
:mod:`birdsep.separation.runtime`). Sample rates, block lengths and windows are checked as
the command line checks them (:mod:`birdsep.limits`): a value out of range raises
:class:`birdsep.limits.InvalidValue`, a ValueError.
"""
from __future__ import annotations

import numpy as np
import torch

from birdsep import audio, limits
from birdsep.modes import DEFAULT_MODE, DEFAULT_RULE, check_mode
from birdsep.pretrained import load_model
from birdsep.separation import runtime
from birdsep.separation.apply import DEFAULT_BLOCK_SECONDS, DEFAULT_OVERLAP, BlockSettings, separate_array

__all__ = ["separate", "classify", "load_model"]


def separate(waveform, sample_rate: int, model=None, *, output_rate: int | None = None,
             block_seconds: float = DEFAULT_BLOCK_SECONDS, overlap: float = DEFAULT_OVERLAP, device: str = "auto",
             precision: str = "auto", layout: str = "auto"):
    """Separate ``waveform`` into the model's M sources.

    model: a loaded separator, a model folder / run directory, or None for the shipped default.
    Returns ``(sources, rate)``: sources (M, T') of the same kind as the input (numpy or torch),
    at ``output_rate`` (default: ``sample_rate``), summing to the input within the model's band.
    """
    sample_rate = limits.sample_rate(sample_rate, "sample_rate")
    rate = sample_rate if output_rate is None else limits.sample_rate(output_rate, "output_rate")
    limits.blocks(block_seconds, overlap)
    x = _mono(waveform, layout)  # (T,)
    sep = _separator(model)
    sr_model = sep.config.sample_rate
    _, rt = runtime.settle(device, precision, model=sep)
    settings = BlockSettings(block_seconds, overlap, rt.device, rt.precision)
    y = separate_array(sep, audio.resample(x, sample_rate, sr_model), sr_model, settings)  # (M, T_model)
    y = audio.resample(y, sr_model, rate)
    expected = int(round(len(x) * rate / sample_rate))
    y = np.pad(y, ((0, 0), (0, max(0, expected - y.shape[1]))))[:, :expected]
    return (torch.from_numpy(np.ascontiguousarray(y)) if isinstance(waveform, torch.Tensor) else y), rate


def classify(waveform, sample_rate: int, classifier="birdnet", *, mode: str = DEFAULT_MODE,
             combine: str = DEFAULT_RULE, separator=None, window: float = 5.0, overlap: float = 0.0,
             device: str = "auto", precision: str = "auto", layout: str = "auto", threads: int = 1):
    """Species scores per window of ``waveform``, from the mix, its separated tracks, or both
    (the paper's §2.5; what ``birdsep classify`` writes as tables).

    classifier: ``"birdnet"`` (the birdnet extra), a ``train-classifier`` run directory, or a
    loaded backend (:mod:`birdsep.backends`). separator: as :func:`separate`'s ``model``.
    mode: one of :data:`birdsep.modes.MODES`, as ``--mode``; combine: how ``mix+separated``
    pools the scores, as ``--combine``: a name in :data:`birdsep.combination.RULES` (``default``,
    birdsep's rule :data:`birdsep.combination.DEFAULT`; ``max``, the paper's).
    window, overlap: seconds, as ``birdsep classify --window/--overlap``.
    Returns a :class:`birdsep.detect.Classification`: ``labels`` (L,), ``spans`` (N, 2) in
    seconds, ``mix`` (N, L) and/or ``separated`` (N, M, L) scores, ``scores`` (N, L) and
    ``channel`` (N, L) for ``mode``, and ``rows()`` / ``to_pandas()`` as a table.
    """
    from birdsep.backends import load_classifier
    from birdsep.detect import Classification, rule_for, score_array, separating
    from birdsep.detect import combine as pooled

    check_mode(mode, combine, ("mode", "combine"), ValueError)
    sample_rate = limits.sample_rate(sample_rate, "sample_rate")
    window, overlap = limits.windows(window, overlap)
    x = _mono(waveform, layout)
    backend = load_classifier(classifier, threads=threads) if isinstance(classifier, str) else classifier
    sep = _separator(separator) if mode != "mix" else None
    _, rt = runtime.settle(device, precision, model=sep)
    rule = rule_for(mode, combine)
    tracks_for = separating(sep, backend.sample_rate, rt) if sep is not None else None
    fs = score_array(x, sample_rate, backend, tracks_for, window=window, overlap=overlap / window,
                     mix=mode != "separated", inputs=rule.inputs)
    scores, channel = pooled(mode, fs, rule)
    return Classification(list(backend.labels), np.asarray(fs.spans, np.float64).reshape(-1, 2), fs.mix,
                          fs.tracks.get(rule.input), scores, channel, mode,
                          fs.tracks[rule.denoise_input][:, 0] if rule.denoised else None)


def _mono(waveform, layout: str) -> np.ndarray:
    """(T,) float32 of finite samples from any accepted waveform (see the module doc)."""
    x = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    x = audio.to_mono(x, layout)
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or infinite samples")
    if x.size == 0:
        raise ValueError("waveform is empty")
    return x


def _separator(model):
    return model if isinstance(model, torch.nn.Module) else load_model(model)
