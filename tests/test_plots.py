import numpy as np
from PIL import Image

import pytest

from birdsep.plots import (SpectrogramAccumulator, combined_rgb, level_scale, mel_rows, plot_separation, track_colour,
                           track_rgb)


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
    assert img.size == (1400, 750)  # the combined panel and one panel per source
    assert 0 < area["x0"] < area["x1"] <= 1400 and 0 <= area["y0"] < area["y1"] <= 750
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
    # the colour marks where the bird's track stands above its band's background, in either scale
    assert min(closeness.values()) > 0.85, closeness
    # the per-track panel shows it as strongly
    strip = track_rgb(power[2], track_colour(1), level_scale(power[0]))
    assert np.abs(strip[bird] - green).mean() < 0.2


def _two_tones(sr=16000, seconds=3.0):
    """Tone A (1 kHz, track 1, sounding from 0.9 to 1.9 s) and tone B (3 kHz, 20 dB quieter,
    track 2, from 1.1 to 2.1 s) over a faint steady hiss (track 3, the
    noise). (A tone sounding all the time would be its band's background.)"""
    rng = np.random.default_rng(7)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    a = (0.5 * np.sin(2 * np.pi * 1000 * t) * ((t > 0.9) & (t < 1.9))).astype(np.float32)
    b = (0.05 * np.sin(2 * np.pi * 3000 * t) * ((t > 1.1) & (t < 2.1))).astype(np.float32)
    hiss = (1e-3 * rng.standard_normal(n)).astype(np.float32)
    acc = SpectrogramAccumulator(sr, 4, n, n_fft=512)
    acc.add(np.stack([a + b + hiss, a, b, hiss]))
    return acc.result()


def _hue_of(rgb: np.ndarray, colour: str, saturation: float = 0.4) -> float:
    """How far the pixels' mean colour's hue lies from ``colour``'s (in turns, 0 … 0.5); 1.0
    when the pixels are greyer than ``saturation``."""
    from matplotlib.colors import rgb_to_hsv, to_rgb

    got = rgb_to_hsv(rgb.reshape(-1, 3).mean(0))
    want = rgb_to_hsv(np.array(to_rgb(colour)))
    if got[1] < saturation:
        return 1.0
    d = abs(got[0] - want[0]) % 1.0
    return float(min(d, 1 - d))


def test_two_tones_take_their_tracks_colours_over_a_grey_background():
    power, times, freqs = _two_tones()
    row = {f: int(np.abs(freqs - f).argmin()) for f in (1000, 3000, 6000)}
    middle = (times > 1.2) & (times < 1.8)
    scale = level_scale(power[0])
    rgb = combined_rgb(power[0], power[1:], scale)
    assert rgb.shape == power[0].shape + (3,) and rgb.dtype == np.float32
    assert _hue_of(rgb[row[1000], middle], track_colour(0)) < 0.1  # A in track 1's colour
    assert _hue_of(rgb[row[3000], middle], track_colour(1)) < 0.1  # B, 20 dB quieter, in track 2's
    steady = (times < 0.8) | middle | (times > 2.3)  # away from the tones' clicks on and off
    background = rgb[row[6000], steady]  # held by the hiss alone: grey, light, hardly ever tinted
    tinted = background.max(-1) - background.min(-1) > 0.05  # the hiss's own peaks may be
    assert tinted.mean() < 0.05, tinted.mean()
    assert 0.7 < background.mean() < 1.0
    assert rgb[row[1000], middle].mean() < 0.6  # the tone is darker than the background
    # before B starts, its row is background too
    before = rgb[row[3000], times < 0.8]
    assert (before.max(-1) - before.min(-1) > 0.05).mean() < 0.05
    # per-track panels: each track's own spectrogram in its colour, white where it holds nothing
    strips = [track_rgb(power[1 + k], track_colour(k), scale) for k in range(3)]
    assert _hue_of(strips[0][row[1000], middle], track_colour(0)) < 0.1 and strips[0][row[6000], steady].min() > 0.97
    assert strips[0][row[1000], times > 2.2].min() > 0.97
    assert _hue_of(strips[1][row[3000], middle], track_colour(1)) < 0.1
    assert strips[1][row[3000], times < 0.8].min() > 0.97
    # the noise track shows as noise (a light texture of its colour), not as an empty panel
    noise = strips[2][row[6000]]
    assert 0.03 < 1 - noise.mean() < 0.4 and _hue_of(noise, track_colour(2), saturation=0.03) < 0.05


def test_silent_file_and_silent_track_draw_without_nan(tmp_path):
    power, times, freqs = _two_tones()
    power[3] = 0.0  # a track that holds nothing
    scale = level_scale(power[0])
    assert np.isfinite(combined_rgb(power[0], power[1:], scale)).all()
    silent = track_rgb(power[3], track_colour(2), scale)
    assert np.isfinite(silent).all() and silent.min() > 0.99
    zeros = np.zeros_like(power)
    for mode in ("background", "absolute"):
        s = level_scale(zeros[0], mode)
        assert np.isfinite(combined_rgb(zeros[0], zeros[1:], s)).all()
        assert np.isfinite(track_rgb(zeros[1], track_colour(0), s)).all()
    area = plot_separation(zeros[0], zeros[1:], times, freqs, tmp_path / "silent.png")
    assert (tmp_path / "silent.png").is_file() and np.isfinite([area["x0"], area["y1"]]).all()
    plot_separation(power[0][:, :1], power[1:, :, :1], times[:1], freqs, tmp_path / "one_column.png")
    assert (tmp_path / "one_column.png").is_file()


@pytest.mark.parametrize("frequency", ["mel", "linear"])
def test_picture_shows_tones_in_colour_in_both_frequency_axes(tmp_path, frequency):
    power, times, freqs = _two_tones()
    area = plot_separation(power[0], power[1:], times, freqs, tmp_path / "p.png", levels_db=[-0.1, -20.0, -50.0],
                           frequency=frequency)
    img = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")) / 255.0
    inside = img[int(area["y0"]) + 2:, int(area["x0"]) + 2:int(area["x1"]) - 2]
    from matplotlib.colors import to_rgb

    from matplotlib.colors import rgb_to_hsv

    hsv = rgb_to_hsv(inside)
    for k in range(3):  # every track's colour is in the picture (the noise's in its own panel)
        hue = rgb_to_hsv(np.array(to_rgb(track_colour(k))))[0]
        near = (np.abs(hsv[..., 0] - hue) < 0.02) & (hsv[..., 1] > 0.3)
        assert near.sum() > 200, (k, near.sum())
    assert area["legend"] == ["track 1 (-0.1 dB)", "track 2 (-20.0 dB)", "track 3 (-50.0 dB)"]


def test_mel_rows_average_the_bins_of_each_band():
    freqs = np.fft.rfftfreq(1024, 1 / 32000)
    weights, edges = mel_rows(freqs, 256)
    assert weights.shape == (256, len(freqs)) and len(edges) == 257
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    top = weights[-1].nonzero()[0]
    assert len(top) > 1 and freqs[top].min() > 12000  # high bands pool several bins, low ones repeat one


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


def test_accumulator_columns_are_the_frames_summed_in_order_whatever_the_chunks():
    """Columns of pool frames, summed frame after frame in float64 (checked here one frame at a
    time), are the same to the last bit however the audio arrives in chunks."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 200_000)).astype(np.float32)
    acc = SpectrogramAccumulator(16000, 2, x.shape[1], max_columns=300)
    pos = 0
    while pos < x.shape[1]:
        n = int(rng.integers(1, 30_000))
        acc.add(x[:, pos : pos + n])
        pos += n
    power, times, _ = acc.result()
    hop, n_fft, pool = acc.hop, acc.n_fft, acc.pool
    assert pool > 1 and power.shape == (2, n_fft // 2 + 1, len(times))
    frames = (x.shape[1] - n_fft) // hop + 1
    for col in (0, 7, power.shape[-1] - 1):
        first = col * pool
        want = np.zeros((2, n_fft // 2 + 1))
        for f in range(first, min(first + pool, frames)):
            want += np.abs(np.fft.rfft(x[:, f * hop : f * hop + n_fft] * acc.window, axis=-1)) ** 2
        np.testing.assert_array_equal(power[..., col], want / min(pool, frames - first))
