"""benchmarks/track_purity.py's measures on hand-built tracks with known answers."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import track_purity as TP  # noqa: E402


def _scene(songs):
    rng = np.random.default_rng(0)
    planted = [TP.Song(bird, start, rng.standard_normal(1000)) for bird, start in songs]
    return TP.Scene(np.zeros(10000, np.float32), planted, ["a", "b"])


def _tracks(scene, where):
    """where[i] = {track: share} for song i → (3, T) tracks holding those shares of each song."""
    tracks = np.zeros((3, 10000))
    for song, parts in zip(scene.songs, where):
        for track, share in parts.items():
            tracks[track, song.start:song.start + 1000] += share * song.signal
    return tracks


def test_a_split_song_lowers_purity_and_song_purity_alike():
    scene = _scene([(0, 0), (0, 2000), (1, 4000)])
    rows = TP.purity(scene, _tracks(scene, [{0: 0.6, 1: 0.4}, {0: 0.6, 1: 0.4}, {1: 1.0}]))
    assert rows[0]["purity"] == pytest.approx(0.6) and rows[0]["song_purity"] == pytest.approx(0.6)
    assert rows[0]["track"] == 0 and rows[0]["on_track"] == 1.0
    assert rows[1]["purity"] == pytest.approx(1.0) and rows[1]["track"] == 1
    assert rows[0]["own_track"] == rows[1]["own_track"] == 1.0


def test_a_bird_in_the_background_track_is_counted():
    scene = _scene([(0, 0), (1, 4000)])
    tracks = _tracks(scene, [{2: 1.0}, {1: 1.0}])
    tracks[2, 6000:] += 0.5  # the recorder's noise between songs, in track 2
    rows = TP.purity(scene, tracks)
    assert rows[0]["track"] == 2 and rows[0]["in_background"] == 1.0
    assert rows[1]["in_background"] == 0.0


def test_swapped_songs_keep_song_purity_and_sharing_a_track_is_counted():
    scene = _scene([(0, 0), (0, 2000), (1, 4000)])
    rows = TP.purity(scene, _tracks(scene, [{0: 1.0}, {2: 1.0}, {0: 1.0}]))
    energies = [float(s.signal @ s.signal) for s in scene.songs[:2]]
    assert rows[0]["purity"] == pytest.approx(max(energies) / sum(energies))  # the louder song's track wins
    assert rows[0]["song_purity"] == pytest.approx(1.0) and rows[0]["on_track"] == 0.5
    if rows[0]["track"] == 0:  # both birds' best track is track 0: neither has one of its own
        assert rows[0]["own_track"] == rows[1]["own_track"] == 0.0
    else:
        assert rows[0]["own_track"] == rows[1]["own_track"] == 1.0


def test_notes_alternating_between_tracks_keep_frame_purity():
    rng = np.random.default_rng(1)
    n = 4 * TP.FRAME
    songs = [TP.Song(0, 0, rng.standard_normal(n)), TP.Song(1, 2 * n, rng.standard_normal(n))]
    scene = TP.Scene(np.zeros(4 * n, np.float32), songs, ["a", "b"])
    tracks = np.zeros((3, 4 * n))
    half = 2 * TP.FRAME  # bird a's first two frames in track 0, the last two in track 1
    tracks[0, :half] = songs[0].signal[:half]
    tracks[1, half:n] = songs[0].signal[half:]
    tracks[0, 2 * n:3 * n] = 0.7 * songs[1].signal  # bird b split within every frame
    tracks[2, 2 * n:3 * n] = 0.3 * songs[1].signal
    a, b = TP.purity(scene, tracks)
    first = float(songs[0].signal[:half] @ songs[0].signal[:half]) / float(songs[0].signal @ songs[0].signal)
    assert a["frame_purity"] == pytest.approx(1.0)
    assert a["song_purity"] == pytest.approx(max(first, 1 - first))
    assert b["frame_purity"] == pytest.approx(0.7) and b["song_purity"] == pytest.approx(0.7)


def test_oracle_merge_joins_a_split_bird_and_keeps_birds_apart():
    scene = _scene([(0, 0), (0, 2000), (1, 4000)])
    tracks = _tracks(scene, [{0: 0.6, 1: 0.4}, {0: 0.5, 1: 0.5}, {2: 1.0}])  # bird a split over tracks 0 and 1
    tracks[2, 6000:] += 0.5  # the background, with bird b
    merged = TP.oracle_merge(scene, tracks, block=3000)
    assert merged.shape == (3, 10000)
    np.testing.assert_allclose(merged.sum(0), tracks.sum(0))  # nothing lost or added
    a, b = TP.purity(scene, merged)
    assert a["song_purity"] == pytest.approx(1.0) and a["track"] == 0
    assert b["track"] == 1 and b["song_purity"] == pytest.approx(1.0)  # block 3000–6000: bird b's row
    assert merged[2, 6000:9000] == pytest.approx(0.5)  # after b: the background's row


def test_oracle_merge_leaves_a_part_held_by_another_bird():
    scene = _scene([(0, 0), (1, 0)])  # both birds at once
    tracks = _tracks(scene, [{0: 0.8, 1: 0.2}, {1: 1.0}])  # a fifth of bird a sits in bird b's track
    a, b = TP.purity(scene, TP.oracle_merge(scene, tracks, block=10000))
    assert a["song_purity"] == pytest.approx(0.8, abs=0.05) and b["song_purity"] == pytest.approx(1.0, abs=0.05)
