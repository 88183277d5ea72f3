"""End to end on real Xeno-canto recordings: train-classifier (kill -9 + --resume, ensembles),
classify-clips with bad files, and learning: held-out clips are recognised above chance."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from birdsep.cli import main

pytestmark = pytest.mark.slow

#: Three species that sound nothing alike; two recordings each to train, one held out.
SPECIES = ("black_capped_chickadee", "blood_pheasant", "siberian_jay")
STEPS = 6


def _split(data_dir):
    train, test = [], []
    for sp in SPECIES:
        files = sorted((data_dir / "xc" / sp).glob("*.mp3"))
        train += [(f, sp) for f in files[:-1]]
        test.append((files[-1], sp))
    return train, test


def _labels_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "primary"])
        w.writerows([str(f), s] for f, s in rows)
    return path


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "birdsep.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def _train_args(labels, run, data_dir, steps):
    return ["train-classifier", labels, "--out", run, "--steps", steps, "--batch-size", 4, "--checkpoint-every", 2,
            "--max-windows", 2, "--threads", 1, "--noise", data_dir / "noise", data_dir / "other_sounds"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run killed with SIGKILL after its first checkpoint, then resumed to the end."""
    from conftest import need_data

    data_dir = need_data()
    tmp = tmp_path_factory.mktemp("cls")
    train, test = _split(data_dir)
    broken = tmp / "broken_recording.mp3"
    broken.write_bytes(b"ID3" + b"\x00" * 64)
    labels = _labels_csv(tmp / "train.csv", train + [(broken, SPECIES[0])])
    run = tmp / "run"
    args = [sys.executable, "-m", "birdsep.cli", *_train_args(labels, run, data_dir, STEPS)]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = run / "members" / "0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed_at = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    out = proc.stdout.read().decode()
    assert killed_at is not None, out
    resumed = _cli(*_train_args(labels, run, data_dir, STEPS), "--resume", "--quiet")
    return {"run": run, "labels": labels, "test": test, "killed_at": killed_at, "resumed": resumed, "tmp": tmp,
            "data": data_dir}


def test_resume_after_kill_finishes_the_run(trained):
    r = trained["resumed"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumes from" in r.stdout and "Traceback" not in r.stderr
    skipped = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken_recording.mp3: " in skipped[0]
    run = trained["run"]
    assert 2 <= trained["killed_at"] < STEPS
    assert torch.load(run / "members/0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)[
        "global_step"] == STEPS
    assert not list(run.rglob("*.tmp"))
    for name in ("config.json", "model.safetensors", "run.json", "members/0/member.safetensors"):
        assert (run / name).is_file(), name
    logs = run / "members/0/logs"
    assert list((logs / "session_1_tensorboard").glob("events.out.tfevents.*"))
    steps = [int(row["step"]) for row in csv.DictReader(open(logs / "session_1" / "metrics.csv"))]
    assert max(steps) == STEPS - 1


def test_run_dir_is_not_overwritten_without_resume(trained, capsys):
    rc = main(["train-classifier", str(trained["labels"]), "--out", str(trained["run"]), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1


def test_classify_clips_prints_windows_and_reports_bad_files(trained, capsys):
    test = trained["test"]
    bad = trained["tmp"] / "broken.mp3"
    bad.write_bytes(b"\x00" * 100)
    rc = main(["classify-clips", "--classifier", str(trained["run"]), str(test[0][0]), str(bad),
               str(trained["data"] / "edge_cases" / "empty_2c.wav"), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 1
    rows = list(csv.reader(out.strip().splitlines()))
    assert rows[0] == ["file", "start_s", "end_s", "bird", *SPECIES]
    body = rows[1:]
    assert len(body) >= 2 and all(r[0] == str(test[0][0]) for r in body)
    assert float(body[0][1]) == 0.0 and float(body[0][2]) == 5.0 and float(body[1][1]) == 5.0
    probs = np.array([[float(v) for v in r[3:]] for r in body])
    assert np.all((probs >= 0) & (probs <= 1))
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 2 and "broken.mp3" in errors[0] and "empty_2c.wav" in errors[1]
    assert "Traceback" not in err


#: A learning check small enough for CI: two species, two recordings each, the third (about a
#: minute each) held out.
LEARN = ("siberian_accentor", "white_bellied_antbird")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    from conftest import need_data

    data_dir = need_data()
    tmp = tmp_path_factory.mktemp("learn")
    rows, held_out = [], []
    for sp in LEARN:
        files = sorted((data_dir / "xc" / sp).glob("*.mp3"))
        rows += [(f, sp) for f in files[:-1]]
        held_out.append((files[-1], sp))
    labels = _labels_csv(tmp / "train.csv", rows)
    r = _cli("train-classifier", labels, "--out", tmp / "run", "--steps", LEARN_STEPS, "--batch-size", 8, "--lr",
             "2e-3", "--threads", 1, "--no-augment", "mix", "--no-augment", "noise-only", "--no-augment", "lowpass",
             "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "run", held_out


LEARN_STEPS = 60


def test_held_out_clips_recognised_above_chance(learned):
    from birdsep.audio import load
    from birdsep.classification.infer import window_logits
    from birdsep.classification.model import load as load_model

    run, held_out = learned
    model = load_model(run)
    species = list(model.cfg.species)
    per_species = []
    for f, sp in held_out:
        x, _ = load(f, model.cfg.sample_rate)
        logits, _ = window_logits(model, x[: 60 * model.cfg.sample_rate])
        per_species.append(float(np.mean(logits["species"].argmax(1) == species.index(sp))))
    accuracy = float(np.mean(per_species))  # balanced over the two species: chance is 0.5
    print(f"held-out window top-1 per species {per_species}, balanced {accuracy:.2f} (chance 0.50)")
    assert accuracy >= 0.7


def test_ensemble_of_two_members(trained, tmp_path):
    data = trained["data"]
    labels = _labels_csv(tmp_path / "two.csv", [(f, s) for f, s in _split(data)[0] if s != SPECIES[2]][:2])
    run = tmp_path / "ens"
    r = _cli("train-classifier", labels, "--out", run, "--steps", 2, "--batch-size", 2, "--ensemble", 2,
             "--max-windows", 1, "--threads", 1, "--no-augment", "mix", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    from birdsep.classification.model import load as load_model

    model = load_model(run)
    assert model.cfg.members == 2 and len(model.members) == 2
    for k in range(2):
        assert (run / "members" / str(k) / "member.safetensors").is_file()
    x = torch.randn(1, 5 * model.cfg.sample_rate)
    with torch.no_grad():
        mean = model(x)["species"]
        each = [m(x)["species"] for m in model.members]
    torch.testing.assert_close(mean, (each[0] + each[1]) / 2)
    assert not torch.allclose(each[0], each[1])  # members differ (own seeds)


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert main(["train-classifier", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert main(["train-classifier", str(tmp_path), "--out", str(tmp_path / "r"), "--no-augment", "reverb"]) == 2
    assert main(["classify-clips", "--classifier", str(tmp_path), "x.wav"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("birdsep ") for line in lines) and "Traceback" not in err


def test_minutes_budget_stops_a_member_and_resume_finishes(tmp_path, capsys):
    """--minutes spent: the member stops after its step with a checkpoint and its weights, the
    classifier is written (exit 0) and --resume carries on; a budget out of range is one line."""
    from conftest import need_data

    from birdsep.classification.model import load as load_model

    data = need_data()
    labels = _labels_csv(tmp_path / "two.csv", [(f, s) for f, s in _split(data)[0] if s != SPECIES[2]][::2])
    run = tmp_path / "run"
    args = ["train-classifier", labels, "--out", run, "--batch-size", 2, "--max-windows", 1, "--threads", 1,
            "--no-augment", "mix", "--checkpoint-every", 500]
    r = _cli(*args, "--steps", 1000, "--minutes", 0.01)
    assert r.returncode == 0, r.stdout + r.stderr
    last = run / "members" / "0" / "checkpoints" / "last.ckpt"
    stopped = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= stopped < 1000
    assert f"member 0 stopped at step {stopped} of 1000: --minutes 0.01 spent; carry on with --resume" in r.stdout
    assert load_model(run).cfg.members == 1

    r = _cli(*args, "--steps", stopped + 1, "--resume", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == stopped + 1

    for bad in ("0", "nan", "-1"):
        assert main(["train-classifier", str(labels), "--out", str(tmp_path / "r"), "--minutes", bad]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("birdsep train-classifier: error: --minutes must be ")
                                   for line in lines), lines
