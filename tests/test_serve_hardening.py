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
