"""The batch runner on its own: skipping finished files, the error log, exit codes, worker
processes, printing commands, and missing inputs that create nothing."""
import io
import warnings

import numpy as np
import pytest
import soundfile as sf

from birdsep.batch import ERROR_LOG, Done, run_batch
from birdsep.errors import AudioError


def make_worker(marker: str):
    """A stand-in for a command's work: 'bad*' is a user error, 'bug*' an internal error."""

    def work(path, target, progress):
        if path.stem.startswith("bad"):
            raise AudioError(path, "cannot read audio (test)")
        if path.stem.startswith("bug"):
            raise RuntimeError("boom")
        progress(0.5)
        if target is None:
            return Done(sf.info(path).duration, (f"{path.name}\t{marker}",))
        target.mkdir(parents=True, exist_ok=True)
        (target / "done").write_text(marker)
        progress(1.0)
        return Done(sf.info(path).duration)

    return work


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name, seconds in (("a.wav", 1.0), ("sub/b.wav", 2.0), ("bad.wav", 1.0), ("bug.wav", 1.0)):
        sf.write(folder / name, np.zeros(int(seconds * 8000), np.float32), 8000)
    return folder


def _run(inputs, out, jobs=1, **kw):
    return run_batch(inputs, out, make_worker=make_worker, worker_args=("x",), target_for=lambda f, root: out / f.stem,
                     is_done=lambda t: (t / "done").is_file(), jobs=jobs, threads=1, **kw)


@pytest.mark.parametrize("jobs", [1, 2])
def test_failures_are_logged_and_finished_files_skipped(inputs, tmp_path, capsys, jobs):
    out = tmp_path / "out"
    s = _run([str(inputs), str(tmp_path / "missing.wav")], out, jobs=jobs)
    assert sorted(s.done) == sorted([str(inputs / "a.wav"), str(inputs / "sub" / "b.wav")])
    assert s.hours == pytest.approx(3.0 / 3600) and s.exit_code == 1 and len(s.failed) == 3
    err = capsys.readouterr().err
    assert "error: " + str(inputs / "bad.wav") + ": cannot read audio (test)" in err
    assert "bug.wav: internal error (RuntimeError: boom)" in err and "missing.wav: no such file or folder" in err
    log = (out / ERROR_LOG).read_text()
    assert "bad.wav: cannot read audio" in log and "Traceback" in log and "missing.wav" in log
    assert log.count("Traceback") == 1  # only the internal error carries one

    again = _run([str(inputs)], out, jobs=jobs)
    assert sorted(again.skipped) == sorted(s.done) and not again.done and len(again.failed) == 2
    assert "2 file(s) already done" in capsys.readouterr().out


def test_progress_bar_counts_hours_within_files(inputs, tmp_path, capsys):
    s = _run([str(inputs / "a.wav"), str(inputs / "sub")], tmp_path / "out", progress=True, verb="testing")
    assert s.exit_code == 0
    err = capsys.readouterr().err
    assert "testing" in err and "3.0/3.0 s of audio" in err and "2/2 files" in err


def test_progress_bar_stops_at_its_total_when_a_file_decodes_longer_than_its_header(inputs, capsys):
    from birdsep.batch import _Bar

    a, b = inputs / "a.wav", inputs / "sub" / "b.wav"
    bar = _Bar([a, b], enabled=True, verb="testing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm warns when its fraction leaves [0, 1]
        bar.progress(str(a), 0.5)
        bar.finish(str(a), 1.3, 0)  # an MP3 can decode longer than its header says
        bar.finish(str(b), 2.2, 0)
    assert bar.tqdm.n == pytest.approx(3.0) and "3.0/3.0 s of audio, 2/2 files" in capsys.readouterr().err
    bar.close()


def test_plan_jobs_runs_enough_audio_on_every_core_and_little_here(tmp_path, monkeypatch):
    from birdsep import batch

    def clips(n: int, seconds: float) -> list:
        folder = tmp_path / f"{n}x{seconds:g}"
        folder.mkdir()
        for k in range(n):
            sf.write(folder / f"{k}.wav", np.zeros(int(seconds * 1000), np.int16), 1000)  # the lowest rate read
        return sorted(folder.iterdir())

    monkeypatch.setattr(batch.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(batch, "_memory", lambda: 64 << 30)
    many_long, few_short = clips(6, 450), clips(6, 10)
    assert batch.plan_jobs(many_long, None, "cpu") == 4  # 45 min: a worker per core
    assert batch.plan_jobs(many_long, None, "cpu", threads=2) == 2  # a worker per 2 cores
    assert batch.plan_jobs(many_long[:3], None, "cpu") == 3  # never more workers than files
    assert batch.plan_jobs(few_short, None, "cpu") == 1  # 1 min: not worth starting workers
    assert batch.plan_jobs(many_long[:1], None, "cpu") == 1
    assert batch.plan_jobs(many_long, 3, "cuda") == 3 and batch.plan_jobs(few_short, 5, "cpu") == 5  # -j wins
    assert batch.plan_jobs(many_long, None, "cuda") == 1
    monkeypatch.setattr(batch, "_memory", lambda: 5 << 30)
    assert batch.plan_jobs(many_long, None, "cpu") == 2  # 2 GiB of memory for each
    monkeypatch.setattr(batch, "_memory", lambda: 0)  # the system does not say
    assert batch.plan_jobs(many_long, None, "cpu") == 1


def test_every_input_gets_outputs_of_its_own(tmp_path):
    from birdsep.batch import distinct_targets
    from birdsep.files import find_audio, output_path

    out = tmp_path / "out"
    for name in ("site1/20240501_050000.WAV", "site1/20240501_051000.WAV", "site2/20240501_050000.WAV",
                 "site3/deep/a.wav", "site3/a.flac", "site3/a.wav", "other/site1/20240501_050000.WAV"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")

    def place(*items):
        placed, errors = distinct_targets(find_audio([tmp_path / i for i in items]),
                                          lambda f, root: output_path(f, root, out))
        return {str(f.relative_to(tmp_path)): str(t.relative_to(out)) for f, t in placed}, errors

    # nothing in common: outputs mirror each folder as before
    assert place("site1", "site3/deep") == ({"site1/20240501_050000.WAV": "20240501_050000",
                                             "site1/20240501_051000.WAV": "20240501_051000",
                                             "site3/deep/a.wav": "a"}, [])
    # two recorders, the same file names: each folder keeps its files under its own name
    assert place("site1", "site2") == ({"site1/20240501_050000.WAV": "site1/20240501_050000",
                                        "site1/20240501_051000.WAV": "site1/20240501_051000",
                                        "site2/20240501_050000.WAV": "site2/20240501_050000"}, [])
    assert place("site1/20240501_050000.WAV", "site2/20240501_050000.WAV")[0] == {
        "site1/20240501_050000.WAV": "site1/20240501_050000", "site2/20240501_050000.WAV": "site2/20240501_050000"}
    # one name, two formats, in one folder: the whole file names
    assert place("site3")[0] == {"site3/a.flac": "a.flac", "site3/a.wav": "a.wav", "site3/deep/a.wav": "deep/a"}
    # a file given twice (itself and its folder) is done once
    assert place("site1", "site1/20240501_050000.WAV")[0] == place("site1")[0]
    # two folders of the same name: the first file keeps the place, the other gets a line
    placed, errors = place("site1", "other/site1")
    assert placed == {"site1/20240501_050000.WAV": "site1/20240501_050000",
                      "site1/20240501_051000.WAV": "site1/20240501_051000"}
    assert len(errors) == 1 and errors[0].startswith(str(tmp_path / "other/site1/20240501_050000.WAV") + ": its outputs")


def test_a_rerun_in_the_recordings_own_folder_leaves_its_outputs_out(inputs, capsys):
    out = inputs / "out"  # -o inside the folder being scanned
    first = _run([str(inputs)], out)
    assert len(first.done) == 2
    (out / "a" / "half_written.wav").write_bytes((inputs / "a.wav").read_bytes())  # an output, no marker
    again = _run([str(inputs)], out)
    assert sorted(again.skipped) == sorted(first.done) and not again.done  # nothing new: no output taken as input
    assert [t for t, _ in _run([str(inputs)], out, also_written=(inputs / "sub",)).targets] == \
        [str(inputs / n) for n in ("a.wav", "bad.wav", "bug.wav")]  # another folder the command writes into
    # -o the scanned folder itself (or a folder above it): its recordings are still recordings
    assert [t for t, _ in _run([str(inputs / "sub")], inputs / "sub").targets] == [str(inputs / "sub" / "b.wav")]


def test_missing_inputs_create_no_folder_and_no_log(tmp_path, capsys):
    out = tmp_path / "out"
    s = _run([str(tmp_path / "nothing.wav"), str(tmp_path)], out)  # a missing file; a folder without audio
    assert s.exit_code == 1 and len(s.failed) == 2 and not out.exists()
    assert "no audio files in this folder" in capsys.readouterr().err


def test_printing_commands_get_their_lines_through_the_runner(inputs):
    stream = io.StringIO()
    s = run_batch([str(inputs)], None, make_worker=make_worker, worker_args=("y",), progress=False,
                  header="file\tmark", stream=stream, prefix="birdsep test: ")
    assert stream.getvalue().splitlines() == ["file\tmark", "a.wav\ty", "b.wav\ty"]
    assert s.exit_code == 1 and len(s.failed) == 2


def test_a_worker_waiting_for_a_file_lets_the_batch_end_it(monkeypatch):
    """Ctrl-C or SIGTERM to a -j worker: with a file in hand it stops that file (the batch cleans
    up and reports); waiting for one (in the pool's queue) it does nothing and prints nothing
    (was: a traceback from multiprocessing's queue; then: ending at once, which could hang the
    batch, see below): the batch ends it through the queue."""
    import signal
    import subprocess
    import sys

    from birdsep import batch
    from birdsep.errors import Terminated

    monkeypatch.setattr(batch, "_busy", True)
    with pytest.raises(Terminated):
        batch._stop_worker(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        batch._stop_worker(signal.SIGINT, None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        code = ("import os, signal, time; from birdsep import batch; "
                f"signal.signal({int(sig)}, batch._stop_worker); os.kill(os.getpid(), {int(sig)}); time.sleep(0.2); "
                "print('waiting')")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == "waiting\n" and r.stderr == ""


def timed_worker():
    """Work that takes as many seconds as the file's name says, and 2 s more to clean up when
    stopped (as a separation stops the thread working ahead of it)."""

    def work(path, target, progress):
        import time

        progress(0.0)
        try:
            time.sleep(float(path.stem))
        except KeyboardInterrupt:
            t0 = time.time()
            while time.time() - t0 < 2.0:
                time.sleep(0.01)
            raise
        return Done(0.0)

    return work


def test_sigterm_to_a_busy_and_an_idle_worker_ends_the_pool(tmp_path):
    """SIGTERM to every worker (a scheduler ending the job's process group), one busy and one
    waiting for a file: the busy one stops its file, and the pool ends. The waiting worker holds
    the pool queue's read lock: when it died on the signal, the pool was broken, its manager
    signalled the busy worker again in its clean-up, which then waited on the dead worker's
    lock forever, and the batch hung in its shutdown (seen in CI)."""
    import os
    import signal
    import threading
    import time

    from birdsep.batch import _Processes
    from birdsep.errors import Terminated

    pool = _Processes(2, timed_worker, (), threads=1)
    started = set()
    pool.submit(str(tmp_path / "0.wav"), None)
    pool.submit(str(tmp_path / "60.wav"), None)
    deadline = time.time() + 120
    results = []
    while (len(results) < 1 or str(tmp_path / "60.wav") not in started) and time.time() < deadline:
        results += pool.poll(0.1, lambda path, fraction: started.add(path))
    assert len(results) == 1 and str(tmp_path / "60.wav") in started  # one waits for work, one is busy
    time.sleep(0.5)
    for pid in list(pool.pool._processes):
        os.kill(pid, signal.SIGTERM)
    ended = threading.Thread(target=pool.__exit__, args=(Terminated, Terminated(), None), daemon=True)
    ended.start()
    ended.join(60)
    hung = ended.is_alive()
    if hung:  # leave no process behind
        for pid in list(pool.pool._processes):
            os.kill(pid, signal.SIGKILL)
    assert not hung


def test_a_signal_during_a_progress_put_stops_the_file_after_the_put(monkeypatch):
    """multiprocessing's queue is not safe to interrupt (a worker hung at exit, joining a feeder
    thread that was never told to stop): Ctrl-C or SIGTERM while a worker puts its progress is
    raised right after the put, which completes."""
    import signal as sig

    from birdsep import batch

    done = []

    class Queue:
        def put(self, item):
            if not done:
                batch._stop_worker(sig.SIGTERM, None)  # the signal lands inside the first put
            done.append(item)

    monkeypatch.setattr(batch, "_progress_queue", Queue())
    monkeypatch.setattr(batch, "_busy", True)
    with pytest.raises(batch.Terminated):
        batch._report("a.flac", 0.5)
    assert done == [("a.flac", 0.5)] and not batch._reporting and not batch._deferred
    batch._report("a.flac", 0.6)  # no signal: nothing raised
    with pytest.raises(batch.Terminated):  # outside a put it is raised at once
        batch._stop_worker(sig.SIGTERM, None)
