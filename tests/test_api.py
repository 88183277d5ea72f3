"""The Python API on arrays in memory: channel layouts, and classification of the mix and tracks."""
import numpy as np
import pytest
import torch

import birdsep
from birdsep.separation.model import Separator, SeparatorConfig

TINY = SeparatorConfig(num_coeffs=16, bottleneck=8, hidden=16, repeats=1, blocks=3)
SR = 22050


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Separator(TINY).eval()


def _stereo(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([np.sin(2 * np.pi * 3000 * t), 0.5 * np.sin(2 * np.pi * 5000 * t)]).astype(np.float32)  # (2, T)


def test_separate_reads_either_channel_layout(tiny):
    x = _stereo()
    first, _ = birdsep.separate(x, SR, tiny, precision="fp32", device="cpu")
    last, _ = birdsep.separate(x.T.copy(), SR, tiny, precision="fp32", device="cpu")  # soundfile.read's (T, C)
    assert first.shape == last.shape == (TINY.num_sources, x.shape[1])
    np.testing.assert_allclose(first, last, atol=1e-5)
    np.testing.assert_allclose(first.sum(0), x.mean(0), atol=1e-4)
    with pytest.raises(ValueError, match="layout="):
        birdsep.separate(np.zeros((50, 60), np.float32), SR, tiny, precision="fp32")
    square, _ = birdsep.separate(np.zeros((50, 60), np.float32), SR, tiny, precision="fp32", layout="channels_last")
    assert square.shape == (TINY.num_sources, 50)


class Tones:
    """A fake classifier backend: species k scores the energy near its frequency in a 1 s window."""

    labels = ["Aaa aaa_Three kHz", "Bbb bbb_Five kHz"]
    window_seconds, sample_rate, name = 1.0, SR, "tones"

    def predict(self, windows: np.ndarray) -> np.ndarray:  # (N, T) → (N, 2)
        spec = np.abs(np.fft.rfft(windows, axis=-1))
        freqs = np.fft.rfftfreq(windows.shape[-1], 1 / SR)
        band = [spec[:, np.abs(freqs - f) < 100].sum(1) for f in (3000, 5000)]
        total = spec.sum(1) + 1e-9
        return np.stack(band, axis=1) / total[:, None]


def test_classify_scores_the_mix_and_the_tracks(tiny):
    x = _stereo(3.0)
    res = birdsep.classify(x, SR, Tones(), separator=tiny, window=1.0, precision="fp32", device="cpu")
    m = TINY.num_sources
    assert res.labels == Tones.labels and res.spans.tolist() == [[0, 1], [1, 2], [2, 3]]
    assert res.mix.shape == (3, 2) and res.separated.shape == (3, m, 2)
    from birdsep.combination import DEFAULT, combine

    # the default rule, applied to the scores the API returns (the mix's, each track's and, when
    # the rule uses it, the denoised mix's), gives the API's scores; it never lowers the mix's
    if DEFAULT.denoised:
        assert res.denoised.shape == (3, 2)
    levels = np.zeros((3, m))  # every track counts: the default drops none by level
    want, _ = combine(DEFAULT, "mix+separated", res.mix, res.separated, levels, res.denoised)
    np.testing.assert_allclose(res.scores, want, rtol=1e-5)
    assert (res.scores >= res.mix - 1e-6).all()
    assert res.channel.min() >= 0 and res.channel.max() <= m
    assert res.mix[:, 0].min() > 0.5  # the 3 kHz tone dominates the mix
    rows = res.rows(min_conf=0.0)
    assert len(rows) == 3 * 2 and set(rows[0]) == {"start", "end", "species", "confidence", "channel"}
    assert (res.scores[:, 0] > res.scores[:, 1]).all()  # the louder 3 kHz tone ranks first in every window
    mix_only = birdsep.classify(x.T, SR, Tones(), mode="mix", window=1.0, device="cpu")
    assert mix_only.separated is None and np.array_equal(mix_only.scores, mix_only.mix)
    assert {r["channel"] for r in mix_only.rows(0.0)} == {"mix"}
    np.testing.assert_allclose(mix_only.mix, res.mix, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        birdsep.classify(x, SR, Tones(), mode="both")


def test_classify_takes_the_combination_rule_by_name(tiny):
    """``combine=`` names a rule as ``classify --combine`` does, and is refused as it is."""
    x = _stereo(3.0)
    kw = dict(separator=tiny, window=1.0, precision="fp32", device="cpu")
    paper = birdsep.classify(x, SR, Tones(), combine="max", **kw)
    np.testing.assert_allclose(paper.scores, np.maximum(paper.mix, paper.separated.max(1)), rtol=1e-5)
    assert paper.denoised is None  # the paper's max hears the tracks as they come, nothing denoised
    with pytest.raises(ValueError, match="combine must be one of default, max"):
        birdsep.classify(x, SR, Tones(), combine="loudest", **kw)
    from birdsep.detect import ClassifyOptions
    from birdsep.errors import UsageError

    with pytest.raises(UsageError, match="--combine must be one of default, max"):  # the CLI's words
        ClassifyOptions(combine="loudest").check()
