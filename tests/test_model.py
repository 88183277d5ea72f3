import dataclasses

import numpy as np
import pytest
import torch

from birdsep import audio
from birdsep.errors import UsageError
from birdsep.separation.mixit import mixit_loss
from birdsep.separation.model import (PRESETS, LearnedBasis, Separator, SeparatorConfig, TDCNpp, count_parameters,
                                      load_separator, mixture_consistency, preset, save_model)

TINY = SeparatorConfig(num_coeffs=32, bottleneck=16, hidden=32, repeats=1, blocks=3)


@pytest.mark.parametrize("length", [1, 21, 22, 23, 1001, 22050])
def test_basis_shapes_any_length(length):
    cfg = TINY
    basis = LearnedBasis(cfg.window, cfg.hop, cfg.num_coeffs)
    x = torch.randn(2, length)
    padded = basis.pad(x)
    assert padded.shape[-1] >= length and (padded.shape[-1] - cfg.window) % cfg.hop == 0
    coeffs = basis.encode(padded)
    assert coeffs.shape == (2, cfg.num_coeffs, basis.frames_for(length))
    assert (coeffs >= 0).all()
    assert basis.decode(coeffs).shape == padded.shape


def test_tdcn_shapes():
    net = TDCNpp(32, 3, TINY.bottleneck, TINY.hidden, TINY.kernel, TINY.repeats, TINY.blocks)
    masks, w = net(torch.rand(2, 32, 77))
    assert masks.shape == (2, 3, 32, 77) and w is None
    assert masks.min() >= 0 and masks.max() <= 1


@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("length", [333, 4097])
@pytest.mark.parametrize("consistency", ["uniform", "learned", "magsq"])
def test_separator_sums_to_input(m, length, consistency):
    sep = Separator(dataclasses.replace(TINY, num_sources=m, consistency=consistency))
    x = torch.randn(3, length)
    x_copy = x.clone()
    y = sep(x)
    assert y.shape == (3, m, length)
    torch.testing.assert_close(y.sum(1), x, atol=1e-5, rtol=0)
    assert torch.equal(x, x_copy), "the caller's tensor is not modified"
    assert sep(x[0]).shape == (m, length)


def test_consistency_projection_weights():
    x = torch.randn(2, 100)
    s = torch.randn(2, 4, 100)
    for w in ["uniform", "magsq", torch.softmax(torch.randn(2, 4), -1)]:
        torch.testing.assert_close(mixture_consistency(x, s, w).sum(1), x, atol=1e-5, rtol=0)
    # uniform moves every source by the same residual/M
    out = mixture_consistency(x, s, "uniform")
    torch.testing.assert_close(out - s, ((x - s.sum(1)) / 4).unsqueeze(1).expand_as(s))


def test_presets():
    assert 8_000_000 <= count_parameters(Separator(preset("paper", num_sources=4))) <= 9_500_000
    small = count_parameters(Separator(preset("small")))
    assert small < 2_000_000
    assert preset("paper").window == 22 and preset("paper").hop == 11  # 1 ms / 0.5 ms at 22.05 kHz
    with pytest.raises(ValueError):
        preset("huge")
    assert set(PRESETS) >= {"paper", "small"}


def test_save_load_identical(tmp_path):
    sep = Separator(dataclasses.replace(TINY, consistency="learned")).eval()
    save_model(sep, tmp_path / "m")
    loaded = load_separator(tmp_path / "m")
    x = torch.randn(1, 999)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sep(x), atol=0, rtol=0)
    assert loaded.config == sep.config


def test_load_rejects_mismatched_weights(tmp_path):
    save_model(Separator(TINY), tmp_path / "m")
    cfg = (tmp_path / "m" / "config.json")
    cfg.write_text(cfg.read_text().replace('"hidden": 32', '"hidden": 48'))
    with pytest.raises(UsageError, match="weights do not fit the model described by its config") as err:
        load_separator(tmp_path / "m")
    assert "\n" not in str(err.value) and "wrong shape" in str(err.value)


def test_loss_decreases_on_real_batch(data_dir):
    """A few Adam steps on one fixed batch of real MoMs lower the MixIT loss."""
    files = sorted((data_dir / "xc").glob("*/*.mp3"))[:4]
    clips = [audio.load(f, 22050, start=2.0, duration=1.0)[0] for f in files]
    refs = torch.from_numpy(np.stack([np.stack([clips[0], clips[1]]), np.stack([clips[2], clips[3]])]))
    refs = refs / refs.abs().amax(dim=-1, keepdim=True)
    sep = Separator(dataclasses.replace(preset("small"), repeats=1, blocks=4))
    opt = torch.optim.Adam(sep.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = mixit_loss(refs, sep(refs.sum(1)))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert losses[-1] < losses[0] - 1.0, losses


STFT_TINY = SeparatorConfig(basis="stft", sample_rate=8000, window_ms=16.0, hop_ms=4.0, bottleneck=16, hidden=32,
                            repeats=1, blocks=3)


@pytest.mark.parametrize("length", [1, 127, 128, 129, 1001, 8000])
def test_stft_basis_reconstructs_any_length(length):
    """iSTFT(STFT(x)) = x at any length (all-one masks are the identity), N = window/2 + 1 bins."""
    sep = Separator(STFT_TINY)
    basis = sep.basis
    x = torch.randn(2, length)
    padded = basis.pad(x)
    coeffs = basis.encode(padded)
    assert coeffs.is_complex() and coeffs.shape == (2, STFT_TINY.window // 2 + 1, basis.frames_for(padded.shape[-1]))
    assert STFT_TINY.coefficients == 65 and STFT_TINY.window == 128 and STFT_TINY.hop == 32
    torch.testing.assert_close(basis.decode(coeffs, padded.shape[-1])[..., :length], x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("m", [2, 4, 8])
@pytest.mark.parametrize("length", [1, 333, 8001])
def test_stft_separator_sums_to_input_and_is_scale_equivariant(m, length):
    sep = Separator(dataclasses.replace(STFT_TINY, num_sources=m)).eval()
    x = torch.randn(3, length)
    x_copy = x.clone()
    with torch.no_grad():
        y = sep(x)
        y_loud = sep(x * 100.0)
    assert y.shape == (3, m, length)
    torch.testing.assert_close(y.sum(1), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(y_loud, y * 100.0, atol=1e-3, rtol=1e-4)  # features see x / rms(x)
    assert torch.equal(x, x_copy)


def test_stft_features_are_compressed_normalised_magnitudes():
    basis = Separator(STFT_TINY).basis
    x = torch.zeros(1, 800)
    x[0, 400] = 1.0  # an impulse: flat magnitude spectrum in the frames that hold it
    coeffs = basis.encode(x)
    feats = basis.features(x, coeffs)
    rms = (1 / 800) ** 0.5
    expected = (coeffs.abs() / rms) ** STFT_TINY.compression
    torch.testing.assert_close(feats, expected)
    assert feats.min() >= 0
    # silence stays silent and finite
    assert torch.isfinite(basis.features(torch.zeros(1, 800), basis.encode(torch.zeros(1, 800)))).all()


def test_stft_save_load_identical(tmp_path):
    sep = Separator(STFT_TINY).eval()
    save_model(sep, tmp_path / "m")
    loaded = load_separator(tmp_path / "m")
    x = torch.randn(1, 2345)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sep(x), atol=0, rtol=0)
    assert loaded.config == sep.config and loaded.config.basis == "stft"


def test_unknown_basis_refused():
    with pytest.raises(ValueError, match="basis"):
        Separator(dataclasses.replace(TINY, basis="wavelet"))
    with pytest.raises(ValueError, match="basis"):
        SeparatorConfig.from_dict({**TINY.to_dict(), "basis": "wavelet"})


def test_stft_preset_is_full_band():
    cfg = preset("stft")
    assert cfg.sample_rate == 32000 and cfg.window == 1024 and cfg.hop == 256 and cfg.coefficients == 513
    assert cfg.frames_per_second == 125


@pytest.mark.parametrize("consistency", ["uniform", "learned"])
def test_widen_sources_copies_outputs(consistency):
    """M = 2 → 4 without noise: outputs 3 and 4 are copies of 1 and 2 before mixture consistency."""
    from birdsep.separation.model import widen_sources

    base = Separator(dataclasses.replace(STFT_TINY, num_sources=2, consistency="none")).eval()
    state = widen_sources(base.state_dict(), 2, 4, STFT_TINY.coefficients, noise=0.0)
    wide = Separator(dataclasses.replace(STFT_TINY, num_sources=4, consistency="none")).eval()
    wide.load_state_dict(state, strict=True)
    x = torch.randn(1, 3000)
    with torch.no_grad():
        y2, y4 = base(x), wide(x)
    torch.testing.assert_close(y4[:, :2], y2)
    torch.testing.assert_close(y4[:, 2:], y2)
    noisy = widen_sources(base.state_dict(), 2, 4, STFT_TINY.coefficients, noise=1e-2)
    assert not torch.equal(noisy["masknet.masks.weight"][:65], noisy["masknet.masks.weight"][130:195])
    assert base.state_dict()["masknet.masks.weight"].shape[0] == 130  # the input state is untouched
