"""Weak labels → per-head targets and masks; the window cache; the augmenting dataset."""
import numpy as np
import pytest
import soundfile as sf

from birdsep.classification.augment import AugmentConfig
from birdsep.classification.data import LabelSpace, LabelledRecording, WindowDataset, activity_windows, read_labelled
from birdsep.errors import UsageError
from birdsep.taxonomy import Taxonomy, read_species_list


@pytest.fixture(scope="module")
def space():
    tax = Taxonomy.load()
    recs = [LabelledRecording("a.wav", "european_robin"), LabelledRecording("b.wav", "common_nightingale"),
            LabelledRecording("c.wav", "siberian_jay", ("european_robin",)), LabelledRecording("d.wav", "alpine_chough")]
    return LabelSpace.build(recs, ["european_robin", "common_nightingale", "siberian_jay"], tax)


def test_label_space_levels(space):
    sp, cfg = space
    assert cfg.species == ("european_robin", "common_nightingale", "siberian_jay")
    assert cfg.genus == ("Erithacus", "Luscinia", "Perisoreus", "Pyrrhocorax")  # the chough counts too
    assert cfg.family == ("Corvidae", "Muscicapidae") and cfg.order == ("Passeriformes",)


def test_primary_species_and_taxonomy(space):
    sp, _ = space
    lab = sp.encode(LabelledRecording("a.wav", "european_robin"))
    assert lab["y_species"].tolist() == [1, 0, 0] and lab["m_species"].tolist() == [1, 1, 1]
    assert lab["y_genus"].tolist() == [1, 0, 0, 0] and lab["y_family"].tolist() == [0, 1]
    assert lab["y_bird"].tolist() == [1] and lab["m_bird"].tolist() == [1]


def test_background_species_are_masked(space):
    sp, _ = space
    lab = sp.encode(LabelledRecording("c.wav", "siberian_jay", ("european_robin",)))
    assert lab["y_species"].tolist() == [0, 0, 1] and lab["m_species"].tolist() == [0, 1, 1]
    # the robin's genus and family are unknown-present: masked too
    assert lab["m_genus"].tolist() == [0, 1, 1, 1] and lab["m_family"].tolist() == [1, 0]


def test_out_of_target_species_trains_taxonomy_only(space):
    sp, _ = space
    lab = sp.encode(LabelledRecording("d.wav", "alpine_chough"))
    assert lab["m_species"].sum() == 0
    assert lab["y_genus"].tolist() == [0, 0, 0, 1] and lab["m_genus"].tolist() == [1, 1, 1, 1]
    assert lab["y_family"].tolist() == [1, 0] and lab["y_bird"].tolist() == [1]


def test_unplaceable_species_masks_its_levels():
    tax = Taxonomy.load()
    sp, cfg = LabelSpace.build([LabelledRecording("x.wav", "mystery_bird_q"), LabelledRecording("y.wav", "european_robin")], None,
                               tax)
    lab = sp.encode(LabelledRecording("x.wav", "mystery_bird_q"))
    assert lab["y_species"][cfg.species.index("mystery_bird_q")] == 1
    assert lab["m_genus"].sum() == lab["m_family"].sum() == lab["m_order"].sum() == 0


def test_union_of_mixed_examples(space):
    sp, _ = space
    a = sp.encode(LabelledRecording("c.wav", "siberian_jay", ("european_robin",)))
    b = sp.encode(LabelledRecording("b.wav", "common_nightingale"))
    u = LabelSpace.union(a, b)
    assert u["y_species"].tolist() == [0, 1, 1] and u["m_species"].tolist() == [0, 1, 1]
    t = LabelSpace.union(sp.encode(LabelledRecording("d.wav", "alpine_chough")), b)  # taxonomy-only + target
    assert t["m_species"].tolist() == [0, 1, 0] and t["y_species"].tolist() == [0, 1, 0]
    none = LabelSpace.no_labels(a)
    assert none["y_bird"].tolist() == [0] and none["m_species"].tolist() == [1, 1, 1]
    assert all(v.sum() == 0 for k, v in none.items() if k.startswith("y_"))


def test_read_folder_csv_and_species_list(tmp_path):
    for sp in ("alpha", "beta"):
        (tmp_path / "tree" / sp).mkdir(parents=True)
        sf.write(tmp_path / "tree" / sp / "r1.wav", np.zeros(100, np.float32), 8000)
    recs = read_labelled(tmp_path / "tree")
    assert [(r.path.name, r.primary) for r in recs] == [("r1.wav", "alpha"), ("r1.wav", "beta")]
    (tmp_path / "labels.csv").write_text("file,primary,background\ntree/alpha/r1.wav,alpha,beta; gamma\n")
    (rec,) = read_labelled(tmp_path / "labels.csv")
    assert rec.path == tmp_path / "tree/alpha/r1.wav" and rec.background == ("beta", "gamma")
    (tmp_path / "bad.csv").write_text("path_to,who\nx,y\n")
    with pytest.raises(UsageError, match="needs columns"):
        read_labelled(tmp_path / "bad.csv")
    with pytest.raises(UsageError):
        read_labelled(tmp_path / "nothing")
    (tmp_path / "list.txt").write_text("alpha\n# comment\n\nbeta  # second\nalpha\n")
    assert read_species_list(tmp_path / "list.txt") == ["alpha", "beta"]


def test_window_cache_is_reused(tmp_path):
    sr = 16000
    x = (0.001 * np.random.default_rng(0).standard_normal(20 * sr)).astype(np.float32)
    x[8 * sr : 9 * sr] += 0.5 * np.sin(2 * np.pi * 3000 * np.arange(sr) / sr).astype(np.float32)
    f = tmp_path / "rec.flac"
    sf.write(f, x, 48000 // 3)
    w1 = activity_windows(f, sr, tmp_path / "cache")
    assert w1.dtype == np.float16 and w1.shape[1] == 6 * sr and 1 <= len(w1) <= 5
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.full((1, 6 * sr), 7, np.float16))  # prove the second call reads the cache
    assert activity_windows(f, sr, tmp_path / "cache").max() == 7


def test_dataset_items(space):
    sp, cfg = space
    rng = np.random.default_rng(1)
    windows = [rng.standard_normal((2, 6 * cfg.sample_rate)).astype(np.float16) * 0.1 for _ in range(2)]
    labels = [sp.encode(LabelledRecording("a", "european_robin")), sp.encode(LabelledRecording("b", "siberian_jay"))]
    noise = [rng.standard_normal(cfg.sample_rate).astype(np.float16)]
    ds = WindowDataset(windows, labels, cfg, AugmentConfig(), noise, seed=3)
    assert len(ds) == 4
    n = 5 * cfg.sample_rate
    seen_mix = seen_noise_only = seen_lowpass = 0
    for _ in range(60):
        item = ds[0]
        assert item["audio"].shape == (n,) and item["band_gain"].shape == (cfg.frontend.mel_channels,)
        seen_mix += item["y_species"].sum() == 2
        seen_noise_only += item["y_bird"][0] == 0
        seen_lowpass += item["band_gain"].min() == 0
    assert seen_mix and seen_noise_only and seen_lowpass
    plain = WindowDataset(windows, labels, cfg, None)[1]
    np.testing.assert_array_equal(plain["audio"], windows[0][1][cfg.sample_rate // 2 : cfg.sample_rate // 2 + n])
    assert plain["band_gain"].min() == 1 and plain["y_species"].tolist() == [1, 0, 0]
