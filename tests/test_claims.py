"""Claims on the files of an output folder: two runs never work on one file, a dead run's claims
are taken over, a run leaves the folder as it found it; and the batch runner's use of them
(waiting for another run's file, retrying files whose worker died)."""
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from birdsep import batch, claims
from birdsep.batch import Done, Lost, run_batch
from birdsep.claims import BUSY, FAILED, MINE, Claims


def test_one_run_per_file_and_failed_files_stay_marked(tmp_path):
    target = tmp_path / "out" / "a" / "b"
    with Claims(tmp_path / "out") as a, Claims(tmp_path / "out") as b:
        assert a.take(target) == MINE and a.take(target) == MINE
        assert b.take(target) == BUSY
        a.failed(target, "b.wav: cannot read audio")
        assert b.take(target) == FAILED  # not retried, not logged twice, while a lives
        a.release(target)
        assert b.take(target) == MINE and a.take(target) == BUSY
    assert not (tmp_path / "out" / ".birdsep").exists()  # both runs gone: nothing left behind


def test_a_failure_is_not_retried_by_a_run_that_overlapped_it_but_by_a_later_one(tmp_path):
    out = tmp_path / "out"
    with Claims(out) as overlapping:
        with Claims(out) as failing:
            failing.take(out / "bad")
            failing.failed(out / "bad", "bad.wav: cannot read audio")
        assert overlapping.take(out / "bad") == FAILED  # the failing run has ended: its mark stays
    assert [p.name for p in (out / ".birdsep" / "claims").iterdir()] == [failing.path(out / "bad").name]
    with Claims(out) as later:
        assert later.take(out / "bad") == MINE  # a re-run tries it again
    assert not (out / ".birdsep").exists()


def test_claims_of_a_dead_run_are_taken_over(tmp_path):
    out = tmp_path / "out"
    with Claims(out) as a, Claims(out) as b:
        assert a.take(out / "x") == MINE and a.take(out / "y") == MINE
        old = time.time() - claims.LEASE - 1
        os.utime(a.lease, (old, old))  # a stopped refreshing its lease (its machine died)
        assert b.take(out / "x") == MINE
        a.lease.unlink()  # a's lease gone altogether
        assert b.take(out / "y") == MINE
        a.release(out / "x")  # a comes back to life and lets go of x: b's claim on it stays
        assert b.path(out / "x").exists() and a.take(out / "x") == BUSY
    with Claims(out) as c:
        c.pid = 2 ** 22 + 12345  # its claims name a process of this host that does not exist: a killed run
        c.take(out / "z")
        with Claims(out) as d:
            assert d.take(out / "z") == MINE  # at once, though c's lease is fresh


def _inputs(tmp_path, n=3):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(n):
        sf.write(folder / f"f{k}.wav", np.zeros(800, np.float32), 8000)
    return folder


def make_worker(tag: str):
    def work(path, target, progress):
        target.mkdir(parents=True, exist_ok=True)
        (target / "done").write_text(tag)
        return Done(0.1)

    return work


def _run(folder, out, **kw):
    return run_batch([str(folder)], out, make_worker=make_worker, worker_args=("me",),
                     target_for=lambda f, root: out / f.stem, is_done=lambda t: (t / "done").is_file(),
                     progress=False, **kw)


def test_a_file_another_run_works_on_is_left_to_it(tmp_path, monkeypatch):
    """The other run holds f1 and finishes it a moment later: this run waits, does not redo it,
    and counts it as done by another run."""
    monkeypatch.setattr(batch, "LOOK_AGAIN", 0.2)
    folder, out = _inputs(tmp_path), tmp_path / "out"
    other = Claims(out).__enter__()
    assert other.take(out / "f1") == MINE

    def finish_later():
        time.sleep(1.0)
        (out / "f1").mkdir(parents=True)
        (out / "f1" / "done").write_text("other")
        other.release(out / "f1")

    thread = threading.Thread(target=finish_later)
    thread.start()
    s = _run(folder, out)
    thread.join()
    other.__exit__(None, None, None)
    assert sorted(s.done) == [str(folder / "f0.wav"), str(folder / "f2.wav")] and s.others == [str(folder / "f1.wav")]
    assert (out / "f1" / "done").read_text() == "other" and not (out / ".birdsep").exists()


def test_a_stale_claim_does_not_block_a_run(tmp_path):
    folder, out = _inputs(tmp_path), tmp_path / "out"
    dead = Claims(out).__enter__()
    dead.take(out / "f0")
    dead.lease.unlink()  # its run died without cleaning up
    s = _run(folder, out)
    assert len(s.done) == 3 and not s.others and (out / "f0" / "done").read_text() == "me"


class _Flaky:
    """An executor whose worker dies under the first ``deaths`` files it is given."""

    def __init__(self, deaths: int):
        self.deaths, self.next = deaths, None

    free = property(lambda self: int(self.next is None))
    busy = property(lambda self: self.next is not None)

    def submit(self, path, target):
        self.next = (path, target)

    def poll(self, timeout, progress):
        (path, target), self.next = self.next, None
        if self.deaths:
            self.deaths -= 1
            return [Lost(path, "its worker was lost")]
        return [batch.guarded(make_worker("retry"), path, target, lambda f: None)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("deaths, given_up", [(2, 0), (3, 1)])
def test_files_of_dead_workers_are_retried_then_given_up(tmp_path, monkeypatch, capsys, deaths, given_up):
    monkeypatch.setattr(batch, "_executor", lambda *a: _Flaky(deaths))
    folder, out = _inputs(tmp_path, 1), tmp_path / "out"
    s = _run(folder, out)
    err = capsys.readouterr().err
    assert err.count("trying it again") == min(deaths, batch.MAX_TRIES - 1)
    assert len(s.failed) == given_up and len(s.done) == 1 - given_up
    if given_up:
        assert "its worker was lost (3 times); given up" in (out / "errors.log").read_text()


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
    out = tmp_path / "out"
    with Claims(out) as a:
        a.take(out / "x")
        record = claims._read(a.path(out / "x"))
        assert record["pid_start"] == claims.process_start(os.getpid()) or record["pid_start"] is None
        if record["pid_start"] is None:
            pytest.skip("process start times are not known here (no /proc)")
        with Claims(out) as b:
            assert b.take(out / "x") == BUSY
            assert not b.alive(a.run, a.host, a.pid, record["pid_start"] + 1)  # the same pid, another process


def _killed_run(out, *targets, pid=2 ** 22 + 12345):
    """What a run killed with ``kill -9`` leaves: its lease, a claim per target and a failed mark."""
    dead = Claims(out).__enter__()
    dead._stop.set()
    dead.pid = pid  # a process of this host that no longer exists
    files_of = {}
    for t in targets:
        dead.take(t)
        files_of[t] = dead.path(t)
    dead.take(out / "bad")
    dead.failed(out / "bad", "bad.wav: cannot read audio")
    claims.files.write_json(dead.lease, dead._lease_record())
    return dead, files_of


def test_a_rerun_clears_what_a_killed_run_left(tmp_path):
    """Issue 29: a run killed with ``kill -9`` left its lease and claims; the next run clears
    them at its start, those of files it does not redo too, and leaves nothing behind."""
    folder, out = _inputs(tmp_path), tmp_path / "out"
    (out / "f0").mkdir(parents=True)
    (out / "f0" / "done").write_text("before")  # finished by the killed run, claim not yet released
    dead, left = _killed_run(out, out / "f0", out / "f1")
    assert dead.lease.exists() and all(c.exists() for c in left.values())
    s = _run(folder, out)
    assert sorted(s.done) == [str(folder / "f1.wav"), str(folder / "f2.wav")] and s.skipped == [str(folder / "f0.wav")]
    assert not dead.lease.exists() and not any(c.exists() for c in left.values())
    assert [p.name for p in (out / ".birdsep" / "claims").iterdir()] == [dead.path(out / "bad").name]  # a failed mark stays
    assert [p.name for p in (out / ".birdsep").iterdir()] == ["claims"]


def test_a_rerun_with_nothing_left_to_do_still_clears_them(tmp_path):
    folder, out = _inputs(tmp_path), tmp_path / "out"
    assert len(_run(folder, out).done) == 3
    dead, left = _killed_run(out, out / "f2")
    s = _run(folder, out)
    assert len(s.skipped) == 3 and not dead.lease.exists() and not any(c.exists() for c in left.values())


def test_the_claims_of_a_live_run_survive_anothers_start(tmp_path):
    out = tmp_path / "out"
    with Claims(out) as a:
        a.take(out / "x")
        with Claims(out) as b:
            assert a.lease.exists() and a.path(out / "x").exists() and b.take(out / "x") == BUSY
