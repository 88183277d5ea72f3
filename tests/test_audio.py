"""Audio and file helpers: channel layouts, tracks quantised to what the file holds, atomic writes."""
import os

import numpy as np
import pytest
import soundfile as sf

from birdsep import audio, files
from birdsep.errors import UsageError


def test_layout_is_detected_when_unambiguous_and_refused_otherwise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4000)).astype(np.float32)  # (C, T)
    mono = x.mean(0)
    close = dict(rtol=0, atol=1e-6)  # the same mean, summed in another order
    np.testing.assert_allclose(audio.to_mono(x, "auto"), mono, **close)
    np.testing.assert_allclose(audio.to_mono(x.T, "auto"), mono, **close)  # soundfile.read's (T, C)
    np.testing.assert_allclose(audio.to_mono(x.T), mono, **close)  # files are read channels last
    np.testing.assert_array_equal(audio.to_mono(x[0], "auto"), x[0])
    square = rng.standard_normal((40, 60))
    with pytest.raises(ValueError, match="layout='channels_first'"):
        audio.to_mono(square, "auto")
    np.testing.assert_allclose(audio.to_mono(square, "channels_first"), square.mean(0), **close)
    with pytest.raises(ValueError):
        audio.to_mono(np.zeros((2, 2, 2)), "auto")


@pytest.mark.parametrize("fmt,bits", [("flac", 16), ("flac", 24), ("wav", 16), ("wav", 24), ("wav", 32)])
def test_track_writer_returns_exactly_what_the_file_holds(tmp_path, fmt, bits):
    rng = np.random.default_rng(1)
    x = np.clip(0.3 * rng.standard_normal(5000), -0.99, 0.99).astype(np.float32)
    x[:2] = [1.2, -1.5]  # beyond full scale
    path = tmp_path / f"t.{fmt}"
    with audio.TrackWriter(path, 16000, fmt, bits) as w:
        stored = np.concatenate([w.write(x[:1234]), w.write(x[1234:])])
    back, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and sf.info(path).subtype == audio.TRACK_SUBTYPES[fmt][bits]
    np.testing.assert_array_equal(back, stored)  # bit for bit
    if bits == 32:
        np.testing.assert_array_equal(stored, x)
        assert w.clipped == 0
    else:
        assert w.clipped == 2 and stored[0] == 1 - 2.0 ** (1 - bits) and stored[1] == -1  # clipped to full scale
        step = 2.0 ** (1 - bits)
        assert np.abs(stored[2:] - x[2:]).max() <= step / 2 + 1e-9


def test_track_format_choices():
    audio.check_track_format("wav", 32)
    with pytest.raises(UsageError, match="needs --format wav"):
        audio.check_track_format("flac", 32)
    with pytest.raises(UsageError):
        audio.check_track_format("mp3", 16)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with files.atomic(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and not list(target.parent.iterdir())
    files.write_text(target, "whole")
    assert target.read_text() == "whole" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_output_the_file_system_refuses_is_one_line_naming_it(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from birdsep.errors import StorageError

    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    with pytest.raises(StorageError, match=r"notes.txt: cannot be written: it is a file, not a folder$"):
        files.make_folder(blocker)
    with pytest.raises(StorageError, match=r"notes.txt/out: cannot be written: .*notes.txt is a file, not a folder$"):
        files.make_folder(blocker / "out")
    with pytest.raises(StorageError, match=r"x.json: cannot be written: .*notes.txt is a file, not a folder$"):
        files.write_json(blocker / "sub" / "x.json", {})
    assert files.file_in_the_way(blocker / "a" / "b") is not None and files.file_in_the_way(tmp_path / "new") is None
    assert blocker.read_text() == "mine" and files.make_folder(tmp_path / "a" / "b").is_dir()

    def refused(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(StorageError, match=r"c: cannot be written: permission denied$"):
        files.make_folder(tmp_path / "c")
    monkeypatch.undo()
    # anything else is not the user's to fix, and is not hidden behind one line
    assert files.storage_error(tmp_path, ValueError("a bug")) is None
    assert files.storage_error(tmp_path, OSError(errno.EIO, "Input/output error")) is None


def test_list_files_and_missing_inputs(tmp_path):
    (tmp_path / "l.txt").write_text("a\n# note\n\nb  # why\na\n")
    assert files.read_list(tmp_path / "l.txt", "list") == ["a", "b"]
    with pytest.raises(UsageError, match="cannot read list"):
        files.read_list(tmp_path / "none.txt", "list")
    with pytest.raises(UsageError, match="no such file or folder"):
        files.find_audio([tmp_path / "none.wav"])
    assert files.output_path(tmp_path / "in" / "a" / "b.wav", tmp_path / "in", tmp_path / "out") == \
        tmp_path / "out" / "a" / "b"


def test_folder_scans_leave_separated_tracks_out(tmp_path):
    for name in ("site/a.wav", "site/separated/a/source_1.flac", "site/separated/a/high_band.flac",
                 "site/separated/b/source_1.flac", "site/sub/c.WAV"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "site/separated/a/separation.json").write_text("{}")  # b: not finished, still audio to a scan
    found = [f.relative_to(tmp_path).as_posix() for f, _ in files.find_audio([tmp_path / "site"])]
    assert found == ["site/a.wav", "site/separated/b/source_1.flac", "site/sub/c.WAV"]
    named = tmp_path / "site/separated/a/source_1.flac"
    assert files.find_audio([named]) == [(named, named.parent)]  # a file named on its own is taken


def test_the_temporary_files_of_one_target_are_removed_and_no_others(tmp_path):
    target = tmp_path / "site" / "x"
    target.mkdir(parents=True)
    for name in ("x/.source_1.flac.ab12.tmp", ".x.birdsep.results.csv.cd34.tmp", ".xy.birdsep.results.csv.ef56.tmp",
                 "x/source_2.flac"):
        (tmp_path / "site" / name).write_bytes(b"")
    files.remove_temps_of(target)
    left = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*") if p.is_file())
    assert left == [".xy.birdsep.results.csv.ef56.tmp", "x/source_2.flac"]


def test_amount_reads_in_the_unit_of_the_total():
    assert audio.amount(4.24, 10.0) == "4.2/10.0 s"
    assert audio.amount(90.0, 720.0) == "1.5/12.0 min"
    assert audio.amount(900.0, 5400.0) == "0.25/1.50 h"
    assert audio.amount(7200.0) == "2.00 h" and audio.amount(0.0) == "0.0 s"


def test_ahead_yields_in_order_raises_the_threads_error_and_stops_when_left():
    """audio.ahead: the same items in the same order, made in a thread at most depth ahead; the
    thread's exception is raised in the caller as itself; a caller that stops early stops it."""
    import threading

    made = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise audio.AudioError("x.flac", "cannot decode audio (a broken frame)")
            made.append(i)
            yield np.full(3, i)

    assert [int(x[0]) for x in audio.ahead(items(7))] == list(range(7))
    got = []
    with pytest.raises(audio.AudioError, match="broken frame"):
        for x in audio.ahead(items(7, fail_at=4)):
            got.append(int(x[0]))
    assert got == [0, 1, 2, 3]
    made.clear()
    stream = audio.ahead(items(1000), depth=2)
    assert int(next(stream)[0]) == 0
    stream.close()  # the caller stops: the thread ends without making the rest
    assert len(made) <= 5 and not any(t.name == "birdsep-ahead" for t in threading.enumerate())


def test_resampling_several_channels_gives_each_channel_alone():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 22050)).astype(np.float32)
    y = audio.resample(x, 22050, 48000)
    assert y.shape == (2, 3, 48000) and y.dtype == np.float32 and y.flags.c_contiguous
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(y[i, j], audio.resample(x[i, j], 22050, 48000))
    assert audio.resample(x[:, :, ::2], 22050, 32000).shape == (2, 3, 16000)  # strided input
    assert audio.resample(np.zeros((0, 100), np.float32), 16000, 32000).shape == (0, 200)
