"""Bad input, odd numbers and failing storage: one clear line and a non-zero exit, never a
traceback or a hang (issue 29)."""
import shutil

import numpy as np
import pytest
import torch

from birdsep.cli import main
from birdsep.errors import UsageError
from birdsep.pretrained import MODELS
from birdsep.separation.model import Separator, SeparatorConfig, save_model

TINY = SeparatorConfig(num_coeffs=16, bottleneck=8, hidden=16, repeats=1, blocks=3)


def _damage(path, how: str) -> None:
    blob = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "bad-header":
        path.write_bytes((16).to_bytes(8, "little") + b'{"a": [1, 2, 3' + b" " * 100)


@pytest.fixture
def tiny_folder(tmp_path):
    torch.manual_seed(0)
    return save_model(Separator(TINY).eval(), tmp_path / "tiny")


@pytest.mark.parametrize("how", ["empty", "truncated", "random", "bad-header"])
def test_damaged_weights_are_one_line(tiny_folder, tmp_path, capsys, how):
    from birdsep.pretrained import load_model

    _damage(tiny_folder / "model.safetensors", how)
    with pytest.raises(UsageError, match="model.safetensors: damaged or unreadable weights file"):
        load_model(tiny_folder)
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(8000, np.float32), 16000)
    assert main(["separate", str(wav), "--model", str(tiny_folder), "-o", str(tmp_path / "out"), "-q"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged or unreadable weights file" in err
    log = tmp_path / "out" / "errors.log"
    assert not log.exists() or "Traceback" not in log.read_text()


def test_damaged_classifier_weights_are_one_line(tmp_path):
    from birdsep import files
    from birdsep.classification import model as cm

    folder = tmp_path / "clf"
    files.save_weights(folder, cm.KIND, {}, {"w": torch.zeros(2)})
    _damage(folder / "model.safetensors", "truncated")
    with pytest.raises(UsageError, match="damaged or unreadable weights file"):
        cm.load(folder)


def test_weights_of_another_shape_name_the_differences_in_one_line(tmp_path):
    from birdsep.pretrained import load_model

    folder = tmp_path / "mixed"
    shutil.copytree(MODELS / "separator_stft_m4", folder)
    shutil.copy(MODELS / "separator_stft_m8" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(UsageError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "\n" not in msg and "wrong shape" in msg and "do not fit" in msg and "(" in msg and "≠" in msg


# --------------------------------------------------------------------------- numbers and rates

SR = 22050


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Separator(TINY).eval()


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), -float("inf"), 0, -8000, 44100.5, 999, 10**7,
                                  "22050", None, True])
def test_api_refuses_a_bad_sample_rate_at_once(tiny, rate):
    import birdsep
    from birdsep.limits import InvalidValue

    x = np.zeros(4000, np.float32)
    with pytest.raises(InvalidValue, match="sample_rate must be"):
        birdsep.separate(x, rate, tiny, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="sample_rate must be"):  # InvalidValue is a ValueError too
        birdsep.classify(x, rate, _Silent(), mode="mix", device="cpu")


def test_api_takes_a_whole_float_rate_and_refuses_a_bad_output_rate(tiny):
    import birdsep

    y, rate = birdsep.separate(np.zeros(2205, np.float32), 22050.0, tiny, device="cpu", precision="fp32")
    assert rate == 22050 and isinstance(rate, int) and y.shape == (TINY.num_sources, 2205)
    with pytest.raises(ValueError, match="output_rate must be"):
        birdsep.separate(np.zeros(2205, np.float32), 22050, tiny, output_rate=float("nan"))


class _Silent:
    labels = ["Aaa aaa_A"]
    window_seconds, sample_rate, name = 1.0, SR, "silent"

    def predict(self, windows):
        return np.zeros((len(windows), 1), np.float32)


@pytest.mark.parametrize("kw, match", [({"window": 1e-9}, "window must be from 0.1"),
                                       ({"window": float("nan")}, "window must be a finite number"),
                                       ({"window": 1.0, "overlap": 0.95}, "overlap must leave at least 0.1 s"),
                                       ({"window": 1.0, "overlap": -1}, r"overlap must be in \[0, 1\)")])
def test_api_classify_window_bounds(kw, match):
    import birdsep

    with pytest.raises(ValueError, match=match):
        birdsep.classify(np.zeros(SR, np.float32), SR, _Silent(), mode="mix", device="cpu", **kw)


@pytest.mark.parametrize("block, message", [("0.001", "--block must be from 1 to 600, not 0.001"),
                                            ("1e9", "--block must be from 1 to 600, not 1e+09"),
                                            ("1e300", "--block must be from 1 to 600, not 1e+300")])
def test_block_out_of_bounds_is_one_line_before_any_work(tmp_path, capsys, block, message):
    assert main(["separate", str(tmp_path / "x.wav"), "-o", str(tmp_path / "out"), "--block", block]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"birdsep separate: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_tiny_window_is_refused_at_once(tmp_path, capsys):
    pred, truth = tmp_path / "pred.csv", tmp_path / "truth.csv"
    pred.write_text("file,start,end,species,confidence\na.wav,0,3,Aaa aaa,0.9\n")
    truth.write_text("file,start,end,species\na.wav,0,3,Aaa aaa\n")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--window", "1e-9"]) == 2
    assert capsys.readouterr().err.strip() == "birdsep evaluate: error: --window must be from 0.1 to 86400, not 1e-09"


def test_audio_whose_header_says_1_hz_is_refused(tmp_path):
    import soundfile as sf

    from birdsep import audio
    from birdsep.errors import AudioError

    path = tmp_path / "one_hz.wav"
    sf.write(path, np.zeros(32000, np.float32), 1, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"one_hz.wav: sample rate 1 Hz in its header is outside 1000–768000 Hz"):
        audio.info(path)


# --------------------------------------------------------------------------- a model that outputs NaN


def test_a_model_that_outputs_nan_fails_in_one_line_naming_it(tmp_path, capsys):
    import soundfile as sf

    import birdsep

    torch.manual_seed(0)
    model = Separator(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    folder = save_model(model, tmp_path / "nan_model")
    with pytest.raises(UsageError, match="the model's output is NaN or infinite"):
        birdsep.separate(np.ones(SR, np.float32) * 0.1, SR, model, device="cpu", precision="fp32")
    wav = tmp_path / "in.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1, SR)
    out = tmp_path / "out"
    assert main(["separate", str(wav), "--model", str(folder), "-o", str(out), "-q", "--precision", "fp32"]) != 0
    err = capsys.readouterr().err
    assert f"{folder}: the model's output is NaN or infinite" in err and "Traceback" not in err
    assert not list(out.rglob("source_*"))


# --------------------------------------------------------------------------- train-separator's checks


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr must be a finite number, not nan"),
    (["--lr", "-1"], "--lr must be above 0, not -1"),
    (["--clip-seconds", "0"], "--clip-seconds must be from 0.5 to 60, not 0"),
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--sources", "1"], "--sources must be at least 2 (MixIT splits a mixture of two mixtures), not 1"),
])
def test_train_separator_refuses_bad_numbers_before_any_work(tmp_path, capsys, flags, message):
    pytest.importorskip("lightning")
    run = tmp_path / "run"
    assert main(["train-separator", str(tmp_path), "-o", str(run), "--steps", "1", *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"birdsep train-separator: error: {message}"]
    assert not run.exists()


@pytest.mark.parametrize("flags, message", [(["--clip-seconds", "0"], "--clip-seconds must be from 0.5 to 60, not 0"),
                                            (["--threads", "0"], "--threads must be at least 1, not 0")])
def test_eval_separator_refuses_bad_numbers(tmp_path, capsys, flags, message):
    assert main(["eval-separator", str(tmp_path), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"birdsep eval-separator: error: {message}"]


# --------------------------------------------------------------------------- a full disk

import subprocess  # noqa: E402
import sys  # noqa: E402


def _in_tiny_tmpfs(tmp_path, command: str) -> subprocess.CompletedProcess:
    """Run ``command`` (sh) with a 1 MB tmpfs mounted at tmp_path/full, in a private user and
    mount namespace (no root needed where user namespaces are allowed); skips where they are not."""
    full = tmp_path / "full"
    full.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs as a full disk")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {full}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs as a full disk here (user or mount namespaces not allowed: "
                    f"{probe.stderr.strip()[:200]})")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {full} && {command}"],
                          capture_output=True, text=True, timeout=120)


def test_a_full_disk_while_writing_tracks_is_one_storage_line(tiny_folder, tmp_path):
    import soundfile as sf

    wav = tmp_path / "long.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(SR * 20) * 0.1).astype(np.float32), SR)
    out = tmp_path / "full" / "out"
    r = _in_tiny_tmpfs(tmp_path, f"{sys.executable} -m birdsep separate {wav} --model {tiny_folder} -o {out} "
                                 f"--format wav --bits 32 -q --precision fp32; echo rc=$?; cat {out}/errors.log")
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    assert "cannot be written: no space left on device" in r.stdout and "internal error" not in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_a_full_disk_while_writing_detections_is_one_storage_line(tiny_folder, tmp_path):
    """classify on a full disk: each file gets one 'no space left on device' line, no traceback,
    exit code 1, and no half-written table."""
    pytest.importorskip("ai_edge_litert", reason="needs the birdnet extra (BirdNET's model)")
    import soundfile as sf

    rng = np.random.default_rng(1)
    for k in range(2):
        sf.write(tmp_path / f"clip{k}.wav", (rng.standard_normal(SR * 6) * 0.1).astype(np.float32), SR)
    out = tmp_path / "full" / "out"
    full = tmp_path / "full"  # filled but for 64 KB: room for the batch's bookkeeping, not for the tables
    fill = (f"mkdir -p {out} && dd if=/dev/zero of={full}/room bs=4k count=16 2>/dev/null && "
            f"(dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null; true)")
    r = _in_tiny_tmpfs(tmp_path, f"{fill} && rm -f {full}/room && "
                                 f"{sys.executable} -m birdsep classify {tmp_path}/clip0.wav {tmp_path}/clip1.wav "
                                 f"--model {tiny_folder} -o {out} --min-conf 0 -q --precision fp32 -j 1; echo rc=$?; "
                                 f"find {out} -name '*.birdsep.*'")
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    assert "no space left on device" in r.stdout + r.stderr and "internal error" not in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert ".birdsep." not in r.stdout.split("rc=1", 1)[1]  # no table, whole or partial


def test_a_full_disk_before_the_first_checkpoint_does_not_promise_one(tmp_path):
    import errno

    from birdsep import training
    from birdsep.errors import StorageError

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "logs" / "metrics.csv"))

    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(StorageError, match="no checkpoint was written yet: free some space, then start the run again"):
        with training.resumable_writes(tmp_path / "checkpoints"):
            full()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(StorageError, match="the last checkpoint is intact"):
        with training.resumable_writes(tmp_path / "checkpoints"):
            full()


# --------------------------------------------------------------------------- the page's Host check


@pytest.mark.parametrize("host, ok", [("127.0.0.1:8000", True), ("localhost:8000", True), ("LOCALHOST", True),
                                      ("[::1]:8000", True), ("[0:0:0:0:0:0:0:1]", True), ("birds.lan:8000", True),
                                      ("192.0.2.7:8000", True), ("evil.example", False), ("evil.example:8000", False),
                                      ("[::1]evil.example", False), ("127.0.0.1.evil.example", False),
                                      ("[evil.example]", False), ("", False), ("127.0.0.1:8000/x", False),
                                      ("192.0.2.8:8000", False)])
def test_host_header_names_this_machine_only(host, ok):
    from birdsep.serve.app import _host_key, allowed_host_names, host_allowed

    allowed = frozenset(_host_key(h) for h in allowed_host_names("0.0.0.0", ["birds.lan"]))
    assert host_allowed(host, allowed, local_address="192.0.2.7") is ok


def test_serving_on_all_addresses_still_checks_the_host(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from birdsep.serve.app import ServeOptions, build

    (tmp_path / "rec").mkdir()
    app, jobs = build(ServeOptions(host="0.0.0.0", roots=[str(tmp_path / "rec")], out=str(tmp_path / "out"),
                                   classifiers=[], allowed_hosts=["birds.lan"]))
    try:
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        assert client.get("/api/config").status_code == 200
        assert client.get("/api/config", headers={"Host": "birds.lan:8000"}).status_code == 200
        for bad in ("evil.example", "evil.example:8000", "[::1]evil.example"):
            r = client.get("/api/config", headers={"Host": bad})
            assert r.status_code == 403 and "is not this server's address" in r.json()["detail"], bad
    finally:
        jobs.close()


def test_allowed_host_flag_reaches_the_server(monkeypatch):
    import birdsep.serve.app as app_module

    seen = {}
    monkeypatch.setattr(app_module, "serve", lambda opts: seen.setdefault("opts", opts) and 0)
    main(["serve", "--host", "0.0.0.0", "--allowed-host", "a.lan", "--allowed-host", "b.lan"])
    assert seen["opts"].allowed_hosts == ["a.lan", "b.lan"] and seen["opts"].host == "0.0.0.0"


# --------------------------------------------------------------------------- worker processes

import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402


def _children(pid: int) -> set[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        pytest.skip("pgrep is not installed")
    return {int(p) for p in out.split()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_parent_killed_with_sigkill(tiny_folder, tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for k in range(4):
        sf.write(tmp_path / "in" / f"{k}.wav", (rng.standard_normal(SR * 120) * 0.1).astype(np.float32), SR)
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-m", "birdsep", "separate", str(tmp_path / "in"), "--model",
                               str(tiny_folder), "-o", str(out), "-j", "2", "--threads", "1", "-q",
                               "--precision", "fp32"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.rglob("*.tmp")):  # the workers are at work
            time.sleep(0.2)
        assert list(out.rglob("*.tmp")), "the workers never started"
        workers = _children(parent.pid)
        assert workers
        parent.kill()
        parent.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "a worker outlived its parent by 5 s"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in workers | _children(parent.pid):
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_rerun_after_kill_9_leaves_no_stale_claims(tiny_folder, tmp_path):
    """A batch killed with ``kill -9`` leaves its lease and claims in OUT/.birdsep; the re-run
    takes over the file, clears the rest, and leaves the folder clean."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for k in range(2):
        sf.write(tmp_path / "in" / f"{k}.wav", (rng.standard_normal(SR * 30) * 0.1).astype(np.float32), SR)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "birdsep", "separate", str(tmp_path / "in"), "--model", str(tiny_folder), "-o",
           str(out), "--threads", "1", "-q", "--precision", "fp32"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.rglob("*.claim")):
            time.sleep(0.05)
            assert parent.poll() is None, parent.communicate()[1]
        parent.kill()
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
    assert list((out / ".birdsep").rglob("*")), "the killed run left its lease and claims"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / ".birdsep").exists(), sorted(map(str, (out / ".birdsep").rglob("*")))
    assert len(list(out.glob("*/separation.json"))) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_while_workers_start_prints_no_traceback(tiny_folder, tmp_path):
    import soundfile as sf

    (tmp_path / "in").mkdir()
    for k in range(3):
        sf.write(tmp_path / "in" / f"{k}.wav", np.zeros(SR * 2, np.float32), SR)
    parent = subprocess.Popen([sys.executable, "-m", "birdsep", "separate", str(tmp_path / "in"), "--model",
                               str(tiny_folder), "-o", str(tmp_path / "out"), "-j", "2", "--threads", "1", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2:  # the workers are starting (importing PyTorch)
            workers = {p for p in _children(parent.pid) if "resource_tracker" not in _cmdline(p)}
            time.sleep(0.05)
        assert workers, "no worker started"
        os.killpg(parent.pid, signal.SIGINT)  # a Ctrl-C in the terminal reaches the whole group
        out, err = parent.communicate(timeout=60)
        assert parent.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert err.strip().splitlines()[-1] == "birdsep separate: interrupted", err
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("stop, code", [("ctrl-c", 130), ("sigterm", 143), ("stopped-by-sigterm", 143),
                                        ("stopped-by-ctrl-c", 130)])
def test_exit_code_is_128_plus_the_signal(monkeypatch, capsys, stop, code):
    import birdsep.cli as cli
    from birdsep.errors import Stopped, Terminated

    raised = {"ctrl-c": KeyboardInterrupt(), "sigterm": Terminated(), "stopped-by-sigterm": Stopped(signum=15),
              "stopped-by-ctrl-c": Stopped()}[stop]

    def run(args):
        raise raised

    args = cli.build_parser().parse_args(["detect-activity", "x.wav"])
    args.func = run  # any command, stopped

    class Parser:
        def parse_args(self, argv):
            return args

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main(["detect-activity", "x.wav"]) == code
    err = capsys.readouterr().err
    assert ("interrupted" in err) is (stop in ("ctrl-c", "sigterm"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_ends_a_batch_with_exit_code_143(tiny_folder, tmp_path, jobs):
    """SIGTERM (``kill``, a scheduler, a container stopping) exits 128 + 15, as shells report
    it; Ctrl-C keeps 130. One line, no traceback, no temporary files left."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for k in range(3):
        sf.write(tmp_path / "in" / f"{k}.wav", (rng.standard_normal(SR * 120) * 0.1).astype(np.float32), SR)
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-m", "birdsep", "separate", str(tmp_path / "in"), "--model",
                               str(tiny_folder), "-o", str(out), "-j", str(jobs), "--threads", "1", "-q",
                               "--precision", "fp32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.rglob("*.tmp")):  # at work
            time.sleep(0.1)
            assert parent.poll() is None, parent.communicate()[1]
        os.killpg(parent.pid, signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 143, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "birdsep separate: interrupted", err
        assert not list(out.rglob("*.tmp"))
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- permissions


def test_unreadable_file_and_folder_are_reported_as_such(tmp_path):
    import shutil as sh

    import soundfile as sf

    wav, locked = tmp_path / "a.wav", tmp_path / "locked"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    locked.mkdir()
    sf.write(locked / "b.wav", np.zeros(SR, np.float32), SR)
    wav.chmod(0)
    locked.chmod(0)
    prefix = []
    if os.geteuid() == 0:  # root reads everything: drop its override
        if sh.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux), which drops root's override of permissions")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
        probe = subprocess.run([*prefix, "cat", str(wav)], capture_output=True, text=True)
        if probe.returncode == 0 or "Permission denied" not in probe.stderr:
            locked.chmod(0o755)
            wav.chmod(0o644)
            pytest.skip("setpriv cannot drop root's override of permissions here "
                        f"({probe.stderr.strip()[:200] or 'the file could still be read'})")
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "birdsep", "detect-activity", str(wav), str(locked)],
                           capture_output=True, text=True, timeout=60)
    finally:
        locked.chmod(0o755)
        wav.chmod(0o644)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"{locked}: permission denied (this folder cannot be listed)" in r.stderr
    assert f"{wav}: permission denied (this file cannot be read)" in r.stderr
