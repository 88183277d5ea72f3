"""Mel / PCEN / outlier-removing normalisation of the classifier frontend."""
import numpy as np
import torch

from birdsep.classification.frontend import Frontend, FrontendConfig, mel_centres, outlier_normalise, pcen


def test_pcen_matches_its_formula():
    rng = np.random.default_rng(0)
    E = rng.uniform(0, 5, size=(2, 3, 40))
    s, alpha, delta, r, eps = 0.025, 0.98, 2.0, 0.5, 1e-6
    M = np.zeros_like(E)
    M[..., 0] = E[..., 0]
    for t in range(1, E.shape[-1]):
        M[..., t] = (1 - s) * M[..., t - 1] + s * E[..., t]
    expected = (E / (eps + M) ** alpha + delta) ** r - delta**r
    got = pcen(torch.tensor(E), s, alpha, delta, r, eps).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_pcen_is_nearly_gain_invariant():
    E = torch.rand(1, 4, 200) + 0.1
    a = pcen(E, 0.025, 0.98, 2.0, 0.5, 1e-6)
    b = pcen(100 * E, 0.025, 0.98, 2.0, 0.5, 1e-6)
    assert torch.allclose(a, b, rtol=0.2)


def test_outlier_normalisation_hand_made_case():
    # mean 26.5, std 42.4: 100 lies above mean + 1 std and is left out of the statistics,
    # which become mean 2 and variance 2/3 from [1, 2, 3].
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    y = outlier_normalise(x, eps=0.0)
    sd = np.sqrt(2 / 3)
    np.testing.assert_allclose(y.numpy(), [[-1 / sd, 0.0, 1 / sd, 98 / sd]], rtol=1e-12)


def test_outlier_normalisation_is_per_channel_and_keeps_input():
    x = torch.tensor([[[0.0, 0.0, 0.0, 4.0], [5.0, 5.0, 7.0, 7.0]]])
    before = x.clone()
    y = outlier_normalise(x, eps=1e-4)
    assert torch.equal(x, before)
    # channel 0: 4 dropped → mean 0, var 0 → zeros stay 0, the outlier is 4/sqrt(eps)
    np.testing.assert_allclose(y[0, 0].numpy(), [0, 0, 0, 4 / 1e-2], rtol=1e-5)
    # channel 1: mean 6, std 1 → nothing above 7 → plain standardisation
    np.testing.assert_allclose(y[0, 1].numpy(), [-1, -1, 1, 1], atol=1e-3)


def test_mel_shapes_rate_and_band_edges():
    cfg = FrontendConfig()
    assert (cfg.mel_channels, cfg.f_min, cfg.f_max, cfg.hop * cfg.frame_rate, cfg.win_length) == (
        160, 60.0, 10000.0, cfg.sample_rate, round(0.08 * cfg.sample_rate))
    fe = Frontend(cfg)
    sr = cfg.sample_rate
    t = torch.arange(sr, dtype=torch.float64) / sr  # float64 phase: no float32 phase noise
    x = torch.stack([torch.sin(2 * np.pi * 1000 * t), torch.sin(2 * np.pi * 15000 * t)]).float()
    mel = fe.mel(x)
    assert mel.shape == (2, 160, sr // cfg.hop + 1)
    centres = mel_centres(cfg).numpy()
    assert int(mel[0].mean(1).argmax()) == int(np.abs(centres - 1000).argmin())
    inner = slice(10, -10)  # away from the onset/offset clicks of the zero-padded edges
    assert float(mel[1][:, inner].max()) < 1e-3 * float(mel[0][:, inner].max())  # 15 kHz: outside 60–10 000 Hz
    out = fe(x)
    assert out.shape == mel.shape and torch.isfinite(out).all()
