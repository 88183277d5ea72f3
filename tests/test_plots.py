import numpy as np
from PIL import Image

from birdsep.plots import SpectrogramAccumulator, combined_rgb, level_scale, plot_separation, track_colour, track_rgb


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
    area = plot_separation(power[0], power[1:], times, freqs, tmp_path / "p.png", title="tone", levels_db=[-0.1, -40.0])
    img = Image.open(tmp_path / "p.png")
    assert img.size == (1400, 730)  # the combined panel and one panel per source
    assert 0 < area["x0"] < area["x1"] <= 1400 and 0 <= area["y0"] < area["y1"] <= 730
    assert area["t1"] >= 1.9
    assert area["legend"] == ["track 1 (-0.1 dB)", "track 2 (-40.0 dB)"]


def _scene(sr=22050, seconds=4.0, quiet_db=-40.0):
    """Loud rumble below 800 Hz over a faint hiss (−60 dB; source 1) and a whistling 'bird' at
    4 kHz ``quiet_db`` below the rumble, singing a third of the time (source 2)."""
    rng = np.random.default_rng(3)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, 1 / sr) > 800] = 0
    rumble = np.fft.irfft(spectrum, n).astype(np.float32)
    rumble /= np.sqrt(np.mean(rumble ** 2))
    rumble += 1e-3 * rng.standard_normal(n).astype(np.float32)
    on = (np.sin(2 * np.pi * 1.0 * t) > 0.5).astype(np.float32)
    phase = 2 * np.pi * np.cumsum(4000 + 600 * np.sin(2 * np.pi * 8 * t)) / sr  # trills between 3.4 and 4.6 kHz
    bird = (np.sin(phase) * on).astype(np.float32) * np.float32(10 ** (quiet_db / 20) * np.sqrt(2))
    acc = SpectrogramAccumulator(sr, 3, n)
    acc.add(np.stack([rumble + bird, rumble, bird]))
    return acc.result()


def test_quiet_bird_under_rumble_is_legible_on_the_background_scale():
    power, times, freqs = _scene()
    bird = power[2] > power[2].max() * 0.01  # (F, N): the bins where the bird is (within 20 dB of its peak)
    green = np.array([0x3c, 0xb4, 0x4b]) / 255  # track 2's colour
    closeness = {}
    for mode in ("background", "absolute"):
        rgb = combined_rgb(power[0], power[1:], level_scale(power[0], mode))
        closeness[mode] = 1 - np.abs(rgb[bird] - green).mean()
    assert closeness["background"] > 0.9 > closeness["absolute"], closeness
    # the per-track panel shows it as strongly
    strip = track_rgb(power[2], track_colour(1), level_scale(power[0]))
    assert np.abs(strip[bird] - green).mean() < 0.15


def test_the_legend_shows_the_levels_in_separation_json(tmp_path, monkeypatch):
    """`separate --plot` on the bundled dawn recording: the legend's levels are
    separation.json's `level_db` (energy relative to the mixture), and a picture drawn later
    from the files on disk (a separation made without --plot) shows the same."""
    import json

    import birdsep.plots as plots
    from birdsep.cli import main
    from birdsep.pipeline import plot_folder
    from birdsep.plots import legend_labels
    from birdsep.pretrained import EXAMPLE_RECORDING

    drawn, top_freq = [], []
    real = plots.plot_separation

    def spy(mixture, sources, times, freqs, *a, **k):
        top_freq.append(float(freqs[-1]))
        drawn.append(real(mixture, sources, times, freqs, *a, **k))
        return drawn[-1]

    monkeypatch.setattr(plots, "plot_separation", spy)
    assert main(["separate", str(EXAMPLE_RECORDING), "-o", str(tmp_path), "--plot", "-q"]) == 0
    folder = tmp_path / "jura_forest_dawn"
    meta = json.loads((folder / "separation.json").read_text())
    levels = [s["level_db"] for s in meta["sources"]]
    for s in meta["sources"]:
        assert abs(s["level_db"] - (s["energy_db"] - meta["mixture_energy_db"])) <= 0.011
    assert drawn[0]["legend"] == legend_labels(levels)
    assert sorted(levels)[0] < -25  # quiet birds, well below the mixture
    # the 22.05 kHz example through the 32 kHz model: the picture stops at the input's own band
    assert 10_000 < top_freq[0] <= meta["input_sample_rate"] / 2
    (folder / "separation.png").unlink()
    plot_folder(folder)
    assert (folder / "separation.png").is_file() and drawn[1]["legend"] == drawn[0]["legend"]
