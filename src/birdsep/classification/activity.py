"""Activity detection (paper §2.1): where in a weakly labelled recording the bird probably is.

The frame energy of a log-mel spectrogram (mean over channels of the log mel power above
that channel's median, i.e. above its background; pooled to 10 frames/s) is searched for peaks with :func:`scipy.signal.find_peaks_cwt` (Ricker wavelets
of 0.5–3 s). Up to five 6 s windows are centred on the peaks, in decreasing peak energy,
shifted to lie inside the recording; a peak whose window would overlap an already chosen one
by more than half is skipped. A recording shorter than a window gives one window covering all
of it (the caller pads). A recording without any peak (e.g. constant noise) gives one window at
its loudest frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks_cwt


#: Detector settings, one source of truth for training and the CLI.
WINDOW_SECONDS = 6.0
MAX_WINDOWS = 5
ENERGY_RATE = 10  # frames per second the energy is pooled to before peak picking
PEAK_WIDTHS_S = (0.5, 3.0)  # range of Ricker wavelet widths, seconds


@dataclass(frozen=True)
class Window:
    start: float  # seconds
    end: float  # seconds
    energy: float  # pooled frame energy at the peak: mean dB above the channels' background

    @property
    def duration(self) -> float:
        return self.end - self.start


def frame_energy(x: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
    """(T,) → (log-mel frame energy pooled to ENERGY_RATE frames/s, that rate)."""
    import torch

    from birdsep.classification.frontend import Frontend, FrontendConfig

    cfg = FrontendConfig(sample_rate=sr, f_max=min(10000.0, sr / 2 * 0.95))
    frontend = Frontend(cfg)
    block = 60 * cfg.hop * cfg.frame_rate  # 60 s blocks keep memory flat on long files
    parts = []
    with torch.no_grad():
        for i in range(0, max(1, len(x)), block):
            chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + block], dtype=np.float32))[None]
            mel = frontend.mel(chunk)[0]  # (C, F)
            if i + block < len(x):
                mel = mel[:, : block // cfg.hop]  # drop the frame centred on the next block's start
            parts.append((10.0 * torch.log10(mel**2 + 1e-10)).numpy().astype(np.float64))
    logmel = np.concatenate(parts, axis=1)  # (C, F) in dB
    # Energy above each channel's background (its median): stationary noise such as an engine
    # or rain sits at the median and adds little; a call stands out in the channels it fills.
    energy = np.maximum(logmel - np.median(logmel, axis=1, keepdims=True), 0.0).mean(axis=0)  # (F,)
    fps = sr / cfg.hop
    pool = max(1, int(round(fps / ENERGY_RATE)))
    n = len(energy) // pool
    if n == 0:
        return energy[:1], fps
    return energy[: n * pool].reshape(n, pool).mean(axis=1), fps / pool


def detect_activity(
    x: np.ndarray, sr: int, window_seconds: float = WINDOW_SECONDS, max_windows: int = MAX_WINDOWS
) -> list[Window]:
    """Up to ``max_windows`` windows of ``window_seconds`` in (T,) audio, loudest peak first."""
    duration = len(x) / sr
    if duration <= window_seconds:
        energy, _ = frame_energy(x, sr)
        return [Window(0.0, duration, float(energy.max()))]
    energy, rate = frame_energy(x, sr)
    lo, hi = (max(1, int(round(w * rate))) for w in PEAK_WIDTHS_S)
    widths = np.arange(lo, max(lo + 1, min(hi, len(energy) // 2)) + 1)
    peaks = np.asarray(find_peaks_cwt(energy, widths), dtype=int) if len(energy) > 2 * lo else np.zeros(0, int)
    if len(peaks) == 0:
        peaks = np.array([int(np.argmax(energy))])
    order = peaks[np.argsort(-energy[peaks], kind="stable")]
    chosen: list[Window] = []
    for p in order:
        centre = (p + 0.5) / rate
        start = float(np.clip(centre - window_seconds / 2, 0.0, duration - window_seconds))
        if any(min(start + window_seconds, w.end) - max(start, w.start) > window_seconds / 2 for w in chosen):
            continue
        chosen.append(Window(round(start, 3), round(start + window_seconds, 3), float(energy[p])))
        if len(chosen) == max_windows:
            break
    return chosen
