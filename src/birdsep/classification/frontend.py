"""Classifier frontend (paper §2.4): mel spectrogram → PCEN → per-channel normalisation.

Mel: 160 channels between 60 and 10 000 Hz, 100 frames/s, 80 ms Hann window (magnitude).
PCEN (Wang et al. 2017): ``M[t] = (1 − s)·M[t−1] + s·E[t]`` (``M[0] = E[0]``), then
``P = (E / (ε + M)^α + δ)^r − δ^r``.
Normalisation: per example and channel, drop the values above mean + 1 std (loud events),
recompute mean and variance from what is left, and standardise every value with them; the
quiet background then sits near zero whatever the recording's level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 32000
    mel_channels: int = 160
    f_min: float = 60.0
    f_max: float = 10000.0
    frame_rate: int = 100  # frames per second
    window_seconds: float = 0.080
    pcen_smooth: float = 0.025  # s
    pcen_alpha: float = 0.98
    pcen_delta: float = 2.0
    pcen_root: float = 0.5  # r
    pcen_eps: float = 1e-6
    norm_eps: float = 1e-4

    @property
    def hop(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    @property
    def win_length(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()


def hz_to_mel(f):
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_freqs, n_mels), each filter peaking at 1."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def mel_centres(cfg: FrontendConfig) -> torch.Tensor:
    """Centre frequency (Hz) of each mel channel, (C,)."""
    m = torch.linspace(float(hz_to_mel(cfg.f_min)), float(hz_to_mel(cfg.f_max)), cfg.mel_channels + 2)
    return mel_to_hz(m[1:-1]).float()


def pcen(E: torch.Tensor, s: float, alpha: float, delta: float, r: float, eps: float) -> torch.Tensor:
    """Per-channel energy normalisation of E (..., C, F) ≥ 0 along frames F."""
    E = E.clamp(min=0)
    smooth = [E[..., 0]]
    for t in range(1, E.shape[-1]):
        smooth.append((1 - s) * smooth[-1] + s * E[..., t])
    M = torch.stack(smooth, dim=-1)
    return (E / (eps + M) ** alpha + delta) ** r - delta**r


def outlier_normalise(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Standardise x (..., C, F) per channel over F, with statistics of the values ≤ mean + 1 std."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    keep = (x <= mean + std).to(x.dtype)  # the maximum is always ≥ mean, the minimum always kept
    n = keep.sum(dim=-1, keepdim=True).clamp(min=1)
    mean2 = (x * keep).sum(dim=-1, keepdim=True) / n
    var2 = (((x - mean2) ** 2) * keep).sum(dim=-1, keepdim=True) / n
    return (x - mean2) / torch.sqrt(var2 + eps)


class Frontend(nn.Module):
    """Waveform (B, T) → features (B, C, F); F = T // hop + 1."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        fb = mel_filterbank(cfg.n_fft // 2 + 1, cfg.sample_rate, cfg.mel_channels, cfg.f_min, cfg.f_max)
        self.register_buffer("filterbank", fb, persistent=False)

    def mel(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) → mel magnitudes (B, C, F)."""
        spec = torch.stft(x, self.cfg.n_fft, hop_length=self.cfg.hop, win_length=self.cfg.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        mag = spec.abs()  # (B, n_fft/2+1, F)
        return torch.einsum("bkf,kc->bcf", mag, self.filterbank)

    def forward(self, x: torch.Tensor, band_gain: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T) → (B, C, F). ``band_gain`` (B, C), if given, scales the mel bands (low-pass)."""
        c = self.cfg
        E = self.mel(x)
        if band_gain is not None:
            E = E * band_gain[:, :, None]
        P = pcen(E, c.pcen_smooth, c.pcen_alpha, c.pcen_delta, c.pcen_root, c.pcen_eps)
        return outlier_normalise(P, c.norm_eps)

    def frames(self, samples: int) -> int:
        return samples // self.cfg.hop + 1


def frames_per_second(cfg: FrontendConfig) -> float:
    return cfg.sample_rate / cfg.hop


__all__ = ["FrontendConfig", "Frontend", "pcen", "outlier_normalise", "mel_filterbank", "mel_centres",
           "frames_per_second"]
