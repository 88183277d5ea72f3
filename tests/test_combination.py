"""Combination rules (birdsep.combination) on hand-made scores with known answers."""
import numpy as np
import pytest

from birdsep.combination import (DEFAULT, DENOISED, DENOISED_FLOOR, DENOISED_STEADY, PAPER, RAW, RULES, Rule,
                                 TrackInput, combine, logit, sigmoid, steady_part, track_levels)

# one window (N = 1), M = 3 tracks, L = 3 species
MIX = np.array([[0.30, 0.60, 0.05]])
TRACKS = np.array([[[0.80, 0.10, 0.20],  # track 1: species 0 loud and clear
                    [0.10, 0.70, 0.40],  # track 2: species 1, and species 2 second
                    [0.35, 0.05, 0.50]]])  # track 3: faint; species 2 on top
LEVELS = np.array([[-1.0, -6.0, -30.0]])  # dB of the tracks' energy


def test_paper_max_and_modes():
    s, c = combine(PAPER, "mix+separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(np.array([[0.80, 0.70, 0.50]]), abs=1e-6)
    assert c.tolist() == [[1, 2, 3]]
    s, c = combine(PAPER, "separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(np.array([[0.80, 0.70, 0.50]]), abs=1e-6) and c.tolist() == [[1, 2, 3]]
    s, c = combine(PAPER, "mix", MIX, TRACKS, LEVELS)
    assert np.allclose(s, MIX) and c.tolist() == [[0, 0, 0]]


def test_faint_tracks_are_dropped():
    s, c = combine(Rule("gate", min_level_db=-20), "mix+separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(np.array([[0.80, 0.70, 0.40]]), abs=1e-6)  # species 2 now from track 2
    assert c.tolist() == [[1, 2, 2]]
    s, c = combine(Rule("gate", min_level_db=-3), "separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(np.array([[0.80, 0.10, 0.20]]), abs=1e-6) and c.tolist() == [[1, 1, 1]]
    s, c = combine(Rule("none", min_level_db=0.5), "separated", MIX, TRACKS, LEVELS)
    assert s.tolist() == [[0, 0, 0]] and c.tolist() == [[0, 0, 0]]  # no track counts


def test_tracks_only_where_several_sources_are_active():
    two_windows_mix = np.repeat(MIX, 2, 0)
    tracks = np.repeat(TRACKS, 2, 0)
    levels = np.array([[-1.0, -6.0, -30.0],  # two active (≥ −20 dB): tracks count
                       [-0.1, -25.0, -30.0]])  # one: the mix alone
    s, c = combine(Rule("busy", min_active=2), "mix+separated", two_windows_mix, tracks, levels)
    assert s[0] == pytest.approx([0.80, 0.70, 0.50], abs=1e-6)  # ≥ 2 active: all three tracks count
    assert s[1] == pytest.approx(MIX[0], abs=1e-6) and c[1].tolist() == [0, 0, 0]


def test_each_track_speaks_for_its_top_species():
    s, c = combine(Rule("top1", top_k=1), "mix+separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(np.array([[0.80, 0.70, 0.50]]), abs=1e-6)  # every winner is its track's top
    tracks = TRACKS.copy()
    tracks[0, 0, 2] = 0.79  # track 1's second species may not lift species 2 …
    s, c = combine(Rule("top1", top_k=1), "mix+separated", MIX, tracks, LEVELS)
    assert s[0, 2] == pytest.approx(0.50) and c[0, 2] == 3
    s, c = combine(Rule("top2", top_k=2), "mix+separated", MIX, tracks, LEVELS)
    assert s[0, 2] == pytest.approx(0.79) and c[0, 2] == 1  # … but with k = 2 it may


def test_calibration_and_mean_pooling():
    a, b = 0.5, -1.0
    s, c = combine(Rule("cal", calibration=(a, b)), "mix+separated", MIX, TRACKS, LEVELS)
    best = (a * logit(TRACKS) + b).max(1)
    want = np.maximum(logit(MIX), best)
    assert s == pytest.approx(sigmoid(want), abs=1e-6)
    assert c.tolist() == [[1, 0, 3]]  # shrunk, track 2 no longer beats the mix for species 1
    s, c = combine(Rule("mean", pool="mean"), "mix+separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(sigmoid((logit(MIX) + logit(TRACKS).max(1)) / 2), abs=1e-6)
    assert c.tolist() == [[1, 2, 3]]
    s, c = combine(Rule("mean", pool="mean", min_level_db=1), "mix+separated", MIX, TRACKS, LEVELS)
    assert s == pytest.approx(MIX, abs=1e-6) and c.tolist() == [[0, 0, 0]]  # no track: the mix alone


def test_track_inputs_and_levels():
    rng = np.random.default_rng(0)
    tracks = rng.standard_normal((4, 1000)).astype(np.float32)
    mix = tracks.sum(0) + 0.1 * rng.standard_normal(1000).astype(np.float32)  # the mix has a "high band" too
    assert np.array_equal(TrackInput().apply(tracks, mix), tracks)
    full = TrackInput(high_band=True).apply(tracks, mix)
    assert np.allclose(full - tracks, (mix - tracks.sum(0))[None], atol=1e-5)
    back = TrackInput(mix_db=-20).apply(tracks, mix)
    assert np.allclose(back - tracks, 0.1 * mix[None], atol=1e-5)
    assert TrackInput(mix_db=-20, high_band=True).name == "tracks + high band + mix -20 dB"
    quiet = tracks * np.array([[1.0], [0.1], [0.0], [1.0]], np.float32)
    under = TrackInput(mix_db=-20, under_track=True).apply(quiet, mix)
    added = under - quiet  # the mixture, 20 dB under each track's own level (nothing on a silent track)
    for k in range(4):
        want = 0.1 * np.sqrt(np.mean(quiet[k] ** 2)) / np.sqrt(np.mean(mix ** 2))
        assert np.allclose(added[k], want * mix, atol=1e-5)
    assert np.all(added[2] == 0)
    assert np.all(np.isfinite(TrackInput(mix_db=-20, under_track=True).apply(quiet, 0 * mix)))
    assert TrackInput(mix_db=-20, under_track=True).name == "tracks + mix -20 dB under each track"
    rest = TrackInput(complement=True).apply(tracks, mix)  # the mix with one track taken out, per track
    assert rest.shape == tracks.shape and rest.dtype == np.float32
    for k in range(4):
        others = tracks[[j for j in range(4) if j != k]].sum(0) + (mix - tracks.sum(0))  # high band included
        assert np.allclose(rest[k], others, atol=1e-4)
    assert TrackInput(complement=True).name == "mix minus each track"
    loud = tracks * np.array([[0.1], [3.0], [1.0], [0.5]], np.float32)  # track 2 (index 1) is the loudest
    one = DENOISED.apply(loud, mix)
    assert one.shape == (1, 1000) and np.allclose(one[0], mix - loud[1], atol=1e-5)
    assert DENOISED.rows(4) == 1 and TrackInput().rows(4) == 4
    lv = track_levels(np.stack([tracks, np.zeros_like(tracks)]))  # (2 windows, 4 tracks)
    assert np.allclose((10 ** (lv[0] / 10)).sum(), 1) and np.all(lv[1] == -120)
    quiet = tracks.copy()
    quiet[3] *= 0.01
    assert track_levels(quiet)[3] == pytest.approx(track_levels(quiet)[0] - 40, abs=1.5)


def test_mix_without_its_noise_floor_track():
    """``floor`` takes out the track that stays loud between calls, not the loudest: a steady
    noise track beats a louder bird that calls in bursts; ``loudest`` takes out the bird."""
    rng = np.random.default_rng(3)
    t = 48000
    noise = 0.1 * rng.standard_normal(t).astype(np.float32)  # steady, power 0.01 in every frame
    bird = np.zeros(t, np.float32)
    for start in range(0, t, 12000):  # 4 calls of 2000 samples, silence between: loud but intermittent
        bird[start:start + 2000] = np.sin(np.arange(2000) * 0.3).astype(np.float32)
    tracks = np.stack([bird, noise, 0.01 * noise])  # (3, T)
    mix = tracks.sum(0)
    assert DENOISED.removed(tracks) == 0 and DENOISED_FLOOR.removed(tracks) == 1
    assert np.allclose(DENOISED_FLOOR.apply(tracks, mix)[0], bird + 0.01 * noise, atol=1e-5)
    assert DENOISED_FLOOR.name == "mix without its noise-floor track" and DENOISED_FLOOR.rows(3) == 1
    assert DENOISED_FLOOR.removed(tracks[:, 3000:3100]) == 1  # shorter than a frame: one frame of the whole
    with pytest.raises(ValueError):
        TrackInput(denoise=True, remove="quietest")
    rule = Rule("f", pool="mean", track_weight=0.25, denoised=0.25, denoise_input=DENOISED_FLOOR)
    assert rule.inputs == (RAW, DENOISED_FLOOR)
    with pytest.raises(ValueError):
        Rule("f", pool="mean", denoised=0.25, denoise_input=RAW)


def test_steady_part_takes_the_floor_and_leaves_the_call():
    """Known answer: white noise + a 0.3 s tone 14 dB over it → the steady part is the noise
    (≥ 90 % of its energy), the call stays in what is left (≥ 90 %); the denoised input takes
    only the steady part of the noise-floor track out of the mixture."""
    rng = np.random.default_rng(0)
    t = np.arange(3 * 48000) / 48000
    noise = 0.1 * rng.standard_normal(len(t))
    call = 0.5 * np.sin(2 * np.pi * 3000 * t) * ((t > 1) & (t < 1.3))
    steady = steady_part(noise + call)
    left = noise + call - steady
    assert steady.shape == t.shape and np.isfinite(steady).all()
    assert np.dot(left, call) / np.dot(call, call) > 0.9  # the call is kept
    assert np.mean((left - call)[:40000] ** 2) < 0.1 * np.mean(noise ** 2)  # the noise is taken
    assert np.allclose(steady_part(np.zeros(8)), 0)  # too short for a frame: returned as it is
    bird = np.zeros_like(t)
    bird[96000:98000] = np.sin(np.arange(2000) * 0.2)  # a bird in its own track
    tracks = np.stack([bird, noise + call]).astype(np.float32)  # the call was left in the noise track
    mix = tracks.sum(0)
    out = DENOISED_STEADY.apply(tracks, mix)[0]
    assert DENOISED_STEADY.removed(tracks) == 1 and DENOISED_STEADY.rows(2) == 1
    assert np.dot(out, call) / np.dot(call, call) > 0.9 and np.dot(out, bird) / np.dot(bird, bird) > 0.99
    assert np.dot(DENOISED_FLOOR.apply(tracks, mix)[0], call) / np.dot(call, call) < 0.01  # "floor" loses it
    assert DENOISED_STEADY.name == "mix without its noise-floor track's steady part"


def test_rule_names_and_validation():
    assert RULES["max"] is PAPER and RULES["default"] is DEFAULT
    with pytest.raises(ValueError):
        Rule("x", pool="median")
    for bad in (dict(denoised=0.3), dict(pool="mean", track_weight=0.8, denoised=0.3)):  # max, or weights > 1
        with pytest.raises(ValueError):
            Rule("x", **bad)
    assert Rule("x").inputs == (Rule("x").input,)
    assert Rule("x", pool="mean", denoised=0.25).inputs == (Rule("x").input, DENOISED)


def test_mean_with_the_mix_without_its_loudest_track():
    """Known answer: ½ the mix's logit, ¼ the best track's, ¼ the denoised mix's; the mix's share
    takes the track's where no track counts."""
    den = np.array([[0.70, 0.20, 0.05]])
    rule = Rule("d", pool="mean", track_weight=0.25, denoised=0.25)
    s, c = combine(rule, "mix+separated", MIX, TRACKS, LEVELS, den)
    want = 0.5 * logit(MIX) + 0.25 * logit(TRACKS).max(1) + 0.25 * logit(den)
    assert s == pytest.approx(sigmoid(want), abs=1e-6) and c.tolist() == [[1, 2, 3]]
    s, c = combine(Rule("d", pool="mean", track_weight=0.25, denoised=0.25, min_level_db=1), "mix+separated",
                   MIX, TRACKS, LEVELS, den)
    assert s == pytest.approx(sigmoid(0.75 * logit(MIX) + 0.25 * logit(den)), abs=1e-6) and not c.any()
    with pytest.raises(ValueError, match="needs the scores"):
        combine(rule, "mix+separated", MIX, TRACKS, LEVELS)
    assert combine(rule, "mix", MIX, None, None)[0] == pytest.approx(MIX)  # the mode mix needs no tracks


def test_gain_never_lowers_the_mix_and_raises_where_a_track_hears_the_bird():
    """Known answers for pool "gain": ℓ = ℓ_mix + w·max(0, ℓ_track − ℓ_mix) (+ w_d·max(0, ℓ_den − ℓ_mix))."""
    mix = np.array([[0.30, 0.60, 0.05]])
    tracks = np.array([[[0.01, 0.01, 0.01],  # every track misses species 0 and 1 …
                        [0.02, 0.05, 0.90],  # … and one hears species 2 alone
                        [0.01, 0.02, 0.01]]])
    den = np.array([[0.10, 0.90, 0.01]])
    for w in (0.25, 0.5, 1.0):
        s, c = combine(Rule("g", pool="gain", track_weight=w), "mix+separated", mix, tracks, LEVELS)
        assert s[0, :2] == pytest.approx(mix[0, :2], abs=1e-6)  # a track that misses a species leaves it
        assert c[0, :2].tolist() == [0, 0]
        want = logit(mix[0, 2]) + w * (logit(0.90) - logit(mix[0, 2]))
        assert s[0, 2] == pytest.approx(sigmoid(want), abs=1e-6) and c[0, 2] == 2  # raised, from track 2
    assert combine(Rule("g", pool="gain", track_weight=1.0), "mix+separated", mix, tracks, LEVELS)[0] == \
        pytest.approx(combine(PAPER, "mix+separated", mix, tracks, LEVELS)[0], abs=1e-6)  # w = 1: the paper's max
    rule = Rule("g", pool="gain", track_weight=0.5, denoised=0.5)
    s, _ = combine(rule, "mix+separated", mix, tracks, LEVELS, den)
    want = logit(mix[0]) + 0.5 * np.maximum(logit(tracks[0]).max(0) - logit(mix[0]), 0) \
        + 0.5 * np.maximum(logit(den[0]) - logit(mix[0]), 0)
    assert s[0] == pytest.approx(sigmoid(want), abs=1e-6)
    assert (s >= mix - 1e-7).all()
    rng = np.random.default_rng(1)  # random scores: never below the mix, whatever the tracks say
    m, t, d = rng.random((50, 7)), rng.random((50, 4, 7)), rng.random((50, 7))
    for r in (rule, DEFAULT):
        assert (combine(r, "mix+separated", m, t, np.zeros((50, 4)), d)[0] >= m - 1e-6).all()
    with pytest.raises(ValueError):
        Rule("g", pool="gain", track_weight=1.5)


def test_gated_gain_counts_a_track_only_above_the_gate():
    """Known answers for gate g: ℓ = ℓ_mix + w·max(0, ℓ_track − max(ℓ_mix, logit g))."""
    mix = np.array([[0.30, 0.02, 0.02, 0.60]])
    tracks = np.array([[[0.50, 0.08, 0.40, 0.10],   # species 0: above the mix (≥ 0.1): the max
                        [0.10, 0.01, 0.01, 0.01],   # species 1: the track's 0.08 is under the gate: no change
                        [0.01, 0.01, 0.01, 0.01]]])  # species 2: 0.40 over a mix of 0.02: raised by its excess over 0.1
    rule = Rule("gated", pool="gain", track_weight=1.0, gate=0.1)
    s, c = combine(rule, "mix+separated", mix, tracks, LEVELS)
    assert s[0, 0] == pytest.approx(0.50, abs=1e-6) and c[0, 0] == 1
    assert s[0, 1] == pytest.approx(0.02, abs=1e-6) and c[0, 1] == 0
    want = logit(0.02) + logit(0.40) - logit(0.1)
    assert s[0, 2] == pytest.approx(sigmoid(want), abs=1e-6) and c[0, 2] == 1
    assert s[0, 3] == pytest.approx(0.60, abs=1e-6)  # a track that misses a species leaves the mix's score
    rng = np.random.default_rng(2)  # random scores: never below the mix; at w = 1 never above the max
    m, t = rng.random((50, 7)), rng.random((50, 4, 7))
    for r in (rule, DEFAULT):
        got = combine(r, "mix+separated", m, t, np.zeros((50, 4)))[0]
        assert (got >= m - 1e-6).all() and (got <= np.maximum(m, t.max(1)) + 1e-6).all()
    assert DEFAULT.gate == 0.1 and DEFAULT.pool == "gain"
    with pytest.raises(ValueError, match="gate"):
        Rule("g", pool="max", gate=0.1)
    with pytest.raises(ValueError, match="gate"):
        Rule("g", pool="gain", gate=1.5)
