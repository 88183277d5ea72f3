"""train-separator on several processes (DDP over gloo, on the CPU): two devices on one
machine, killed with kill -9 and resumed to the exact step; two "nodes" on loopback. Each
process's batches and checkpoint writes are recorded by tests/ddp_probe.py."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
PROBE = Path(__file__).with_name("ddp_probe.py")
FAST = ["--preset", "small", "--clip-seconds", "1", "--batch-size", "2", "--threads", "1", "--accelerator", "cpu",
        "--strategy", "ddp", "-q"]


def command(data_dir, run, *extra):
    train = [data_dir / "xc" / "veery", data_dir / "xc" / "wood_thrush"]
    return [sys.executable, str(PROBE), "train-separator", *map(str, train), "--out", str(run), *FAST, *map(str, extra)]


def environ(probe: Path, **extra) -> dict:
    probe.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "BIRDSEP_PROBE": str(probe), "OMP_WAIT_POLICY": "PASSIVE", **extra}


def steps(probe: Path, rank: int) -> dict[int, str]:
    """step → hash of the batch the rank trained on at that step."""
    lines = (probe / f"rank-{rank}.txt").read_text().split("\n")
    return {int(step): digest for step, digest in (line.split() for line in lines if line)}


def writers(probe: Path) -> set[int]:
    return {int(line.split()[0]) for line in (probe / "saves.txt").read_text().splitlines()}


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def different_data(probe: Path, killed: bool = False) -> None:
    a, b = steps(probe, 0), steps(probe, 1)
    if killed:  # kill -9 can land between the two ranks' records of the same step: compare the steps both reached
        both = a.keys() & b.keys()
        assert set(range(len(both))) == both and max(len(a), len(b)) - len(both) <= 1, (a, b)
        a, b = {s: a[s] for s in both}, {s: b[s] for s in both}
    assert a.keys() == b.keys() and a, (a, b)  # the two ranks step together
    assert all(a[s] != b[s] for s in a), "both ranks trained on the same batch"
    assert len(set(a.values()) | set(b.values())) == 2 * len(a)  # no batch seen twice


def test_two_processes_killed_and_resumed_to_the_exact_step(data_dir, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(data_dir, run, "--devices", 2, "--steps", 1000, "--checkpoint-every", 3,
                                    "--workers", 0),
                            env=environ(tmp_path / "first"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.3)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)  # both processes (Lightning's second one is in the same group)
    proc.wait()
    proc.stderr.close()
    killed_at = last_step(run)
    assert killed_at >= 3 and killed_at % 3 == 0
    first = tmp_path / "first"
    different_data(first, killed=True)
    assert max(steps(first, 0)) >= killed_at - 1  # the checkpoint of step k is written after training step k - 1
    assert writers(first) == {0}  # checkpoints come from rank 0 only

    done = subprocess.run(command(data_dir, run, "--devices", 2, "--steps", killed_at + 4, "--checkpoint-every", 3,
                                  "--workers", 0, "--resume"),
                          env=environ(tmp_path / "second"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    second = tmp_path / "second"
    different_data(second)
    assert sorted(steps(second, 0)) == list(range(killed_at, killed_at + 4))  # carried on at the step it had reached
    assert last_step(run) == killed_at + 4 and writers(second) == {0}
    assert done.stdout.count("model written to") == 1 and f"(step {killed_at + 4})" in done.stdout
    assert (run / "model.safetensors").exists() and not list(run.rglob(".*.tmp"))


def test_two_nodes_on_loopback(data_dir, tmp_path):
    """--num-nodes 2: one process per "node", joined through MASTER_ADDR/MASTER_PORT on 127.0.0.1
    as a scheduler would start them (NODE_RANK 0 and 1), with a data loading process each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, probe = tmp_path / "run", tmp_path / "probe"
    procs = [subprocess.Popen(command(data_dir, run, "--devices", 1, "--num-nodes", 2, "--steps", 4,
                                      "--checkpoint-every", 2, "--workers", 1),
                              env=environ(probe, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node),
                                          LOCAL_RANK="0", WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    out = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in out]
    different_data(probe)
    assert sorted(steps(probe, 0)) == [0, 1, 2, 3]
    assert last_step(run) == 4 and writers(probe) == {0}
    assert "model written to" in out[0][0] and "model written to" not in out[1][0]
    assert "training on" not in out[1][0]  # the second node leaves the run's files and messages to the first
