"""The page under abuse (issue 29): an upload the client abandons, and what the page hands out
naming no absolute server path."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
SR = 22050


def _wav(path: Path, seconds: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32), SR)
    return path


def _up(port: int, proc) -> None:
    """Wait until the server accepts connections (it prints its address before it listens)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    raise AssertionError("the server never listened")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_an_upload_the_client_abandons_is_one_line_and_leaves_nothing(tmp_path):
    """Headers and half the body, then the client goes away: one log line, no traceback, no
    partial file in the uploads folder or the temporary folder, and the server goes on."""
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "birdsep", "serve", "--port", "0", "--out", str(out),
                             "--max-upload-mb", "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("birdsep serve: http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
        _up(port, proc)
        body = (b"RIFF" + bytes(range(256)) * 64) * 1024  # 16 MB: more than is kept in memory
        for size in (len(body), 1 << 20):  # spooled to a temporary file, and kept in memory
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"POST /api/upload?name=half.wav HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode())
                s.sendall(body[: size // 2])
                time.sleep(0.5)
            time.sleep(1.0)
        import httpx

        base = f"http://127.0.0.1:{port}/"
        assert httpx.get(base + "api/config", timeout=10).status_code == 200  # the server goes on
        wav = _wav(tmp_path / "whole.wav")
        r = httpx.post(base + "api/upload", params={"name": "whole.wav"}, content=wav.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err and "internal error" not in err and "ClientDisconnect" not in err, err
    assert err.count("upload abandoned by the client") == 2, err
    uploads = [f for f in _files(out) if "uploads" in f]
    assert len(uploads) == 1 and uploads[0].endswith("whole.wav"), _files(out)
    assert _files(tmp) == [], "no partial upload left in the temporary folder"


def test_downloads_name_no_absolute_server_path(tmp_path, monkeypatch):
    """separation.json and the detection tables handed out by the page name a recording by its
    id (``root label/relative path``), a model by its name, and nothing by where the server
    keeps it (issue 29); the files on disk are left as the command line wrote them."""
    from fastapi.testclient import TestClient

    from birdsep.cli import main
    from birdsep.outputs import Detection, paths_of, write_outputs
    from birdsep.serve.app import ServeOptions, build
    from birdsep.serve.library import SERVE_RTYPES, birdnet_available

    root = tmp_path / "field"
    wav = _wav(root / "site b" / "night.wav")
    monkeypatch.chdir(tmp_path)
    assert main(["separate", str(root), "-q"]) == 0  # → ./separated/site b/night/
    on_disk = (tmp_path / "separated" / "site b" / "night" / "separation.json").read_text()
    assert str(tmp_path) in on_disk  # the command line's record keeps its absolute paths
    classifiers = ["birdnet"] if birdnet_available() else []
    if classifiers:  # tables as `birdsep classify field --classifier birdnet` writes them
        base = tmp_path / "detections" / "site b" / "night"
        write_outputs(base, [Detection(str(wav), 0.0, 1.0, "Turdus merula_Eurasian Blackbird", 0.9, "source_2")],
                      SERVE_RTYPES)
        assert str(tmp_path) in paths_of(base, ("csv",))["csv"].read_text()
    app, jobs = build(ServeOptions(roots=[str(root)], out=".", classifiers=classifiers))
    try:
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        rid = {"id": "field/site b/night.wav"}
        assert client.post("/api/open", params=rid).json()["state"] == "done"
        r = client.get("/api/download", params={**rid, "what": "json"})
        assert r.status_code == 200 and "night_separation.json" in r.headers["content-disposition"]
        meta = json.loads(r.content)
        assert meta["input_resolved"] == "field/site b/night.wav" and meta["model"] == "separator_stft_m4", meta
        assert meta["sources"] == json.loads(on_disk)["sources"]
        texts = {"json": r.text}
        for what in ("csv", "raven", "audacity") if classifiers else ():
            r = client.get("/api/download", params={**rid, "what": what})
            assert r.status_code == 200, r.text
            texts[what] = r.text
        if classifiers:
            assert "field/site b/night.wav" in texts["csv"] and "field/site b/night.wav" in texts["raven"]
        for what, text in texts.items():
            for secret in (str(tmp_path), str(Path.home()), str(REPO)):
                assert secret not in text, (what, secret, text)
    finally:
        jobs.close()


def test_public_paths():
    from birdsep.pretrained import MODELS
    from birdsep.serve.library import Library

    lib = Library.create([str(REPO / "tests")], "/srv/birdsep-out", [])
    home = str(Path.home())
    assert lib.public(f"{REPO}/tests/a b/x.wav,0.5") == "tests/a b/x.wav,0.5"
    assert lib.public(f'"{REPO}/tests"') == '"tests"'
    assert lib.public(f"{REPO}/tests2/x.wav") == "x.wav"  # another folder: its last part only
    assert lib.public(f"{MODELS}/separator_stft_m4") == "separator_stft_m4"
    assert lib.public("/srv/birdsep-out/separated/x/source_1.flac") == "separated/x/source_1.flac"
    assert lib.public(f"delete {home}/.cache/birdsep/c.json to measure again") == \
        "delete ~/.cache/birdsep/c.json to measure again"
    assert lib.public("see https://example.org/a/b and 3/4 of 10 s") == "see https://example.org/a/b and 3/4 of 10 s"
    assert lib.public_json({"a": ["/opt/x y/z.wav", 1, None]}) == {"a": ["z.wav", 1, None]}
