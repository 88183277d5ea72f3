"""`birdsep serve`'s HTTP API: status codes, path traversal, upload limits, shared jobs, and
one real recording through separation into the page's results (FastAPI's TestClient)."""
import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from birdsep.errors import AudioError, UsageError  # noqa: E402
from birdsep.serve.app import ServeOptions, build, create_app  # noqa: E402
from birdsep.serve.jobs import JobManager  # noqa: E402
from birdsep.serve.library import Library  # noqa: E402
from birdsep.serve.media import Media  # noqa: E402

SR = 22050
LOCAL = "http://127.0.0.1:8000"  # what a browser on this machine sends as Host
REPO = Path(__file__).resolve().parents[1]


def _wav(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    x = 0.1 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 2 * t) > 0) + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), SR)
    return path


@pytest.fixture
def tree(tmp_path):
    """root/ with recordings, a symlink inside, one leading out, a text file and a broken WAV."""
    root = tmp_path / "recordings"
    _wav(root / "dawn.wav", 2.0)
    _wav(root / "site b" / "night.wav", 1.0, seed=1)
    (root / "notes.txt").write_text("not audio")
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    secret = _wav(tmp_path / "outside" / "secret.wav")
    os.symlink(secret, root / "link_out.wav")
    os.symlink(root / "dawn.wav", root / "alias.wav")
    return root


def _client(tree, tmp_path, **kw) -> TestClient:
    app, jobs = build(ServeOptions(roots=[str(tree)], out=str(tmp_path / "out"), classifiers=[], **kw))
    client = TestClient(app, base_url=LOCAL)
    client.jobs = jobs
    return client


def _wait_done(client, rid, timeout=120.0, **settings):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = client.get("/api/status", params={"id": rid, **settings}).json()
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.1)
    raise AssertionError(f"{rid} not done after {timeout} s: {s}")


def test_config_offers_the_shipped_separators_and_the_cli_defaults(tree, tmp_path):
    from birdsep.detect import ClassifyOptions
    from birdsep.pretrained import DEFAULT_SEPARATOR, shipped_separators

    c = _client(tree, tmp_path).get("/api/config").json()
    assert [s["name"] for s in c["separators"]] == [s["name"] for s in shipped_separators()]
    assert c["separators"][0]["default"] and c["separators"][0]["name"] == DEFAULT_SEPARATOR.name
    assert c["defaults"]["mode"] == ClassifyOptions().mode and c["defaults"]["min_conf"] == ClassifyOptions().min_conf
    assert c["defaults"]["classifier"] is None and c["classifiers"] == []  # none asked for
    run = tmp_path / "runs" / "my_classifier"
    run.mkdir(parents=True)
    library = Library.create([tree], tmp_path / "out", classifiers=[str(run)])
    assert library.classifiers == {"my_classifier": str(run)} and library.defaults.classifier == "my_classifier"
    with pytest.raises(UsageError):
        Library.create([tree], tmp_path / "out", classifiers=[str(tmp_path / "nope")])
    assert [r["label"] for r in c["roots"]] == ["recordings", "example", "uploads"]
    assert c["example"] == "example/jura_forest_dawn.flac"


def test_the_page_and_its_assets_are_served_locally(tree, tmp_path):
    client = _client(tree, tmp_path)
    page = client.get("/").text
    assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")  # nothing from elsewhere
    for asset in ("app.js", "view.js", "mixer.js", "api.js", "style.css", "vendor/wavesurfer/wavesurfer.esm.js",
                  "vendor/wavesurfer/plugins/regions.esm.js", "vendor/wavesurfer/plugins/timeline.esm.js",
                  "vendor/wavesurfer/LICENSE"):
        assert client.get(f"/static/{asset}").status_code == 200, asset
    assert client.get("/static/../app.py").status_code == 404


@pytest.mark.parametrize("rid, code", [
    ("../etc/passwd", 403),
    ("recordings/../../etc/passwd", 403),
    ("recordings/./dawn.wav", 403),
    ("/etc/passwd", 403),
    ("C:/Windows/win.ini", 403),
    ("recordings\\..\\outside\\secret.wav", 403),
    ("recordings/link_out.wav", 403),  # a symlink out of the root
    ("recordings/notes.txt", 403),
    ("recordings//dawn.wav", 403),
    ("nowhere/dawn.wav", 404),
    ("recordings/missing.wav", 404),
    ("recordings/site b", 404),
    ("recordings", 404),
    ("", 403),
])
def test_paths_outside_the_roots_are_refused_everywhere(tree, tmp_path, rid, code):
    client = _client(tree, tmp_path)
    for method, path, extra in [("post", "/api/open", {}), ("get", "/api/status", {}), ("get", "/api/audio", {}),
                                ("get", "/api/result", {}), ("get", "/api/spectrogram", {}),
                                ("get", "/api/download", {"what": "picture"})]:
        r = getattr(client, method)(path, params={"id": rid, **extra})
        assert r.status_code == code, (path, rid, r.status_code, r.text)
        assert "detail" in r.json() and "root:" not in r.text  # one line, never a file's content
    assert client.get("/api/jobs").json() == []  # nothing was started


def test_encoded_traversal_is_refused_after_decoding(tree, tmp_path):
    client = _client(tree, tmp_path)
    r = client.get("/api/audio?id=recordings%2F..%2F..%2Foutside%2Fsecret.wav")
    assert r.status_code == 403 and "refused" in r.json()["detail"]


def test_a_symlink_inside_the_root_is_fine(tree, tmp_path):
    client = _client(tree, tmp_path)
    r = client.get("/api/audio", params={"id": "recordings/alias.wav"})
    assert r.status_code == 200 and r.content == (tree / "dawn.wav").read_bytes()


def test_bad_choices_are_400_with_one_line(tree, tmp_path):
    client = _client(tree, tmp_path)
    rid = {"id": "recordings/dawn.wav"}
    for params in ({"separator": "nope"}, {"classifier": "nope"}, {"mode": "loud"}, {"min_conf": 2},
                   {"scale": "weird"}, {"range_db": 1}, {"width": 1}):
        r = client.get("/api/status" if "scale" not in params and "width" not in params and "range_db" not in params
                       else "/api/spectrogram", params={**rid, **params})
        assert r.status_code in (400, 409), (params, r.text)
        assert "\n" not in r.json()["detail"]
    assert client.get("/api/status", params={**rid, "separator": "nope"}).status_code == 400
    assert client.get("/api/result", params=rid).status_code == 409  # not processed yet


def test_birdnet_location_filter_is_a_setting(tree, tmp_path):
    """The page's BirdNET choice takes classify's --lat/--lon/--week: checked as on the command
    line, kept apart in its own detections folder, and handed to the detector."""
    if not _birdnet():
        pytest.skip("needs the birdnet extra (BirdNET's metadata model)")
    from birdsep.serve.work import Worker

    app, jobs = build(ServeOptions(roots=[str(tree)], out=str(tmp_path / "out"), classifiers=["birdnet"]))
    client = TestClient(app, base_url=LOCAL)
    c = client.get("/api/config").json()
    assert c["classifiers"] == [{"label": "birdnet", "kind": "birdnet", "location": True}]
    assert (c["defaults"]["lat"], c["defaults"]["lon"], c["defaults"]["week"]) == (None, None, -1)
    rid = {"id": "recordings/dawn.wav"}
    for bad in ({"lat": 200, "lon": 7.6}, {"lat": 47.5, "lon": 7.6, "week": 53}, {"lat": 47.5}):
        r = client.get("/api/status", params={**rid, **bad})
        assert r.status_code == 400 and "\n" not in r.json()["detail"], (bad, r.text)
    assert client.get("/api/status", params={**rid, "lat": 47.5, "lon": 7.6, "week": 20}).status_code == 200
    jobs.close()

    library = Library.create([tree], tmp_path / "out", classifiers=["birdnet"])
    rec = library.resolve("recordings/dawn.wav")
    located = library.settings(lat=47.5, lon=7.6, week=20)
    assert (located.lat, located.lon, located.week) == (47.5, 7.6, 20)
    assert library.settings() == library.defaults and library.settings(classifier="none", lat=47.5, lon=7.6).lat is None
    assert library.detections_base(rec, located) != library.detections_base(rec, library.defaults)
    detector = Worker(library, device="cpu", precision="fp32", threads=1)._detector(located)
    assert (detector.opts.lat, detector.opts.lon, detector.opts.week) == (47.5, 7.6, 20)
    assert 50 < detector.keep.sum() < len(detector.classifier.labels) / 2  # the filter is on
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    trained = Library.create([tree], tmp_path / "out", classifiers=[str(run)])
    with pytest.raises(UsageError, match="needs BirdNET"):
        trained.settings(lat=47.5, lon=7.6)


def test_combine_is_a_setting_from_the_cli_definition(tree, tmp_path):
    """The page offers classify's modes and --combine rules from their one definition, checks
    them as the command line does, keeps a rule's results in their own detections folder (in the
    pooling mode only) and hands the rule, and the separator it already loaded, to the detector."""
    from birdsep.classification import model as M
    from birdsep.combination import RULES
    from birdsep.detect import ClassifyOptions
    from birdsep.modes import MODES, POOLED
    from birdsep.serve.work import Worker

    client = _client(tree, tmp_path)
    c = client.get("/api/config").json()
    assert c["modes"] == list(MODES) and c["rules"] == list(RULES) and c["pooled_mode"] == POOLED
    assert c["defaults"]["combine"] == ClassifyOptions().combine
    rid = {"id": "recordings/dawn.wav"}
    r = client.get("/api/status", params={**rid, "combine": "loudest"})
    assert r.status_code == 400 and "choose from default, max" in r.json()["detail"]
    assert client.get("/api/status", params={**rid, "combine": "max"}).json()["settings"]["combine"] == "max"
    client.jobs.close()

    cfg = M.ClassifierConfig(species=("european_robin", "blackcap"), genus=("Erithacus", "Sylvia"),
                             family=("Muscicapidae", "Sylviidae"), order=("Passeriformes",))
    M.save(M.Ensemble(cfg), tmp_path / "runs" / "mine")
    library = Library.create([tree], tmp_path / "out", classifiers=[str(tmp_path / "runs" / "mine")])
    rec = library.resolve("recordings/dawn.wav")
    paper = library.settings(combine="max")
    assert paper.combine == "max" and "combine" not in library.defaults.to_dict()  # the default: folders as before
    assert library.detections_base(rec, paper) != library.detections_base(rec, library.defaults)
    assert library.settings(mode="mix", combine="max") == library.settings(mode="mix")  # nothing pooled: the same
    worker = Worker(library, device="cpu", precision="fp32", threads=1)
    detector = worker._detector(paper)
    assert detector.opts.combine == "max" and detector.rule is RULES["max"]
    model, rt = worker._separator(paper)
    assert detector.separator is model and detector.rt is rt  # loaded once, settled once


def test_upload_limit(tree, tmp_path):
    client = _client(tree, tmp_path, max_upload_mb=0.01)  # 10 kB
    big = io.BytesIO()
    sf.write(big, np.zeros(20000, np.float32), SR, format="WAV")
    r = client.post("/api/upload", params={"name": "big.wav"}, content=big.getvalue())
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the server counts as it reads
        data = big.getvalue()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    r = client.post("/api/upload", params={"name": "big.wav"}, content=chunks())
    assert r.status_code == 413
    assert not list((tmp_path / "out").rglob("big.wav"))


def test_unreadable_uploads_get_a_clear_message_and_the_server_goes_on(tree, tmp_path):
    client = _client(tree, tmp_path)
    r = client.post("/api/upload", params={"name": "broken.wav"}, content=b"RIFF....not really a wav" * 50)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("broken.wav: cannot read audio")
    assert str(tmp_path) not in r.json()["detail"] and ".tmp" not in r.json()["detail"]
    r = client.post("/api/upload", params={"name": "../../evil.exe"}, content=b"MZ" * 100)
    assert r.status_code == 422 and "not an audio file birdsep reads" in r.json()["detail"]
    r = client.post("/api/upload", params={"name": "empty.wav"}, content=b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert client.get("/api/config").status_code == 200
    uploads = tmp_path / "out" / "birdsep-serve" / "uploads" / "files"
    assert not [p for p in uploads.rglob("*") if p.is_file()]  # nothing left behind


def test_uploads_are_stored_once_by_content(tree, tmp_path):
    client = _client(tree, tmp_path)
    data = (tree / "dawn.wav").read_bytes()
    a = client.post("/api/upload", params={"name": "my dawn (1).wav"}, content=data).json()
    b = client.post("/api/upload", params={"name": "my dawn (1).wav"}, content=data).json()
    assert a == b and a["id"].startswith("uploads/") and a["name"] == "my dawn _1_.wav"
    assert client.get("/api/audio", params={"id": a["id"]}).content == data
    listed = client.get("/api/library", params={"root": "uploads"}).json()["recordings"]
    assert [r["id"] for r in listed] == [a["id"]]


def _fake_app(tree, tmp_path, work):
    library = Library.create([tree], tmp_path / "out", classifiers=[])
    jobs = JobManager(work, lambda rec, s: ("separating",))
    return TestClient(create_app(library, jobs, Media(tmp_path / "cache"), 10 ** 6)), jobs


def test_requests_must_name_this_machine_and_come_from_this_page(tree, tmp_path):
    """Served on loopback, a request whose Host is another name (a site's DNS name pointed at
    127.0.0.1) is refused, and so is a POST sent from another site's page."""
    library = Library.create([tree], tmp_path / "out", classifiers=[])
    jobs = JobManager(lambda job: None, lambda rec, s: ())
    app = create_app(library, jobs, Media(tmp_path / "cache"), 10 ** 6, allowed_hosts=("127.0.0.1", "localhost"))
    here = TestClient(app, base_url="http://127.0.0.1:8000")
    assert here.get("/api/config").status_code == 200
    r = TestClient(app, base_url="http://attacker.example:8000").get("/api/config")
    assert r.status_code == 403 and "refused" in r.json()["detail"]
    rid = {"id": "recordings/dawn.wav"}
    assert here.post("/api/open", params=rid, headers={"Origin": "http://attacker.example"}).status_code == 403
    assert here.post("/api/open", params=rid, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    jobs.close()


def test_a_second_tab_gets_the_same_job(tree, tmp_path):
    release, calls = threading.Event(), []

    def work(job):
        calls.append(job.key)
        job.begin("separating")
        job.progress(0.5)
        release.wait(10)

    client, jobs = _fake_app(tree, tmp_path, work)
    rid = {"id": "recordings/dawn.wav"}
    first = client.post("/api/open", params=rid).json()
    second = client.post("/api/open", params=rid).json()
    assert first["job"] == second["job"] and first["state"] in ("queued", "running")
    deadline = time.time() + 5
    while client.get("/api/status", params=rid).json()["state"] != "running" and time.time() < deadline:
        time.sleep(0.02)
    s = client.get("/api/status", params=rid).json()
    assert s["stage"] == "separating" and s["percent"] == 50.0
    other = client.post("/api/open", params={**rid, "min_conf": 0.5}).json()  # other settings: another job
    assert other["job"] != first["job"]
    release.set()
    jobs.close()
    assert len(calls) == 2
    assert sorted(j["job"] for j in client.get("/api/jobs").json()) == sorted([first["job"], other["job"]])


def test_a_failing_job_reports_one_line_and_the_server_goes_on(tree, tmp_path):
    def work(job):
        if job.recording.path.name == "dawn.wav":
            raise AudioError(job.recording.path, "cannot decode audio (broken frame)")
        raise RuntimeError("boom")

    client, jobs = _fake_app(tree, tmp_path, work)
    client.post("/api/open", params={"id": "recordings/dawn.wav"})
    client.post("/api/open", params={"id": "recordings/site b/night.wav"})
    jobs.close()
    a = client.get("/api/status", params={"id": "recordings/dawn.wav"}).json()
    b = client.get("/api/status", params={"id": "recordings/site b/night.wav"}).json()
    assert a["state"] == "failed" and a["error"].endswith("dawn.wav: cannot decode audio (broken frame)")
    assert b["state"] == "failed" and b["error"] == "internal error (RuntimeError: boom)"
    assert client.get("/api/config").status_code == 200


def test_job_progress_and_time_left():
    from birdsep.serve.jobs import Job

    job = Job("1", ("r", None), None, None, stages=("separating", "classifying"))
    assert job.to_dict()["percent"] == 0.0
    job.state = "running"
    job.begin("separating", "loading the separator")
    assert job.to_dict()["note"] == "loading the separator" and job.to_dict()["eta_s"] is None
    job.begin("separating")
    job.stage_started -= 10  # ten seconds in
    job.progress(0.25)
    d = job.to_dict()
    assert d["percent"] == 12.5 and abs(d["eta_s"] - 30.0) < 0.5
    job.begin("classifying")
    job.progress(0.5)
    assert job.to_dict()["percent"] == 75.0


def test_a_recording_through_separation_to_the_page(tree, tmp_path):
    """The real work on a 2 s recording (separation only): progress, then the result, audio
    with range requests, pictures, downloads; results sit where `birdsep separate` puts them."""
    from PIL import Image

    client = _client(tree, tmp_path)
    rid = {"id": "recordings/dawn.wav"}
    first = client.post("/api/open", params=rid).json()
    assert first["state"] in ("queued", "running") and first["stages"] == ["separating"]
    assert _wait_done(client, rid["id"])["state"] == "done"
    folder = tmp_path / "out" / "separated" / "dawn"  # birdsep separate ROOT's layout
    assert (folder / "separation.json").is_file() and (folder / "separation.png").is_file()

    res = client.get("/api/result", params=rid).json()
    m = 4
    assert [t["id"] for t in res["tracks"]] == ["mix"] + [f"source_{k}" for k in range(1, m + 1)]
    import json

    meta = json.loads((folder / "separation.json").read_text())
    assert [t["level_db"] for t in res["tracks"][1:]] == [s["level_db"] for s in meta["sources"]]
    assert res["detections"] == [] and res["classifier"] is None

    r = client.get("/api/audio", params={**rid, "track": "source_2"}, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100
    full = client.get("/api/audio", params={**rid, "track": "source_2"}).content
    assert full == (folder / meta["sources"][1]["file"]).read_bytes()
    assert client.get("/api/audio", params={**rid, "track": "../dawn"}).status_code == 404

    png = client.get("/api/spectrogram", params={**rid, "view": "combined"})
    img = Image.open(io.BytesIO(png.content))
    assert png.headers["content-type"] == "image/png" and img.size[1] == 257  # a 512-point STFT
    zoomed = Image.open(io.BytesIO(client.get("/api/spectrogram", params={
        **rid, "view": "source_1", "start": 0.5, "end": 1.0, "width": 400}).content))
    assert zoomed.size[1] == img.size[1] and zoomed.size[0] >= 40  # read again at full resolution
    scale = client.get("/api/scale", params=rid).json()
    assert scale["mode"] == "background" and scale["top_db"] > scale["floor_db"]

    wav = client.get("/api/download", params={**rid, "what": "track", "track": "source_1", "format": "wav"})
    assert "dawn_source_1.wav" in wav.headers["content-disposition"]
    flac = client.get("/api/download", params={**rid, "what": "track", "track": "source_1", "format": "flac"})
    a, _ = sf.read(io.BytesIO(wav.content), dtype="float32")
    b, _ = sf.read(io.BytesIO(flac.content), dtype="float32")
    assert np.max(np.abs(a - np.clip(b, -1, 1))) < 1e-6 + 2 ** -23 * 2
    z = zipfile.ZipFile(io.BytesIO(client.get("/api/download", params={**rid, "what": "tracks", "format": "flac"}).content))
    assert sorted(z.namelist()) == [f"dawn/source_{k}.flac" for k in range(1, m + 1)]
    assert client.get("/api/download", params={**rid, "what": "picture"}).content[:4] == b"\x89PNG"
    assert client.get("/api/download", params={**rid, "what": "raven"}).status_code == 409  # no classifier

    listed = {r["id"]: r for r in client.get("/api/library", params={"root": "recordings"}).json()["recordings"]}
    assert set(listed) == {"recordings/dawn.wav", "recordings/alias.wav", "recordings/broken.wav",
                           "recordings/site b/night.wav"}  # no symlink out, no text file
    assert listed["recordings/dawn.wav"]["separated"] and not listed["recordings/site b/night.wav"]["separated"]
    assert listed["recordings/broken.wav"]["duration"] is None


def test_results_of_the_command_line_open_at_once(tmp_path, monkeypatch):
    """`birdsep separate ROOT` and `birdsep classify ROOT --classifier birdnet` in the folder
    `birdsep serve --root ROOT` runs from: the page finds their results, no job starts."""
    from birdsep.cli import main

    root = tmp_path / "field"
    _wav(root / "site b" / "night.wav", 1.0)
    monkeypatch.chdir(tmp_path)
    assert main(["separate", str(root), "-q"]) == 0  # → ./separated/site b/night/
    base = tmp_path / "detections" / "site b" / "night"  # as `birdsep classify field` names it
    base.parent.mkdir(parents=True)
    rows = "file,start,end,species,confidence,channel\nx,0,1,Turdus merula_Eurasian Blackbird,0.9,source_2\n"
    Path(str(base) + ".birdsep.results.csv").write_text(rows)
    for suffix in (".birdsep.selection.table.txt", ".birdsep.labels.txt"):
        Path(str(base) + suffix).write_text("")
    classifiers = ["birdnet"] if _birdnet() else []
    app, jobs = build(ServeOptions(roots=[str(root)], out=".", classifiers=classifiers))
    client = TestClient(app, base_url=LOCAL)
    rid = {"id": "field/site b/night.wav"}
    s = client.post("/api/open", params=rid).json()
    assert s["state"] == "done" and s["job"] is None and client.get("/api/jobs").json() == []
    res = client.get("/api/result", params=rid).json()
    assert len(res["tracks"]) == 5
    if classifiers:
        d = res["detections"][0]
        assert (d["common"], d["scientific"], d["track"]) == ("Eurasian Blackbird", "Turdus merula", "source_2")
        listed = client.get("/api/library", params={"root": "field"}).json()["recordings"]
        assert [r["detections"] for r in listed] == [1]
    jobs.close()


def _birdnet() -> bool:
    from birdsep.serve.library import birdnet_available

    return birdnet_available()


def test_cli_serve_prints_its_address_and_listens_on_loopback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "birdsep", "serve", "--port", "0", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("birdsep serve: http://127.0.0.1:")
        address = line.split()[2]
        import httpx

        assert httpx.get(address + "api/config", timeout=10).json()["roots"][0]["label"] == "example"
        port = int(address.rstrip("/").rsplit(":", 1)[1])
        busy = subprocess.run([sys.executable, "-m", "birdsep", "serve", "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=60)
        assert busy.returncode == 2 and busy.stderr.count("\n") == 1 and "cannot listen" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "birdsep", "serve", "--root", str(tmp_path / "nope")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "notes.txt").write_text("mine")
    bad = subprocess.run([sys.executable, "-m", "birdsep", "serve", "--out", str(tmp_path / "notes.txt")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is a file, not a folder" in bad.stderr


def test_two_formats_of_one_recording_keep_results_of_their_own(tmp_path):
    """x.wav beside x.flac: the page names their results as `birdsep separate ROOT` does."""
    root = tmp_path / "field"
    _wav(root / "x.wav", 1.0)
    _wav(root / "x.flac", 1.0, seed=1)
    _wav(root / "y.wav", 1.0)
    lib = Library.create([root], tmp_path / "out", classifiers=[])
    s = lib.defaults
    folders = {n: lib.separated_dir(lib.resolve(f"field/{n}"), s).name for n in ("x.wav", "x.flac", "y.wav")}
    assert folders == {"x.wav": "x.wav", "x.flac": "x.flac", "y.wav": "y"}
    assert lib.detections_base(lib.resolve("field/x.wav"), s) != lib.detections_base(lib.resolve("field/x.flac"), s)


def test_results_kept_inside_the_root_are_not_listed_as_recordings(tmp_path):
    """`birdsep serve --root . ` run where the results go (the default -o .): the library lists
    the recordings, not the separated tracks nor the page's own folder."""
    root = tmp_path / "field"
    _wav(root / "dawn.wav", 1.0)
    track = root / "separated" / "dawn"
    _wav(track / "source_1.wav", 1.0)
    (track / "separation.json").write_text("{}")
    _wav(root / "birdsep-serve" / "uploads" / "files" / "0a" / "up.wav", 1.0)
    lib = Library.create([root], root, classifiers=[])
    assert [r["id"] for r in lib.listing("field", lib.defaults)] == ["field/dawn.wav"]
