"""The separator's training data on its own: the corpus index (and its cache), the window
sampler that favours windows with energy, and the stream of mixtures of mixtures."""
import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from birdsep.separation import data as D

SR = 16000


def _write(path, seconds, loud=(), level=0.001, seed=0):
    """Quiet noise with loud noise over the ``loud`` (start, end) spans, seconds."""
    rng = np.random.default_rng(seed)
    x = level * rng.standard_normal(int(seconds * SR))
    for a, b in loud:
        x[int(a * SR):int(b * SR)] = 0.3 * rng.standard_normal(int(b * SR) - int(a * SR))
    sf.write(path, x.astype(np.float32), SR)
    return path


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    _write(folder / "long.wav", 60.0, loud=[(40.0, 50.0)])
    _write(folder / "short.wav", 1.5, loud=[(0.0, 1.5)], seed=1)
    _write(folder / "tiny.wav", 0.5, seed=2)  # under MIN_SECONDS: skipped
    sf.write(folder / "silent.wav", np.zeros(3 * SR, np.float32), SR)  # skipped
    return folder


def test_index_skips_unusable_files_and_caches_the_scan(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "index.json"
    index = D.RecordingIndex.build([str(corpus)], cache=cache, progress=False)
    assert sorted(r.path.rsplit("/", 1)[1] for r in index.recordings) == ["long.wav", "short.wav"]
    assert len(index.skipped) == 2 and any("too short" in s for s in index.skipped)
    assert any("silent" in s for s in index.skipped)
    assert index.hours == pytest.approx(61.5 / 3600)
    monkeypatch.setattr(D, "scan", lambda path: pytest.fail(f"scanned {path} again"))
    again = D.RecordingIndex.build([str(corpus)], cache=cache, progress=False)
    assert [r.frame_db for r in again.recordings] == [r.frame_db for r in index.recordings]
    excluded = D.RecordingIndex.build([str(corpus)], exclude=("short*",), cache=cache, progress=False)
    assert [r.path.rsplit("/", 1)[1] for r in excluded.recordings] == ["long.wav"]


def test_sampler_favours_windows_with_energy_and_pads_short_files(corpus):
    index = D.RecordingIndex.build([str(corpus / "long.wav"), str(corpus / "short.wav")], progress=False)
    sampler = D.WindowSampler(index, seconds=4.0, sample_rate=22050)
    assert sampler.length == 4 * 22050
    long_p, short_p = sampler.file_p
    assert long_p > short_p > 0  # the long file has more active windows
    rng = np.random.default_rng(0)
    windows = [sampler.draw(rng) for _ in range(200)]
    assert all(w.shape == (sampler.length,) and w.dtype == np.float32 for w in windows)
    loud = np.mean([np.sqrt(np.mean(w ** 2)) > 0.05 for w in windows])
    # 10 s of 60 are loud; windows touching them are 7 of 57 starts, yet they come up far more often
    assert loud > 0.5
    only_short = D.WindowSampler(D.RecordingIndex([index.recordings[1]], []), seconds=4.0, sample_rate=22050)
    padded = [only_short.draw(rng) for _ in range(5)]  # 1.5 s of audio at a random offset in 4 s of zeros
    assert all(w.shape == (4 * 22050,) and 1.4 * 22050 <= np.count_nonzero(w) <= 1.6 * 22050 for w in padded)
    assert len({int(np.flatnonzero(w)[0]) for w in padded}) > 1
    with pytest.raises(ValueError):
        D.WindowSampler(D.RecordingIndex([], []), 4.0, 22050)


def test_mom_stream_is_seeded_per_seed_and_normalised(corpus):
    index = D.RecordingIndex.build([str(corpus)], progress=False)
    sampler = D.WindowSampler(index, seconds=1.0, sample_rate=8000)
    first = list(itertools.islice(iter(D.MoMDataset(sampler, seed=3)), 4))
    again = list(itertools.islice(iter(D.MoMDataset(sampler, seed=3)), 4))
    other = list(itertools.islice(iter(D.MoMDataset(sampler, seed=4)), 4))
    assert all(m.shape == (2, 8000) and m.dtype == torch.float32 for m in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    rms_db = [20 * np.log10(float(r.pow(2).mean().sqrt())) for m in first for r in m if r.abs().max() > 0]
    assert rms_db and all(-40.5 <= v <= -14.5 for v in rms_db)  # each reference at a random level in [-40, -15]
    fixed = [torch.equal(a, b) for a, b in zip(D.fixed_moms(sampler, 3, 7), D.fixed_moms(sampler, 3, 7))]
    assert fixed == [True] * 3
    loader = torch.utils.data.DataLoader(D.MoMDataset(sampler, seed=3), batch_size=2)
    assert next(iter(loader)).shape == (2, 2, 8000)  # (B, 2, T): the batches MixIT trains on


def test_batches_with_more_references_in_their_share(corpus):
    index = D.RecordingIndex.build([str(corpus)], progress=False)
    sampler = D.WindowSampler(index, seconds=1.0, sample_rate=8000)
    shapes = [D.mom_batch(sampler, 3, k, np.random.default_rng([0, k]), references=4, share=0.5).shape
              for k in range(40)]
    fours = sum(s == (3, 4, 8000) for s in shapes)
    assert fours + sum(s == (3, 2, 8000) for s in shapes) == 40
    assert 10 <= fours <= 30  # about half
    plain = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]))
    assert plain.shape == (3, 2, 8000)
    # no share: the paper's batches, drawn exactly as before the option existed
    assert torch.equal(plain, D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), references=4, share=0.0))


def test_floor_noise_keeps_the_floor_and_drops_the_song():
    """Known answer: hiss + a loud 0.3 s tone → noise with the hiss's spectrum and no tone, stationary."""
    rng = np.random.default_rng(0)
    t = np.arange(4 * 8000) / 8000
    hiss = 0.01 * rng.standard_normal(len(t))
    x = (hiss + np.sin(2 * np.pi * 1000 * t) * (np.abs(t - 2) < 0.15)).astype(np.float32)
    y = D.floor_noise(x, rng, n_fft=256)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    spectrum = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 8000)
    tone = spectrum[np.abs(freqs - 1000) < 30].mean()
    assert tone < 3 * np.median(spectrum)  # the song is not in the floor (in x it is ~1000× the hiss)
    frames = y[: len(y) // 800 * 800].reshape(-1, 800)
    rms = np.sqrt((frames[2:-2] ** 2).mean(axis=1))
    assert rms.max() < 1.5 * rms.min()  # stationary
    assert not D.floor_noise(np.zeros(8000, np.float32), rng, n_fft=256).any()  # silence stays silence


def test_noise_share_replaces_the_last_reference_with_stationary_noise(corpus):
    index = D.RecordingIndex.build([str(corpus)], progress=False)
    sampler = D.WindowSampler(index, seconds=1.0, sample_rate=8000)
    plain = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]))
    noisy = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), noise_share=1.0)
    assert noisy.shape == plain.shape == (3, 2, 8000)
    assert torch.equal(noisy[0, 0], plain[0, 0])  # the first reference is drawn as before
    assert not torch.equal(noisy[0, 1], plain[0, 1])
    level = 20 * torch.log10(noisy[:, 1].pow(2).mean(dim=-1).sqrt())
    assert ((level > -40.5) & (level < -14.5)).all()  # normalised like any reference
    assert torch.equal(plain, D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), noise_share=0.0))


def test_cut_song_finds_the_loudest_vocalisation():
    """Known answer: hiss with a 1 s 4 kHz tone at 2–3 s and a quieter 0.8 s one at 5 s → the
    louder one, with 50 ms margins; nothing in hiss alone or in too short a recording."""
    rng = np.random.default_rng(0)
    t = np.arange(8 * SR) / SR
    x = 0.001 * rng.standard_normal(len(t))
    x += 0.3 * np.sin(2 * np.pi * 4000 * t) * ((t >= 2) & (t < 3))
    x += 0.05 * np.sin(2 * np.pi * 3000 * t) * ((t >= 5) & (t < 5.8))
    song = D.cut_song(x, SR)
    assert song is not None and len(song) / SR == pytest.approx(1.1, abs=0.05)
    assert np.abs(song).max() == pytest.approx(0.3, abs=0.01) and abs(song[0]) < 1e-6  # faded in
    assert D.cut_song(0.001 * rng.standard_normal(8 * SR), SR) is None
    assert D.cut_song(x[:1000], SR) is None


def test_song_scenes_have_known_sources(tmp_path):
    folder = tmp_path / "songs"
    folder.mkdir()
    for i in range(3):  # recordings with a loud 1 s burst over quiet noise
        _write(folder / f"r{i}.wav", 6.0, loud=[(2.0 + i * 0.5, 3.0 + i * 0.5)], seed=i)
    index = D.RecordingIndex.build([str(folder)], progress=False)
    sampler = D.WindowSampler(index, seconds=2.0, sample_rate=SR)
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(20):
        scene = D.draw_song_scene(sampler, rng, sources=4)
        assert scene.shape == (4, 2 * SR) and scene.dtype == np.float32 and np.isfinite(scene).all()
        level = 20 * np.log10(np.sqrt((scene[0].astype(np.float64) ** 2).mean()))
        assert -45.5 < level < -24.5  # the background
        active = [bool(np.abs(r).max() > 0) for r in scene[1:]]
        assert active == sorted(active, reverse=True)  # songs first, then silent rows
        counts.add(sum(active))
        for r in scene[1:][active]:
            assert 0.5 < (np.abs(r) > 0).sum() / SR < 1.3  # one cut burst, not the whole window
    assert counts <= {1, 2, 3} and len(counts) >= 2
    batch = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), song_share=1.0, sources=4)
    assert isinstance(batch, dict) and batch["sources"].shape == (3, 4, 2 * SR)
    plain = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]))
    assert torch.equal(plain, D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), song_share=0.0))


def test_level_gap_puts_the_other_references_below_the_first(corpus):
    """--level-gap G: one reference at a random level in [-40, -15] dBFS, the others below it by
    U(0, G) dB, so faint recordings under loud ones are common; G = 0 draws exactly as before."""
    index = D.RecordingIndex.build([str(corpus)], progress=False)
    sampler = D.WindowSampler(index, seconds=1.0, sample_rate=8000)
    gaps = []
    for k in range(60):
        refs = D.mom_batch(sampler, 2, k, np.random.default_rng([0, k]), references=3, share=1.0, level_gap=30.0)
        assert refs.shape == (2, 3, 8000)
        db = 20 * torch.log10(refs.pow(2).mean(dim=-1).sqrt()).numpy()  # (B, N)
        top = db.max(1)
        assert ((top > -40.5) & (top < -14.5)).all()
        gaps.extend((top[:, None] - db).ravel()[(top[:, None] - db).ravel() > 1e-3].tolist())
        assert (top[:, None] - db <= 30.01).all()  # never more than G below the loudest
    gaps = np.array(gaps)
    assert gaps.max() > 24 and np.mean(gaps > 15) > 0.3  # large gaps are common, not a tail
    plain = D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]))
    assert torch.equal(plain, D.mom_batch(sampler, 3, 0, np.random.default_rng([0, 0]), level_gap=0.0))
