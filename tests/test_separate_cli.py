"""End to end: `birdsep separate` on real recordings with the shipped model, and the Python API."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import birdsep
from birdsep import audio
from birdsep.cli import main
from birdsep.pretrained import DEFAULT_SEPARATOR, EXAMPLE_RECORDING

SMALL = "small_m4"  # the shipped 22.05 kHz model: a 32 kHz input keeps a high band

pytestmark = pytest.mark.slow


def read_sum(folder):
    meta = json.loads((folder / "separation.json").read_text())
    files = [s["file"] for s in meta["sources"]] + ([meta["high_band"]] if meta["high_band"] else [])
    tracks = [sf.read(folder / f, dtype="float32")[0] for f in files]
    return meta, np.sum(tracks, axis=0), tracks


def test_edge_cases_each_separated_or_one_clear_line(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["separate", str(data_dir / "edge_cases"), "-o", str(out), "-q"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    files = sorted(p for p in (data_dir / "edge_cases").iterdir() if p.suffix in (".wav", ".mp3"))
    errors = (out / "errors.log").read_text().splitlines() if (out / "errors.log").exists() else []
    for f in files:
        done = (out / f.stem / "separation.json").exists()
        failed = [line for line in errors if f.name in line]
        assert done != bool(failed), f"{f.name}: separated={done} error lines={failed}"
        if failed:
            assert len(failed) == 1 and ("empty" in failed[0] or "too short" in failed[0])
            assert f.name in captured.err
        else:
            meta, total, _ = read_sum(out / f.stem)
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            assert meta["output_sample_rate"] == sr and len(total) == len(x)
            np.testing.assert_allclose(total, x.mean(1), atol=2e-4)
    assert code == 1, "a batch with failures exits non-zero"
    assert any("empty_2c.wav" in e for e in errors)


def test_sources_sum_to_input_high_rate_stereo(data_dir, tmp_path):
    """A 32 kHz field recording through the 22.05 kHz model: the sources + high band sum to the
    input; at 22.05 kHz the sources alone do."""
    src = data_dir / "soundscapes" / "annotated" / "Recording_1_Segment_07-first10s.flac"
    assert main(["separate", str(src), "-o", str(tmp_path / "a"), "--model", SMALL, "-q"]) == 0
    meta, total, tracks = read_sum(tmp_path / "a" / src.stem)
    x, sr = audio.load(src)
    assert meta["output_sample_rate"] == sr == 32000 and meta["high_band"] == "high_band.flac"  # the default: 24-bit FLAC
    np.testing.assert_allclose(total, x, atol=2e-4)
    assert len(tracks) == meta["model_config"]["num_sources"] + 1

    assert main(["separate", str(src), "-o", str(tmp_path / "b"), "--model", SMALL, "--sample-rate", "22050", "-q"]) == 0
    meta, total, _ = read_sum(tmp_path / "b" / src.stem)
    x22, _ = audio.load(src, 22050)
    assert meta["output_sample_rate"] == 22050 and meta["high_band"] is None
    np.testing.assert_allclose(total, x22, atol=2e-4)


@pytest.mark.parametrize("model", [None, SMALL])
def test_input_kept_for_the_high_band_stays_bounded(data_dir, tmp_path, monkeypatch, model):
    """Memory stays flat in the file's length: the copy of the input kept to compute the high
    band is read as the outputs advance, and no copy is kept when there is no high band (a
    32 kHz input through the 32 kHz default: the copy once grew with the whole recording)."""
    import birdsep.pipeline as pipeline

    src = data_dir / "soundscapes" / "annotated" / "Recording_1_Segment_07-first10s.flac"
    x, sr = audio.load(src)
    long = tmp_path / "long.flac"
    sf.write(long, np.tile(x, 15)[: 150 * sr], sr)  # 150 s at 32 kHz
    tees = []

    class Watched(pipeline._Tee):
        def __init__(self, chunks):
            super().__init__(chunks)
            self.most = 0
            tees.append(self)

        def __iter__(self):
            for c in super().__iter__():
                self.most = max(self.most, self.size)
                yield c

    monkeypatch.setattr(pipeline, "_Tee", Watched)
    assert main(["separate", str(long), "-o", str(tmp_path / "o"), "-q"] + (["--model", model] if model else [])) == 0
    meta = json.loads((tmp_path / "o" / "long" / "separation.json").read_text())
    if meta["high_band"] is None:
        assert tees == []
    else:
        from birdsep.separation.apply import BlockSettings

        # the blocks in flight (one per worker, and two more), the one being joined, a chunk read
        # ahead: not the 150 s
        held = (BlockSettings().block_workers() + 4) * BlockSettings().block_seconds
        assert len(tees) == 1 and 0 < tees[0].most <= held * sr < 150 * sr


def long_input(data_dir, minutes=3.0):
    """Several minutes of real forest background (Jura soundscapes) with a planted voice: a
    two-note whistle ("fee-bee", 4.0 then 3.4 kHz) four times in 8 s, then 12 s of silence,
    over and over. The silences are longer than a block's overlap, so keeping the voice in its
    tracks needs more than overlap continuity. (A synthetic call, because a small model may
    split a real song's syllables between tracks by itself: that is the model, not the blocks.)
    """
    sr = 22050
    files = sorted((data_dir / "soundscapes" / "jura_forest_24h").glob("*0000.flac"))[:18]
    bed = np.concatenate([audio.load(f, sr)[0] for f in files])[: int(minutes * 60 * sr)] * 0.3
    t1, t2 = np.arange(int(0.4 * sr)) / sr, np.arange(int(0.5 * sr)) / sr
    call = np.concatenate([np.sin(2 * np.pi * 4000 * t1) * np.hanning(len(t1)), np.zeros(int(0.1 * sr)),
                           np.sin(2 * np.pi * 3400 * t2) * np.hanning(len(t2))]) * 0.3
    planted = np.zeros_like(bed)
    for start in range(0, len(bed) - 8 * sr, 20 * sr):
        for k in range(4):
            planted[start + 2 * k * sr:start + 2 * k * sr + len(call)] += call
    return bed, planted, sr


def test_long_file_in_blocks_keeps_sum_and_voice(data_dir, tmp_path):
    bed, planted, sr = long_input(data_dir)
    mix = (bed + planted).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, mix, sr, subtype="FLOAT")
    assert main(["separate", str(path), "-o", str(tmp_path / "out"), "-q", "--plot"]) == 0
    meta, total, tracks = read_sum(tmp_path / "out" / "long")
    assert len(total) == len(mix)
    np.testing.assert_allclose(total, mix, atol=2e-4)
    assert (tmp_path / "out" / "long" / "separation.png").stat().st_size > 10_000
    # How the voice is shared among the tracks, per 20 s segment (4 calls, then silence):
    # the same in every segment if every block kept the tracks in order.
    m = meta["model_config"]["num_sources"]
    seg = 20 * sr
    shares = []
    for start in range(0, len(mix) - seg + 1, seg):
        v = planted[start:start + seg]
        shares.append([float(np.dot(t[start:start + seg], v) / np.dot(v, v)) for t in tracks[:m]])
    shares = np.array(shares)
    typical = np.median(shares, axis=0)
    assert typical.max() > 0.3, f"the voice is not separated at all: {typical}"
    moved = np.abs(shares - typical).sum(1)
    assert np.all(moved < 0.3), f"the voice moved between tracks:\n{np.round(shares, 2)}"


def test_interrupted_batch_resumes(data_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((data_dir / "soundscapes" / "jura_forest_24h").glob("*.flac"))[:6]:
        shutil.copy(f, inputs / f.name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "birdsep", "separate", str(inputs), "-o", str(out), "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*/separation.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/separation.json")}
    assert 2 <= len(finished) < 6
    for d in out.iterdir():  # no half-written file under a final name
        if d.is_dir() and not (d / "separation.json").exists():
            assert not list(d.glob("source_*.wav")) or all(sf.info(p).frames > 0 for p in d.glob("source_*.wav"))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1000:]
    assert f"{len(finished)} already done" in r.stdout
    for name, mtime in finished.items():
        assert (out / name / "separation.json").stat().st_mtime_ns == mtime, f"{name} was redone"
    assert len(list(out.glob("*/separation.json"))) == 6
    assert not list(out.rglob(".*.tmp")), "temporary files cleaned up"
    originals = sorted((data_dir / "soundscapes" / "jura_forest_24h").glob("*.flac"))[:6]
    for f in originals:  # the user's files are untouched
        assert (inputs / f.name).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_to_the_process_group_ends_a_batch_as_ctrl_c_does(data_dir, tmp_path, jobs):
    """``kill -TERM -- -PGID`` (a scheduler ending its job): one line, exit code 143, no
    temporary files left, finished files kept, and a re-run does the rest."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted((data_dir / "soundscapes" / "jura_forest_24h").glob("*.flac"))[:8]:
        x, sr = sf.read(f, dtype="float32")
        sf.write(inputs / f.name, np.tile(x, 6), sr)  # 1 min each: the signal lands within a file
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "birdsep", "separate", str(inputs), "-o", str(out), "-q", "--threads", "1",
           "-j", str(jobs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*/separation.json"))) < jobs:  # every worker at work
        time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "birdsep separate: interrupted"
    assert not list(out.rglob(".*.tmp")), "temporary files removed"
    finished = len(list(out.glob("*/separation.json")))
    assert jobs <= finished < 8
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"{finished} already done" in r.stdout, r.stderr[-1000:]
    assert len(list(out.glob("*/separation.json"))) == 8


def test_two_recorders_with_the_same_file_names(data_dir, tmp_path):
    """AudioMoths name files by date and time: two sites' folders given together each keep
    their outputs under their own name, and a second run finds them all done."""
    clips = sorted((data_dir / "soundscapes" / "jura_forest_24h").glob("*.flac"))[:2]
    for site, clip in zip(("site1", "site2"), clips):
        (tmp_path / site).mkdir()
        shutil.copy(clip, tmp_path / site / "20240501_050000.flac")
    out = tmp_path / "out"
    args = ["separate", str(tmp_path / "site1"), str(tmp_path / "site2"), "-o", str(out), "-q", "--threads", "1"]
    assert main(args) == 0
    done = {p.parent.relative_to(out).as_posix(): json.loads(p.read_text())["input"] for p in out.rglob("separation.json")}
    assert done == {"site1/20240501_050000": str(tmp_path / "site1" / "20240501_050000.flac"),
                    "site2/20240501_050000": str(tmp_path / "site2" / "20240501_050000.flac")}
    assert main(args) == 0 and len(list(out.rglob("separation.json"))) == 2


def test_parallel_jobs_and_bad_inputs(data_dir, tmp_path, capsys):
    inputs = [data_dir / "soundscapes" / "pennsylvania" / f"aru_{i}.flac" for i in (1, 2, 3)]
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    nan = tmp_path / "nan.wav"
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    x[100] = np.nan
    sf.write(nan, x, 22050, subtype="FLOAT")
    code = main(["separate", *map(str, inputs), str(bad), str(nan), str(tmp_path / "missing.flac"),
                 "-o", str(tmp_path / "out"), "-j", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert "corrupt.wav: cannot read audio" in err and "nan.wav: contains NaN" in err and "no such file" in err
    assert all((tmp_path / "out" / f.stem / "separation.json").exists() for f in inputs)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_video(data_dir, tmp_path):
    src = data_dir / "soundscapes" / "pennsylvania" / "aru_1.flac"
    assert main(["separate", str(src), "-o", str(tmp_path), "--video", "-q"]) == 0
    mp4 = tmp_path / src.stem / "separation.mp4"
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
                            "-of", "json", str(mp4)], capture_output=True, text=True)
    info = json.loads(probe.stdout)
    assert {s["codec_type"] for s in info["streams"]} == {"video", "audio"}
    assert float(info["format"]["duration"]) == pytest.approx(sf.info(src).duration, abs=0.5)


def test_video_without_ffmpeg_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    src = data_dir / "soundscapes" / "pennsylvania" / "aru_1.flac"
    assert main(["separate", str(src), "-o", str(tmp_path), "--video", "-q"]) == 1
    assert "ffmpeg not found" in capsys.readouterr().err


def test_python_api_numpy_and_torch(data_dir):
    x, sr = audio.load(data_dir / "soundscapes" / "pennsylvania" / "aru_2.flac")
    sources, rate = birdsep.separate(x, sr)
    assert isinstance(sources, np.ndarray) and rate == sr and sources.shape == (4, len(x))
    assert np.abs(sources.sum(0) - x).max() < 0.05  # above 11 kHz the model's band ends
    stereo = torch.from_numpy(np.stack([x, x]))
    t_sources, rate = birdsep.separate(stereo, sr, model=birdsep.load_model(DEFAULT_SEPARATOR), output_rate=22050)
    assert isinstance(t_sources, torch.Tensor) and rate == 22050
    assert t_sources.shape == (4, int(round(len(x) * 22050 / sr)))
    with pytest.raises(ValueError):
        birdsep.separate(np.full(100, np.nan), sr)


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["separate", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2
    assert "no model here" in capsys.readouterr().err


def test_cli_block_defaults_are_the_library_defaults():
    from birdsep.cli import build_parser
    from birdsep.pipeline import SeparateOptions
    from birdsep.separation.apply import BlockSettings

    a = build_parser().parse_args(["separate", "x.wav"])
    assert (a.block_seconds, a.overlap, a.precision, a.device) == (BlockSettings().block_seconds,
                                                                    BlockSettings().overlap, "auto", "auto")
    assert (SeparateOptions().block_seconds, SeparateOptions().overlap) == (a.block_seconds, a.overlap)


def test_precision_choices_recorded(data_dir, tmp_path):
    clip = data_dir / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac"
    short = tmp_path / "clip.wav"
    x, sr = audio.load(clip, duration=8.0)
    sf.write(short, x, sr)
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / precision
        assert main(["separate", str(short), "-o", str(out), "-q", "--precision", precision]) == 0
        meta = json.loads((out / "clip" / "separation.json").read_text())
        assert meta["settings"]["precision"] in (("fp32", "bf16") if precision == "auto" else (precision,))
        assert meta["runtime"]["precision"] == meta["settings"]["precision"] and meta["runtime"]["device"] == "cpu"
        assert meta["runtime"]["asked"] == {"device": "auto", "precision": precision}
        assert meta["runtime"]["reason"].startswith(meta["settings"]["precision"])  # e.g. "bf16: … 1.58× as fast …"
        assert np.abs(read_sum(out / "clip")[1] - x).max() < 1e-3
    with pytest.raises(SystemExit) as stop:  # argparse: one usage line, exit 2
        main(["separate", str(short), "-o", str(tmp_path / "bad"), "-q", "--precision", "fp16"])
    assert stop.value.code == 2


def test_cuda_without_a_gpu_is_one_line_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in ("separate", "classify"):
        out = tmp_path / command
        args = [command, str(EXAMPLE_RECORDING), "-o", str(out), "--device", "cuda", "-q"]
        assert main(args + (["--classifier", "birdnet"] if command == "classify" else [])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"birdsep {command}: error: --device cuda asked for, but no CUDA device is available "
                       "(use --device cpu or auto)"]
        assert not out.exists()


@pytest.mark.parametrize("fmt,bits,tolerance", [("flac", 24, 2.0 ** -24 + 1e-6), ("flac", 16, 2.0 ** -16 + 1e-6),
                                                ("wav", 16, 2.0 ** -16 + 1e-6), ("wav", 32, 1e-5)])
def test_track_formats_sum_to_the_input_within_their_precision(data_dir, tmp_path, fmt, bits, tolerance):
    """Sources + high band, as stored, sum to the input within half a step of --bits (plus float
    rounding of the sum), because the high band is computed from the quantised sources."""
    src = data_dir / "soundscapes" / "annotated" / "Recording_1_Segment_07-first10s.flac"
    out = tmp_path / fmt
    assert main(["separate", str(src), "-o", str(out), "--model", SMALL, "-q", "--format", fmt, "--bits", str(bits)]) == 0
    meta, total, _ = read_sum(out / src.stem)
    x, _ = audio.load(src)
    assert (meta["settings"]["format"], meta["settings"]["bits"], meta["clipped_samples"]) == (fmt, bits, 0)
    files = [s["file"] for s in meta["sources"]] + [meta["high_band"]]
    assert all(f.endswith(f".{fmt}") and sf.info(out / src.stem / f).subtype == audio.TRACK_SUBTYPES[fmt][bits]
               for f in files)
    assert np.abs(total - x).max() <= tolerance


def test_flac_32_bits_is_refused_up_front(tmp_path, capsys):
    assert main(["separate", str(EXAMPLE_RECORDING), "-o", str(tmp_path / "o"), "--bits", "32", "-q"]) == 2
    assert "needs --format wav" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_separate_needs_no_training_extras(tmp_path):
    """`birdsep separate` runs without Lightning, timm, torchvision or TensorBoard (the train extra)."""
    code = ("import sys\nfrom birdsep.cli import main\nrc = main(sys.argv[1:])\n"
            "print('HEAVY', [m for m in ('lightning', 'timm', 'torchvision', 'tensorboard') if m in sys.modules])\n"
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "separate", str(EXAMPLE_RECORDING), "-o", str(tmp_path), "-q",
                        "--precision", "fp32", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout


def test_an_interrupted_file_stops_the_thread_ahead_at_once(data_dir, tmp_path):
    """Ctrl-C or SIGTERM while a file's tracks are written stops the thread that decodes,
    resamples and separates ahead before the exception leaves ``separate_file``, even while the
    traceback (which holds the function's frame) is still alive: a thread left running at exit
    kept soxr's stream alive, and nanobind printed a leak report after "interrupted"."""
    import threading

    from birdsep import pipeline
    from birdsep.separation import runtime

    src = data_dir / "soundscapes" / "jura_forest_24h"
    f = sorted(src.glob("*.flac"))[0]
    x, sr = sf.read(f, dtype="float32")
    long = tmp_path / "long.flac"
    sf.write(long, np.tile(x, 6), sr)  # a minute: several chunks, resampled (22 kHz → the model's rate)
    model, rt = runtime.settle("cpu", "auto", model=birdsep.load_model(DEFAULT_SEPARATOR))

    def stop(fraction):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        pipeline.separate_file(long, tmp_path / "o", model, pipeline.SeparateOptions(), rt, progress=stop)
    assert caught.value.__traceback__ is not None  # still held here
    assert not [t for t in threading.enumerate() if t.name == "birdsep-ahead" and t.is_alive()]
    assert not list((tmp_path / "o").glob("*.tmp*"))
