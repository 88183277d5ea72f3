"""Each augmentation does what it says (and leaves its inputs alone)."""
import numpy as np
import pytest
import torch

from birdsep.classification import augment as A
from birdsep.classification.frontend import Frontend, FrontendConfig, mel_centres


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_random_crop_length_range_and_padding(rng):
    x = np.arange(600, dtype=np.float32)
    offsets = {int(A.random_crop(x, 500, rng)[0]) for _ in range(200)}
    assert min(offsets) >= 0 and max(offsets) <= 100 and len(offsets) > 50
    assert A.random_crop(x, 500, None)[0] == 50  # centred without rng
    short = A.random_crop(x[:10], 20, rng)
    assert len(short) == 20 and np.all(short[10:] == 0)


def test_gain_peak_in_range(rng):
    x = np.sin(np.linspace(0, 100, 1000)).astype(np.float32) * 3
    peaks = np.array([np.abs(A.random_gain(x, rng)).max() for _ in range(500)])
    assert peaks.min() >= 0.05 and peaks.max() <= 0.75
    assert peaks.min() < 0.1 and peaks.max() > 0.7  # the whole range is used
    assert np.abs(x).max() == pytest.approx(3, rel=1e-6)  # input untouched
    assert np.all(A.random_gain(np.zeros(10, np.float32), rng) == 0)


@pytest.mark.parametrize("snr", [0.0, 10.0, 37.5])
def test_add_noise_achieves_snr(rng, snr):
    x = rng.standard_normal(8000).astype(np.float32) * 0.3
    noise = rng.standard_normal(3000).astype(np.float32)  # shorter: tiled
    y = A.add_noise(x, noise, snr, rng)
    achieved = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert achieved == pytest.approx(snr, abs=0.01)
    assert A.add_noise(np.zeros(100, np.float32), noise, 10.0, rng).max() == 0  # silence stays silence


def test_noise_only_is_noise_with_gain(rng):
    noise = rng.standard_normal(1000).astype(np.float32)
    y = A.noise_only(noise, 4000, rng)
    assert len(y) == 4000 and 0.05 <= np.abs(y).max() <= 0.75


def test_lowpass_band_gain_shape():
    centres = np.linspace(100, 10000, 50)
    g = A.lowpass_band_gain(centres, 3000.0, ramp_channels=4)
    first = int(np.searchsorted(centres, 3000.0))
    assert np.all(g[:first] == 1) and np.all(g[first + 4 :] == 0)
    assert np.all(np.diff(g[first - 1 : first + 5]) < 0)


def test_lowpass_removes_high_bands_from_features():
    cfg = FrontendConfig()
    fe = Frontend(cfg)
    sr = cfg.sample_rate
    t = torch.arange(2 * sr) / sr
    x = (torch.sin(2 * np.pi * 800 * t) + torch.sin(2 * np.pi * 6000 * t) * (t % 0.5 < 0.25)
         + 0.01 * torch.randn(len(t)))[None]
    gain = torch.from_numpy(A.lowpass_band_gain(mel_centres(cfg).numpy(), 3000.0, 8))[None]
    high = mel_centres(cfg) > 4000
    mel = fe.mel(x)
    assert mel[0, high].max() > 0  # the 6 kHz tone is there without the low-pass
    assert torch.all((mel * gain[:, :, None])[0, high] == 0)
    feats, feats_lp = fe(x), fe(x, gain)
    assert feats[0, high].abs().max() > 1  # the tone's on/off pattern shows after normalisation
    assert feats_lp[0, high].abs().max() < 1e-6  # and is gone after the low-pass
    low = mel_centres(cfg) < 3000.0
    torch.testing.assert_close(feats_lp[0, low], feats[0, low])  # bands below the cutoff untouched


def test_switches_turn_augmentations_off():
    cfg = A.AugmentConfig().without("mix", "noise-only")
    assert not cfg.mix and not cfg.noise_only and cfg.crop and cfg.lowpass
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.AugmentConfig().without("reverb")
