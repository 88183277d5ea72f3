"""Activity detection: 6 s windows at energy peaks, loudest first."""
import io

import numpy as np
import pytest
import soundfile as sf

from birdsep.classification.activity import detect_activity
from birdsep.clips import detect_activity_files
from birdsep.cli import main

SR = 16000


def _bursts(duration, bursts, seed=0):
    """Quiet noise with 0.6 s harmonic bursts (2, 4, 6 kHz) at (time, amplitude)."""
    rng = np.random.default_rng(seed)
    x = 0.001 * rng.standard_normal(int(duration * SR))
    t = np.arange(int(0.6 * SR)) / SR
    for at, amp in bursts:
        i = int(at * SR)
        tone = sum(np.sin(2 * np.pi * f * t) for f in (2000, 4000, 6000))
        x[i : i + len(t)] += amp * tone * np.hanning(len(t))
    return x.astype(np.float32)


def test_windows_centred_on_bursts_loudest_first():
    x = _bursts(40.0, [(5.0, 0.02), (20.0, 0.5), (33.0, 0.1)])
    wins = detect_activity(x, SR)
    assert 3 <= len(wins) <= 5
    assert all(w.duration == pytest.approx(6.0) for w in wins)
    centres = [(w.start + w.end) / 2 for w in wins[:3]]
    assert centres == pytest.approx([20.3, 33.3, 5.3], abs=0.6)
    assert [w.energy for w in wins] == sorted((w.energy for w in wins), reverse=True)


def test_at_most_five_windows_inside_the_recording_and_not_mostly_overlapping():
    x = _bursts(60.0, [(t, 0.2 + 0.01 * i) for i, t in enumerate(range(2, 58, 4))])
    wins = detect_activity(x, SR)
    assert len(wins) == 5
    assert all(0 <= w.start and w.end <= 60.0 for w in wins)
    for i, a in enumerate(wins):
        for b in wins[i + 1 :]:
            assert min(a.end, b.end) - max(a.start, b.start) <= 3.0 + 1e-6
    assert len(detect_activity(x, SR, max_windows=2)) == 2


def test_short_and_flat_recordings_give_one_window():
    wins = detect_activity(_bursts(4.0, [(1.0, 0.5)]), SR)
    assert len(wins) == 1 and (wins[0].start, wins[0].end) == (0.0, 4.0)
    flat = detect_activity(np.zeros(20 * SR, np.float32), SR)
    assert len(flat) >= 1 and flat[0].duration == pytest.approx(6.0)


def test_window_near_the_end_is_shifted_inside():
    wins = detect_activity(_bursts(20.0, [(19.2, 0.5)]), SR)
    assert wins[0].end == pytest.approx(20.0) and wins[0].start == pytest.approx(14.0)


def test_command_lists_windows_and_reports_bad_files(tmp_path, capsys):
    good = tmp_path / "good.wav"
    sf.write(good, _bursts(15.0, [(7.0, 0.5)]), SR)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    rc = main(["detect-activity", str(bad), str(good), str(tmp_path / "missing.wav")])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert rows[0] == ["file", "rank", "start_s", "end_s", "energy"]
    assert rows[1][0] == str(good) and rows[1][1] == "1"
    assert 4.0 <= float(rows[1][2]) <= 5.0 and float(rows[1][3]) - float(rows[1][2]) == pytest.approx(6.0)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 2 and any("bad.wav" in e for e in errors) and any("missing.wav" in e for e in errors)
    assert "Traceback" not in err
    assert main(["detect-activity", str(good), "--max-windows", "0"]) == 2


def test_real_recordings(data_dir):
    out = io.StringIO()
    summary = detect_activity_files([data_dir / "xc" / "veery", data_dir / "edge_cases"], stream=out)
    assert summary.exit_code == 1  # edge_cases holds 0-sample files
    rows = [r.split("\t") for r in out.getvalue().splitlines()[1:]]
    veery = [r for r in rows if "veery_recording_2" in r[0]]
    assert 1 <= len(veery) <= 5 and all(float(r[3]) - float(r[2]) == pytest.approx(6.0) for r in veery)
