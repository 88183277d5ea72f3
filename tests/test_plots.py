import numpy as np
from PIL import Image

from birdsep.plots import SpectrogramAccumulator, plot_separation


def test_accumulator_streaming_equals_whole_and_bounds_columns():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50_000)).astype(np.float32)
    whole = SpectrogramAccumulator(8000, 3, x.shape[1], n_fft=256, max_columns=100)
    whole.add(x)
    streamed = SpectrogramAccumulator(8000, 3, x.shape[1], n_fft=256, max_columns=100)
    for i in range(0, x.shape[1], 777):
        streamed.add(x[:, i:i + 777])
    a, times, freqs = whole.result()
    b, _, _ = streamed.result()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert a.shape[0] == 3 and a.shape[1] == 129 and a.shape[2] <= 101
    assert freqs[-1] == 4000 and 0 < times[-1] <= 50_000 / 8000


def test_tone_lands_in_its_frequency_row_and_picture_is_written(tmp_path):
    sr = 16000
    t = np.arange(sr * 2) / sr
    tone = np.sin(2 * np.pi * 2000 * t).astype(np.float32)
    noise = 0.01 * np.random.default_rng(1).standard_normal(len(t)).astype(np.float32)
    acc = SpectrogramAccumulator(sr, 3, len(t))
    acc.add(np.stack([tone + noise, tone, noise]))
    power, times, freqs = acc.result()
    assert abs(freqs[power[1].mean(1).argmax()] - 2000) < sr / 512
    area = plot_separation(power[0], power[1:], times, freqs, tmp_path / "p.png", title="tone")
    img = Image.open(tmp_path / "p.png")
    assert img.size == (1400, 550)
    assert 0 < area["x0"] < area["x1"] <= 1400 and 0 <= area["y0"] < area["y1"] <= 550
    assert area["t1"] >= 1.9
