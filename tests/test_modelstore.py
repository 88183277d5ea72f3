"""birdsep models download / import (birdsep.modelstore): Google's bird MixIT checkpoints served by
a local HTTP server on 127.0.0.1 (the pins replaced by the fixtures' sizes and sha256), checked,
resumed, converted by a stand-in converter and installed; each failure one line, no model left
behind. Nothing here reaches the internet: the default URL of every test is a closed local port."""
import dataclasses
import errno
import hashlib
import http.server
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from birdsep import audio, modelstore, pretrained
from birdsep.cli import main
from birdsep.errors import StorageError, UsageError
from birdsep.modelstore import DownloadError
from birdsep.separation.model import Separator, load_separator, preset, save_model

M4, M8 = "bird_mixit_m4", "bird_mixit_m8"
SIZES = {"inference.meta": 3_001, ".index": 517, ".data-00000-of-00001": 200_003}


def _fixture_bytes(model: str, pin: modelstore.Pin) -> bytes:
    """Seeded stand-ins for the published files (the index starts with a mark the fake converter checks)."""
    size = next(n for suffix, n in SIZES.items() if pin.name.endswith(suffix))
    rng = np.random.default_rng(zlib.crc32(f"{model}/{pin.name}".encode()))
    head = b"FAKE-INDEX " + model.encode() if pin.name.endswith(".index") else b""
    return head + rng.integers(0, 256, size - len(head), dtype=np.uint8).tobytes()


#: model name -> file name -> bytes (the real file names, small contents)
FIXTURES = {name: {pin.name: _fixture_bytes(name, pin) for pin in m.files} for name, m in modelstore.PUBLISHED.items()}


def _pins(name: str) -> modelstore.Published:
    real = modelstore.PUBLISHED[name]
    return dataclasses.replace(real, files=tuple(
        modelstore.Pin(p.name, len(FIXTURES[name][p.name]), hashlib.sha256(FIXTURES[name][p.name]).hexdigest())
        for p in real.files))


CONVERTED: list[tuple] = []
REAL_CONVERTER = modelstore.converter  # the lookup of birdsep.separation.architectures.bird_mixit.convert


def fake_convert(checkpoint_dir, out_dir, *, name):
    """Stands in for birdsep.separation.architectures.bird_mixit.convert: refuses a checkpoint
    without the fixture's mark, else writes a small real birdsep separator."""
    model = modelstore.PUBLISHED[name]
    index = (checkpoint_dir / model.checkpoint[0].name).read_bytes()
    assert (checkpoint_dir / model.checkpoint[1].name).is_file()
    if not index.startswith(b"FAKE-INDEX " + name.encode()):
        raise UsageError(f"{checkpoint_dir}: variables do not match the bird MixIT graph")
    assert not out_dir.exists() or not any(out_dir.iterdir())
    torch.manual_seed(0)
    save_model(Separator(preset("small", num_sources=model.sources)), out_dir)
    (out_dir / "card.json").write_text(json.dumps({"source": "test", "checkpoint_step": model.step}))
    CONVERTED.append((name, checkpoint_dir))
    return out_dir


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """A private model folder, the fixtures' pins, the fake converter, and a closed local port as URL."""
    monkeypatch.setenv("BIRDSEP_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("BIRDSEP_MODELS_URL", "http://127.0.0.1:9")
    for name in FIXTURES:
        monkeypatch.setitem(modelstore.PUBLISHED, name, _pins(name))
    monkeypatch.setattr(modelstore, "converter", lambda: fake_convert)
    CONVERTED.clear()
    return tmp_path / "models"


class Files(http.server.BaseHTTPRequestHandler):
    """GET with Range (bytes=N-); a path in ``drop`` is cut halfway on its first request; with
    ``no_length`` the body's end is the connection's (HTTP/1.0)."""

    def do_GET(self):  # noqa: N802 - the http.server name
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path in srv.status:
            self.send_error(srv.status[self.path])
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        ask = self.headers.get("Range")
        if ask:
            start = int(ask.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if not srv.no_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if self.path in srv.drop:
            srv.drop.discard(self.path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """The fixtures served at http://127.0.0.1:PORT/<subdir>/<file>; $BIRDSEP_MODELS_URL points there."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    srv.files = {f"/{modelstore.PUBLISHED[name].subdir}/{f}": blob for name, d in FIXTURES.items() for f, blob in d.items()}
    srv.requests, srv.drop, srv.status, srv.no_length = [], set(), {}, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("BIRDSEP_MODELS_URL", f"http://127.0.0.1:{srv.server_address[1]}/")
    yield srv
    srv.shutdown()
    srv.server_close()


def _data_path(name=M4):
    m = modelstore.PUBLISHED[name]
    return f"/{m.subdir}/{m.checkpoint[1].name}"


def _nothing_installed(models, name=M4):
    assert not (models / name).exists()
    assert not list(models.glob(".*.tmp")), "no work folder left"


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


# ----------------------------------------------------------------------------- download


def test_download_checks_converts_installs_and_resolves_by_name(server, store):
    folder, fresh = modelstore.download(M4, progress=False)
    assert fresh and folder == store / M4 and pretrained.resolve(M4) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    card = json.loads((folder / "card.json").read_text())
    assert card["checkpoint_step"] == 3223090 and card["licence"] == "Apache-2.0"
    assert card["installed"]["files"]["model.ckpt-3223090.index"]["sha256"] == modelstore.PUBLISHED[M4].files[1].sha256
    assert not (store / ".downloads" / M4).exists(), "the checkpoint files go once the model is installed"
    assert [n for n, _ in CONVERTED] == [M4]
    assert {p for p, _ in server.requests} == {f"/output_sources4/{f}" for f in FIXTURES[M4]}
    # found by name everywhere --model is taken, and named by name in what is recorded
    assert pretrained.portable(folder) == M4 and pretrained.shipped(M4) == folder
    entry = next(m for m in pretrained.shipped_separators() if m["name"] == M4)
    assert entry["where"] == "installed" and entry["sources"] == 4 and not entry["default"]
    assert pretrained.load_model(M4).config.num_sources == 4
    # installed: nothing fetched again unless --force
    server.requests.clear()
    assert modelstore.download(M4, progress=False) == (folder, False) and server.requests == []
    before = (folder / "model.safetensors").stat().st_ino
    assert modelstore.download(M4, force=True, progress=False) == (folder, True)
    assert (folder / "model.safetensors").stat().st_ino != before and len(CONVERTED) == 2
    assert not list(store.glob(".*.tmp"))


def test_interrupted_download_resumes_with_only_the_rest(server, store, capsys):
    data = FIXTURES[M4][modelstore.PUBLISHED[M4].checkpoint[1].name]
    server.drop.add(_data_path())
    assert main(["models", "download", M4, "-q"]) == 2
    line = _one_line(capsys)
    assert "download interrupted at" in line and "run the same command again" in line and _data_path() in line
    _nothing_installed(store)
    part = store / ".downloads" / M4 / (modelstore.PUBLISHED[M4].checkpoint[1].name + ".part")
    half = len(data) // 2
    assert part.stat().st_size == half and part.read_bytes() == data[:half]

    server.requests.clear()
    assert main(["models", "download", M4, "-q"]) == 0
    assert server.requests == [(_data_path(), f"bytes={half}-")], "only the rest of the cut file is asked for"
    assert pretrained.resolve(M4) == store / M4 and not part.exists()


def test_a_server_that_ignores_the_range_starts_the_file_again(server, store, monkeypatch):
    name = modelstore.PUBLISHED[M4].checkpoint[1].name
    part = store / ".downloads" / M4 / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not the file's first bytes: a server without Range replaces it
    monkeypatch.setattr(Files, "do_GET", _without_range(Files.do_GET))
    modelstore.download(M4, progress=False)
    assert (store / M4 / "model.safetensors").is_file()


def _without_range(get):
    def do_GET(self):  # noqa: N802
        if "Range" in self.headers:
            del self.headers["Range"]
        get(self)
    return do_GET


def test_wrong_checksum_is_deleted_and_nothing_installed(server, store, capsys):
    blob = bytearray(server.files[_data_path()])
    blob[1000] ^= 0xFF
    server.files[_data_path()] = bytes(blob)
    assert main(["models", "download", M4, "-q"]) == 2
    line = _one_line(capsys)
    assert "sha256" in line and "is not the published" in line and "nothing installed" in line
    _nothing_installed(store)
    assert not list((store / ".downloads" / M4).glob("*.data-*")), "a file that is not the published one is deleted"
    assert CONVERTED == []


def test_wrong_size_is_refused(server, store, capsys):
    server.files[_data_path()] += b"extra"
    assert main(["models", "download", M4, "-q"]) == 2
    line = _one_line(capsys)
    assert f"the server has {200_008} bytes, the published file {200_003}" in line
    _nothing_installed(store)
    assert not list((store / ".downloads" / M4).glob("*.data-*"))


def test_more_bytes_than_published_without_a_length_is_refused(server, store):
    server.no_length = True
    server.files[_data_path()] += b"extra"
    with pytest.raises(DownloadError, match="longer than the published file"):
        modelstore.download(M4, progress=False)
    assert not list((store / ".downloads" / M4).glob("*.data-*"))
    _nothing_installed(store)


def test_a_damaged_part_left_complete_is_checked_as_a_download(server, store):
    name = modelstore.PUBLISHED[M4].checkpoint[1].name
    part = store / ".downloads" / M4 / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(FIXTURES[M4][name][:-1] + b"x")  # the right size, the wrong bytes
    with pytest.raises(DownloadError, match="sha256"):
        modelstore.download(M4, progress=False)
    assert not part.exists()
    _nothing_installed(store)


@pytest.mark.parametrize("code", [404, 500, 403])
def test_http_errors_are_one_line(server, store, capsys, code):
    server.status[_data_path()] = code
    assert main(["models", "download", M4, "-q"]) == 2
    line = _one_line(capsys)
    assert f"HTTP {code}" in line and _data_path() in line
    if code == 404:
        assert "BIRDSEP_MODELS_URL" in line
    _nothing_installed(store)


def test_no_server_is_one_line(store, capsys):
    assert main(["models", "download", M8, "-q"]) == 2  # the closed port of the fixture
    assert "cannot connect" in _one_line(capsys)
    _nothing_installed(store, M8)


def test_disk_full_while_downloading_then_resumed(server, store, monkeypatch, capsys):
    real = modelstore._write
    calls = []

    def full(out, chunk):
        calls.append(len(chunk))
        if len(calls) >= 3:  # the first two files fit, the third does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(out, chunk)

    monkeypatch.setattr(modelstore, "_write", full)
    assert main(["models", "download", M4, "-q"]) == 2
    line = _one_line(capsys)
    assert "no space left on device" in line and ".part" in line and "run the same command again" in line
    _nothing_installed(store)
    monkeypatch.setattr(modelstore, "_write", real)
    assert main(["models", "download", M4, "-q"]) == 0
    assert pretrained.resolve(M4) == store / M4


def test_disk_full_while_converting_leaves_no_model(server, store, monkeypatch):
    def full(checkpoint_dir, out_dir, *, name):
        fake_convert(checkpoint_dir, out_dir, name=name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(modelstore, "converter", lambda: full)
    with pytest.raises(StorageError, match="no space left on device"):
        modelstore.download(M4, progress=False)
    _nothing_installed(store)
    assert sorted(p.name for p in (store / ".downloads" / M4).iterdir()) == sorted(FIXTURES[M4]), \
        "the checked files stay for the next call"
    server.requests.clear()
    monkeypatch.setattr(modelstore, "converter", lambda: fake_convert)
    modelstore.download(M4, progress=False)
    assert server.requests == [] and pretrained.resolve(M4) == store / M4


def test_not_enough_space_is_refused_up_front(server, store, monkeypatch):
    monkeypatch.setattr(modelstore.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(StorageError, match="to download, 1000 bytes free"):
        modelstore.download(M4, progress=False)
    assert server.requests == []


def test_one_install_at_a_time(server, store):
    fcntl = pytest.importorskip("fcntl")
    lock = store / ".downloads" / f"{M4}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="another birdsep is installing it"):
            modelstore.download(M4, progress=False)
    _nothing_installed(store)


def test_unknown_names_list_the_known_ones(store, capsys):
    assert main(["models", "download", "bird_mixit_m5"]) == 2
    assert "bird_mixit_m4, bird_mixit_m8" in _one_line(capsys)
    assert main(["separate", "x.flac", "--model", M4]) == 2
    assert f"birdsep models download {M4}" in _one_line(capsys)
    with pytest.raises(UsageError, match="known names: separator_stft_m4.*bird_mixit_m8 \\(to download\\)"):
        pretrained.resolve("nosuch")


def test_no_converter_is_one_line(server, store, monkeypatch):
    monkeypatch.setattr(modelstore, "CONVERTER", "birdsep.no_such_module_here")
    monkeypatch.setattr(modelstore, "converter", REAL_CONVERTER)
    with pytest.raises(UsageError, match="cannot convert bird MixIT checkpoints"):
        modelstore.download(M4, progress=False)
    _nothing_installed(store)


def test_models_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BIRDSEP_MODELS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert modelstore.models_dir() == tmp_path / "xdg" / "birdsep" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert modelstore.models_dir() == tmp_path / "home" / ".local" / "share" / "birdsep" / "models"
    monkeypatch.delenv("BIRDSEP_MODELS_URL")
    assert modelstore.base_url() == modelstore.BASE_URL


# ----------------------------------------------------------------------------- import


def _checkpoint_folder(folder, name=M4, files=None):
    folder.mkdir(parents=True, exist_ok=True)
    for f, blob in FIXTURES[name].items():
        if files is None or f in files:
            (folder / f).write_bytes(blob)
    return folder


def test_import_converts_the_users_files_and_leaves_them_as_they_are(store, tmp_path, capsys):
    given = _checkpoint_folder(tmp_path / "fetched", files=[p.name for p in modelstore.PUBLISHED[M4].checkpoint])
    (given / "notes.txt").write_text("from a friend")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in given.iterdir()}
    assert main(["models", "import", str(given)]) == 0
    assert f"{M4}: installed in {store / M4}" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in given.iterdir()} == before
    assert pretrained.resolve(M4) == store / M4
    name, seen = CONVERTED[0]
    assert seen != given and not seen.exists(), "the converter saw links in a work folder, since removed"
    assert not list(store.glob(".*.tmp"))
    card = json.loads((store / M4 / "card.json").read_text())
    assert card["installed"]["how"] == "birdsep models import"
    assert main(["models", "import", str(given)]) == 0
    assert "already installed" in capsys.readouterr().out


def test_import_of_the_buckets_layout_installs_both(store, tmp_path):
    root = tmp_path / "bird_mixit_model_checkpoints"
    for name, m in modelstore.PUBLISHED.items():
        _checkpoint_folder(root / m.subdir, name)
    done = modelstore.import_checkpoints(root)
    assert [(n, fresh) for n, _, fresh in done] == [(M4, True), (M8, True)]
    assert load_separator(pretrained.resolve(M8)).config.num_sources == 8


def test_import_refuses_other_files_in_one_line(store, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.ckpt-100.index").write_bytes(b"another model")
    assert main(["models", "import", str(empty)]) == 2
    assert "not a published bird MixIT checkpoint: expected model.ckpt-3223090.index" in _one_line(capsys)

    assert main(["models", "import", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in _one_line(capsys)

    index_only = _checkpoint_folder(tmp_path / "index_only", files=["model.ckpt-3223090.index"])
    assert main(["models", "import", str(index_only)]) == 2
    assert "model.ckpt-3223090.data-00000-of-00001: missing" in _one_line(capsys)

    changed = _checkpoint_folder(tmp_path / "changed")
    data = changed / "model.ckpt-3223090.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1] + b"!")
    assert main(["models", "import", str(changed)]) == 2
    assert "sha256" in _one_line(capsys) and data.read_bytes().endswith(b"!")

    data.write_bytes(b"short")
    assert main(["models", "import", str(changed)]) == 2
    assert "5 bytes, not the published bird_mixit_m4 file" in _one_line(capsys)
    _nothing_installed(store)
    assert CONVERTED == []


def test_a_checkpoint_the_converter_refuses_leaves_nothing(store, tmp_path, monkeypatch, capsys):
    """Files with the pinned sizes and sha256 that the converter still refuses (its one line)."""
    given = _checkpoint_folder(tmp_path / "fetched")
    index = given / "model.ckpt-3223090.index"
    index.write_bytes(b"NOT-A-MARK " + index.read_bytes()[len(b"NOT-A-MARK "):])
    pins = modelstore.PUBLISHED[M4]
    monkeypatch.setitem(modelstore.PUBLISHED, M4, dataclasses.replace(pins, files=tuple(
        dataclasses.replace(p, sha256=hashlib.sha256(index.read_bytes()).hexdigest()) if p.name == index.name else p
        for p in pins.files)))
    assert main(["models", "import", str(given)]) == 2
    assert "variables do not match the bird MixIT graph" in _one_line(capsys)
    _nothing_installed(store)


# ----------------------------------------------------------------------------- listing and use


def test_listing_says_shipped_installed_or_to_download(server, store, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(M4))
    assert "to download" in row and "3223090 steps" in row
    assert next(line for line in out.splitlines() if line.startswith("separator_stft_m4")).split()[2] == "shipped"
    assert str(store) in out
    modelstore.download(M4, progress=False)
    assert main(["models"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(M4)]
    assert len(rows) == 1 and rows[0].split()[1] == "installed"


@pytest.mark.slow
def test_end_to_end_download_then_separate_by_name(server, store, tmp_path, capsys, monkeypatch):
    """The local server serves a real TensorFlow checkpoint of the bird MixIT graph (the
    reduced-size fixture written by google-research/sound-separation's code, tests/fixtures):
    downloaded, checked, converted by the real converter, installed, then used by name."""
    fixture = Path(__file__).parent / "fixtures" / "bird_mixit" / "small_m4"
    real = modelstore.PUBLISHED[M4]
    blobs = {p.name: (fixture / p.name).read_bytes() if p in real.checkpoint else FIXTURES[M4][p.name]
             for p in real.files}
    monkeypatch.setitem(modelstore.PUBLISHED, M4, dataclasses.replace(real, files=tuple(
        modelstore.Pin(p.name, len(blobs[p.name]), hashlib.sha256(blobs[p.name]).hexdigest()) for p in real.files)))
    server.files.update({f"/{real.subdir}/{name}": blob for name, blob in blobs.items()})
    monkeypatch.setattr(modelstore, "converter", REAL_CONVERTER)
    assert main(["models", "download", M4, "-q"]) == 0
    assert f"--model {M4} uses it" in capsys.readouterr().out
    card = json.loads((store / M4 / "card.json").read_text())
    assert card["checkpoint_step"] == 3223090 and card["licence"] == "Apache-2.0"
    out = tmp_path / "separated"
    assert main(["separate", str(pretrained.EXAMPLE_RECORDING), "-o", str(out), "--model", M4, "-q"]) == 0
    folder = out / pretrained.EXAMPLE_RECORDING.stem
    meta = json.loads((folder / "separation.json").read_text())
    assert meta["model"].endswith(M4) and meta["model_config"]["num_sources"] == 4
    assert meta["model_config"]["architecture"] == "bird-mixit"
    names = [s["file"] for s in meta["sources"]] + ([meta["high_band"]] if meta["high_band"] else [])
    tracks = [sf.read(folder / f, dtype="float32")[0] for f in names]
    x, sr = audio.load(pretrained.EXAMPLE_RECORDING)
    assert len(meta["sources"]) == 4 and meta["output_sample_rate"] == sr
    np.testing.assert_allclose(np.sum(tracks, axis=0), x, atol=2e-4)
