"""Training augmentations of the paper (§2.4), each a small pure function and each switchable.

Applied in this order by the training dataset (:mod:`birdsep.classification.data`):

1. ``crop``       random 5 s crop of the 6 s activity window;
2. ``gain``       peak-normalise to a random peak in U(0.05, 0.75);
3. ``mix``        with p = 0.5 add a second (cropped, gained) example; labels are unioned;
4. ``noise``      with p = 0.75 add a noise crop at U(0, 40) dB SNR;
5. ``noise_only`` with p = 0.1 the example is replaced by noise alone, with no labels;
6. ``lowpass``    with p = 0.5 a random low-pass: mel bands above a random cutoff are scaled
                  down to zero over a short ramp (a per-band gain the frontend multiplies the
                  mel magnitudes by, before PCEN).

Noise comes from user-given folders; without any, ``noise`` and ``noise_only`` do nothing.
Arrays are never modified in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ("crop", "gain", "mix", "noise", "noise_only", "lowpass")


@dataclass(frozen=True)
class AugmentConfig:
    crop: bool = True
    gain: bool = True
    mix: bool = True
    noise: bool = True
    noise_only: bool = True
    lowpass: bool = True
    gain_range: tuple[float, float] = (0.05, 0.75)
    mix_p: float = 0.5
    noise_p: float = 0.75
    snr_range_db: tuple[float, float] = (0.0, 40.0)
    noise_only_p: float = 0.1
    lowpass_p: float = 0.5
    lowpass_cutoff_hz: tuple[float, float] = (1500.0, 9000.0)
    lowpass_ramp_channels: int = 8

    def without(self, *names: str) -> "AugmentConfig":
        """A copy with the named augmentations switched off (names from :data:`NAMES`)."""
        from dataclasses import replace

        bad = [n for n in names if n.replace("-", "_") not in NAMES]
        if bad:
            raise ValueError(f"unknown augmentation(s) {', '.join(bad)} (known: {', '.join(NAMES)})")
        return replace(self, **{n.replace("-", "_"): False for n in names})


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A ``length``-sample piece of (T,) ``x`` at a random offset (centred when rng is None);
    zero-padded at the end when ``x`` is shorter."""
    if len(x) < length:
        return np.concatenate([x, np.zeros(length - len(x), dtype=x.dtype)])
    slack = len(x) - length
    offset = slack // 2 if rng is None else int(rng.integers(0, slack + 1))
    return x[offset : offset + length].copy()


def peak_normalise(x: np.ndarray, peak: float, eps: float = 1e-8) -> np.ndarray:
    """Scale (T,) ``x`` so that max|x| = ``peak``; silence stays silence."""
    m = float(np.max(np.abs(x))) if len(x) else 0.0
    return (x * (peak / m)).astype(np.float32) if m > eps else x.astype(np.float32, copy=True)


def random_gain(x: np.ndarray, rng: np.random.Generator, low: float = 0.05, high: float = 0.75) -> np.ndarray:
    return peak_normalise(x, float(rng.uniform(low, high)))


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``x`` + a crop of ``noise`` scaled so that 10·log10(P(x) / P(noise)) = ``snr_db``.

    ``noise`` shorter than ``x`` is tiled. Silent ``x`` or silent noise: ``x`` unchanged.
    """
    n = _fit(noise, len(x), rng)
    px, pn = power(x), power(n)
    if px <= 0 or pn <= 0:
        return x.astype(np.float32, copy=True)
    scale = np.sqrt(px / (pn * 10.0 ** (snr_db / 10.0)))
    return (x + scale * n).astype(np.float32)


def _fit(noise: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    if len(noise) < length:
        noise = np.tile(noise, int(np.ceil(length / max(1, len(noise)))))
    return random_crop(noise, length, rng)


def noise_only(noise: np.ndarray, length: int, rng: np.random.Generator, low: float = 0.05,
               high: float = 0.75) -> np.ndarray:
    """A random-gain crop of ``noise`` to stand in for an example with no labels."""
    return random_gain(_fit(noise, length, rng), rng, low, high)


def lowpass_band_gain(centres_hz: np.ndarray, cutoff_hz: float, ramp_channels: int = 8) -> np.ndarray:
    """Per-mel-band gain (C,): 1 up to the first band above ``cutoff_hz``, then a linear ramp
    to 0 over ``ramp_channels`` bands, 0 above."""
    centres_hz = np.asarray(centres_hz, dtype=np.float64)
    first = int(np.searchsorted(centres_hz, cutoff_hz))
    idx = np.arange(len(centres_hz))
    return np.clip(1.0 - (idx - first + 1) / (ramp_channels + 1), 0.0, 1.0).astype(np.float32) \
        if ramp_channels > 0 else (idx < first).astype(np.float32)
