"""End to end: a training killed with SIGKILL at random moments, resumed again and again, ends
exactly where an uninterrupted run with the same seed ends, bit for bit (both trainers); the
newest checkpoint that loads is the one resumed, whatever its name; a full disk is one line
and costs nothing but the steps since the last checkpoint.

The trainings run in children forked by one launcher process (:data:`LAUNCHER`), which imports
PyTorch and Lightning once: a child is a whole ``birdsep`` command, killed with SIGKILL like
any other process, without paying the imports for each of the many short runs.
"""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from birdsep import training

pytestmark = pytest.mark.slow

#: Forks one ``birdsep`` command per request line ({"argv", "log", "marker"} → {"pid"};
#: {"wait": pid} → {"rc"}). With a marker, checkpoint writes stop half-way after creating it.
LAUNCHER = r'''
import io, json, os, sys, time
import lightning.pytorch, timm, torch
import birdsep.classification.train, birdsep.separation.train
from birdsep.cli import main

def child(argv, log, marker):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1), os.dup2(fd, 2), os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    if marker:
        save = torch.save

        def half_then_stall(obj, f, *a, **kw):  # a checkpoint write caught in the middle
            if ".ckpt." not in getattr(f, "name", ""):
                return save(obj, f, *a, **kw)
            buf = io.BytesIO()
            save(obj, buf, *a, **kw)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            open(marker, "w").close()
            time.sleep(600)

        torch.save = half_then_stall
    try:
        rc = main(argv)
    except BaseException:
        import traceback
        traceback.print_exc()
        rc = 70
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(rc)

for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        _, status = os.waitpid(req["wait"], 0)
        reply = {"rc": os.waitstatus_to_exitcode(status)}
    else:
        pid = os.fork()
        if pid == 0:
            child(req["argv"], req["log"], req.get("marker"))
        reply = {"pid": pid}
    print(json.dumps(reply), flush=True)
'''


class Launcher:
    def __init__(self, folder: Path):
        script = folder / "launcher.py"
        script.write_text(LAUNCHER)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.folder, self.count = folder, 0

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv, marker: Path | None = None) -> tuple[int, Path]:
        self.count += 1
        log = self.folder / f"run{self.count}.log"
        pid = self._ask({"argv": [str(a) for a in argv], "log": str(log), "marker": marker and str(marker)})["pid"]
        return pid, log

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["rc"]

    def run(self, argv) -> tuple[int, str]:
        """Run a command to its end: (exit code, its output)."""
        pid, log = self.start(argv)
        return self.wait(pid), log.read_text()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Trainer:
    """How to run one of the two trainers small and fast, and where its files go."""

    def __init__(self, kind: str, data_dir: Path, folder: Path):
        self.kind = kind
        if kind == "separator":
            self.data = [data_dir / "xc" / "veery", data_dir / "xc" / "wood_thrush"]
            self.flags = ["--preset", "small", "--clip-seconds", "1", "--batch-size", "2"]
            self.steps = 24
        else:
            labels = folder / "labels.csv"
            with open(labels, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["file", "primary"])
                for sp in ("black_capped_chickadee", "blood_pheasant", "siberian_jay"):
                    w.writerow([sorted((data_dir / "xc" / sp).glob("*.mp3"))[0], sp])
            self.data = [labels]
            self.flags = ["--batch-size", "2", "--max-windows", "1", "--noise", data_dir / "noise"]
            self.steps = 16

    def argv(self, run: Path, steps: int | None = None, every: int = 2, workers: int = 0, *extra) -> list:
        return [f"train-{self.kind}", *self.data, "--out", run, "--steps", steps or self.steps, "--checkpoint-every",
                every, "--workers", workers, "--threads", "1", "--accelerator", "cpu", "-q", *self.flags, *extra]

    def checkpoints(self, run: Path) -> Path:
        return run / "checkpoints" if self.kind == "separator" else run / "members" / "0" / "checkpoints"

    def weights(self, run: Path) -> dict:
        name = "model.safetensors" if self.kind == "separator" else "members/0/member.safetensors"
        return load_file(run / name)

    def step(self, run: Path) -> int:
        """The step of ``last.ckpt`` (0: none yet)."""
        try:
            return training._stored_step(self.checkpoints(run) / "last.ckpt")
        except (OSError, ValueError):
            return 0


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    from conftest import need_data

    need_data()
    launcher = Launcher(tmp_path_factory.mktemp("launcher"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="module", params=["separator", "classifier"])
def trainer(request, launcher, tmp_path_factory):
    """A trainer and its uninterrupted run of ``trainer.steps`` steps (the reference)."""
    from conftest import need_data

    folder = tmp_path_factory.mktemp(request.param)
    t = Trainer(request.param, need_data(), folder)
    t.reference = folder / "reference"
    rc, out = launcher.run(t.argv(t.reference))
    assert rc == 0, out
    return t


def assert_same_model(trainer, run, reference):
    a, b = trainer.weights(run), trainer.weights(reference)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} of {len(a)} tensors differ from the uninterrupted run's"


def test_killed_five_times_ends_as_an_uninterrupted_run(trainer, launcher, tmp_path):
    """SIGKILL five times, alternately in the middle of a checkpoint write and at a random
    moment after a checkpoint (in a step, an export or a write), with --checkpoint-every and
    --workers changed at every resume; then one last resume runs to the end."""
    run = tmp_path / "run"
    rng = random.Random(15)
    for kill in range(5):
        in_write = kill % 2 == 0
        marker = tmp_path / f"writing{kill}" if in_write else None
        before = trainer.step(run)
        argv = trainer.argv(run, None, (2, 3)[kill % 2], kill % 2, *(["--resume"] if kill else []))
        pid, log = launcher.start(argv, marker)
        deadline = time.time() + 300
        while time.time() < deadline and not (marker.exists() if in_write else trainer.step(run) > before):
            time.sleep(0.02)
        if not in_write:
            time.sleep(rng.uniform(0.0, 1.0))
        os.kill(pid, signal.SIGKILL)
        assert launcher.wait(pid) == -signal.SIGKILL, f"kill {kill}: the run ended before it was killed\n" + log.read_text()
        if in_write:
            assert list(trainer.checkpoints(run).glob(".*.ckpt.*.tmp")), "killed while writing a checkpoint"
    assert 0 < trainer.step(run) < trainer.steps

    rc, out = launcher.run(trainer.argv(run, None, 3, 0, "--resume"))
    assert rc == 0 and "Traceback" not in out, out
    assert "resumes from" in out and "resumes with changed options: --checkpoint-every 2 → 3" in out
    assert trainer.step(run) == trainer.steps
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("last-v*.ckpt"))
    assert_same_model(trainer, run, trainer.reference)


def stop(trainer, launcher, run: Path, after: int, *extra) -> int:
    """Run until a checkpoint past step ``after`` exists, stop it with SIGTERM (after its
    current step, checkpointed) and return the step it stopped at."""
    pid, log = launcher.start(trainer.argv(run, None, 2, 0, *extra))
    deadline = time.time() + 300
    while time.time() < deadline and trainer.step(run) <= after:
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    assert launcher.wait(pid) == 143, log.read_text()  # 128 + SIGTERM
    out = log.read_text()
    assert f"stopped at step {trainer.step(run)} of {trainer.steps}; carry on with --resume" in out, out
    return trainer.step(run)


def test_resume_skips_a_truncated_newest_checkpoint_and_finds_one_whatever_its_name(trainer, launcher, tmp_path):
    """last.ckpt older than last-v1.ckpt (what older versions left after a changed
    --checkpoint-every) and a truncated newest checkpoint: the run carries on from last-v1.ckpt.
    Stopped twice with SIGTERM, which ends a run after its current step with a checkpoint."""
    run = tmp_path / "run"
    folder = trainer.checkpoints(run)
    first = stop(trainer, launcher, run, 1)
    older = (folder / "last.ckpt").read_bytes()
    second = stop(trainer, launcher, run, first, "--resume")
    (folder / "last.ckpt").rename(folder / "last-v1.ckpt")  # the newest, under another name
    (folder / "last.ckpt").write_bytes(older)
    newest = (folder / "last-v1.ckpt").read_bytes()
    for step_file in folder.glob("step-*.ckpt"):
        step_file.unlink()
    (folder / f"step-{second + 2}.ckpt").write_bytes(newest[: len(newest) // 3])  # cut short by a crash

    rc, out = launcher.run(trainer.argv(run, None, 2, 0, "--resume"))
    assert rc == 0, out
    skipped = [line for line in out.splitlines() if "damaged checkpoint" in line]
    assert len(skipped) == 1 and f"step-{second + 2}.ckpt" in skipped[0]
    assert f"resumes from {folder / 'last-v1.ckpt'} (step {second})" in out
    assert trainer.step(run) == trainer.steps
    assert_same_model(trainer, run, trainer.reference)

    # a new learning rate takes effect: Lightning alone would restore the old one with the optimizer
    rc, out = launcher.run(trainer.argv(run, trainer.steps + 1, 2, 0, "--resume", "--lr", "0.0005"))
    assert rc == 0 and "--lr 0.001 → 0.0005" in out, out
    import torch

    ckpt = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group.get("initial_lr", group["lr"]) == pytest.approx(5e-4)
    for scheduler in ckpt["lr_schedulers"]:
        assert scheduler["base_lrs"] == [pytest.approx(5e-4)]

    rc, out = launcher.run(trainer.argv(run, None, 2, 0, "--resume", "--batch-size", "3"))
    assert rc == 2 and out.count("\n") == 1 and "--batch-size 2 (now 3)" in out, out


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(megabytes)``: a tmpfs of its own of that size (skipped where mounting is not allowed)."""
    mounts = []

    def mount(megabytes: int) -> Path:
        fs = tmp_path / f"fs{len(mounts)}"
        fs.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(fs)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode}); "
                        "the full-disk test needs root and mount rights")
        mounts.append(fs)
        return fs

    yield mount
    for fs in mounts:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Fill ``fs`` but ``leave`` bytes."""
    filler = fs / "filler"
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    with open(filler, "ab") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def assert_full_disk(launcher, argv, named: str) -> str:
    """The run stops with one error line naming ``named`` and saying how to carry on; no temporary file is left."""
    rc, out = launcher.run(argv)
    errors = [line for line in out.splitlines() if "error:" in line]
    assert rc == 2 and "Traceback" not in out, out
    assert len(errors) == 1 and named in errors[0] and "no space left on device" in errors[0], out
    assert "the last checkpoint is intact" in errors[0] and "--resume" in errors[0]
    return out


def test_a_full_disk_keeps_the_last_checkpoint(launcher, small_fs, data_dir, tmp_path):
    """Separator: the checkpoint (14 MB), then the exported model (5 MB) do not fit: one line
    each, the last checkpoint intact, no temporary files; the run carries on once there is space."""
    t = Trainer("separator", data_dir, tmp_path)
    fs = small_fs(48)
    run = fs / "run"
    rc, out = launcher.run(t.argv(run, 2))
    assert rc == 0, out
    for leave, named in ((8 << 20, "last.ckpt"), (1 << 20, "model.safetensors")):
        filler = fill(fs, leave)
        assert_full_disk(launcher, t.argv(run, 4, 2, 0, "--resume"), named)
        assert t.step(run) == 2 and not list(run.rglob("*.tmp"))
        filler.unlink()
    rc, out = launcher.run(t.argv(run, 4, 2, 0, "--resume"))
    assert rc == 0, out
    assert t.step(run) == 4


def test_a_full_disk_keeps_the_last_checkpoint_classifier(launcher, small_fs, data_dir, tmp_path):
    """Classifier: a checkpoint (49 MB, two files at a time) that does not fit; then, after a
    kill -9 between the final checkpoint and the member's weights, the member's weights (16 MB)
    and then the ensemble model that do not fit: one line each, nothing half-written, and the
    run ends with the model of an uninterrupted one once there is space."""
    t = Trainer("classifier", data_dir, tmp_path)
    fs = small_fs(256)
    run = fs / "run"
    rc, out = launcher.run(t.argv(run, 2))
    assert rc == 0, out
    folder = t.checkpoints(run)
    member = run / "members" / "0" / "member.safetensors"
    size = member.stat().st_size

    filler = fill(fs, (folder / "last.ckpt").stat().st_size // 2)
    assert_full_disk(launcher, t.argv(run, 4, 2, 0, "--resume"), ".ckpt")
    assert t.step(run) == 2 and not list(run.rglob("*.tmp"))
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step-2.ckpt"]
    filler.unlink()
    rc, out = launcher.run(t.argv(run, 4, 2, 0, "--resume"))
    assert rc == 0 and t.step(run) == 4, out
    finished = t.weights(run)

    member.unlink()  # as a kill -9 after the final checkpoint, before the member's weights, leaves it
    for leave, named in ((size // 2, "member.safetensors"), (size * 3 // 2, str(run / "model.safetensors"))):
        filler = fill(fs, leave)
        assert_full_disk(launcher, t.argv(run, 4, 2, 0, "--resume"), named)
        assert t.step(run) == 4 and not list(run.rglob("*.tmp"))
        filler.unlink()
    assert member.is_file()  # written before the ensemble failed
    rc, out = launcher.run(t.argv(run, 4, 2, 0, "--resume"))
    assert rc == 0 and "member 0 already trained" in out, out
    again = t.weights(run)
    assert all((again[k] == finished[k]).all() for k in finished)
