"""End to end: train-separator (kill -9, resume) and eval-separator on real recordings."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from birdsep.cli import main

pytestmark = pytest.mark.slow

FAST = ["--preset", "small", "--clip-seconds", "1", "--batch-size", "2", "--workers", "0", "--threads", "2"]


def birdsep(*args, **kw):
    return subprocess.run([sys.executable, "-m", "birdsep.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def last_step(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["global_step"]


def test_train_kill_resume_evaluate(data_dir, tmp_path):
    run = tmp_path / "run"
    train = [data_dir / "xc" / "veery", data_dir / "xc" / "wood_thrush", data_dir / "soundscapes" / "spinetail"]
    cmd = [sys.executable, "-m", "birdsep.cli", "train-separator", *map(str, train), "--out", str(run),
           "--steps", "1000", "--checkpoint-every", "3", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = last_step(run)
    assert killed_at >= 3
    assert (run / "model.safetensors").exists() and (run / "config.json").exists()

    # without --resume the run directory is protected
    r = birdsep("train-separator", *train, "--out", run, "--steps", "5", *FAST)
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr

    r = birdsep("train-separator", *train, "--out", run, "--steps", killed_at + 3, "--resume", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert last_step(run) == killed_at + 3, "resumed from the checkpoint, not from scratch"
    assert list((run / "logs" / "csv").rglob("metrics.csv")), "CSV log written"
    assert list((run / "logs" / "tensorboard").rglob("events.out.tfevents*")), "TensorBoard log written"

    report = tmp_path / "report.json"
    r = birdsep("eval-separator", "--model", run, data_dir / "xc" / "veery" / "veery_recording_2.mp3",
                data_dir / "xc" / "blackcap", "--mixtures", "4", "--clip-seconds", "2", "--json", report)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MoMi" in r.stdout
    rep = json.loads(report.read_text())
    assert rep["mixtures"] == 4 and rep["num_sources"] == 4
    assert -30 < rep["momi_mean"] < 30 and 0 <= rep["active_sources_mean"] <= 4


def test_sigterm_to_the_whole_process_group_ends_after_the_step_with_a_checkpoint(data_dir, tmp_path):
    """``kill -TERM -- -PGID`` (a scheduler ending its job, a container stopping) reaches the
    loader worker too: the run still ends after its current step, checkpointed, on one line."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "birdsep.cli", "train-separator", str(data_dir / "xc" / "veery"), "--out", str(run),
           "--steps", "1000", "--checkpoint-every", "500", "-q", *FAST[:-4], "--workers", "1", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "logs" / "csv").rglob("metrics.csv")):
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(3.0)  # a few steps in, far from the first periodic checkpoint
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    stopped = last_step(run)
    assert 0 < stopped < 500 and err.strip().splitlines()[-1].endswith(
        f"stopped at step {stopped} of 1000; carry on with --resume"), err[-1000:]


def test_eval_is_deterministic(data_dir, tmp_path):
    args = ["eval-separator", data_dir / "xc" / "blackcap", "--mixtures", "3", "--clip-seconds", "2"]
    a = birdsep(*args, "--json", tmp_path / "a.json")
    b = birdsep(*args, "--json", tmp_path / "b.json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-1000:]
    assert json.loads((tmp_path / "a.json").read_text())["momi_mean"] == json.loads((tmp_path / "b.json").read_text())["momi_mean"]


def test_no_usable_audio_is_a_clear_error(data_dir, tmp_path, capsys):
    bad = [data_dir / "edge_cases" / n for n in ("empty_2c.wav", "stereo.wav", "veryshort.wav", "silence_10s.mp3")]
    code = main(["train-separator", *map(str, bad), "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr()
    assert code == 2
    assert "no usable audio" in err.err
    for f in bad:
        assert f.name in err.out  # one line per skipped file, with the reason
    assert "silent" in err.out and "too short" in err.out

    code = main(["eval-separator", str(tmp_path / "missing.wav")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_warm_start_wider_with_sparsity_references_and_exclude_list(data_dir, tmp_path):
    """--init-from an M=2 STFT run into M=4 with the sparsity loss and 4-reference batches; --exclude-from
    keeps a species out."""
    train = [data_dir / "xc" / "veery", data_dir / "xc" / "wood_thrush"]
    stft = ["--preset", "stft", "--clip-seconds", "1", "--batch-size", "2", "--workers", "0", "--threads", "2"]
    base = tmp_path / "base"
    r = birdsep("train-separator", *train, "--out", base, "--steps", "2", "--sources", "2", *stft)
    assert r.returncode == 0, r.stderr[-2000:]
    excludes = tmp_path / "exclude.txt"
    excludes.write_text("# keep the veery out\n*/veery/*\n\n")
    wide = tmp_path / "wide"
    r = birdsep("train-separator", *train, "--out", wide, "--steps", "2", "--sources", "4", "--init-from", base,
                "--sparsity", "0.5", "--references", "4", "--references-share", "1", "--noise-share", "0.5", "--song-share", "0.5",
                "--level-gap", "30", "--exclude-from", excludes,
                "--checkpoint-every", "1", *stft)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "M=2 → 4" in r.stdout
    config = json.loads((wide / "config.json").read_text())["config"]
    assert config["num_sources"] == 4 and config["basis"] == "stft" and config["sample_rate"] == 32000
    files = json.loads((wide / "data_index.json").read_text())
    assert files and not any("veery" in key for key in files)
    metrics = next((wide / "logs" / "csv").rglob("metrics.csv")).read_text()
    assert "sparsity" in metrics.splitlines()[0]


def test_song_scenes_train_with_the_permutation_invariant_loss(data_dir, tmp_path):
    """--song-share 1: every batch is a scene of songs cut from the recordings over a background."""
    out = tmp_path / "songs"
    r = birdsep("train-separator", data_dir / "xc" / "veery", data_dir / "xc" / "wood_thrush", "--out", out,
                "--steps", "2", "--sources", "3", "--song-share", "1", "--preset", "stft", "--clip-seconds", "2",
                "--checkpoint-every", "1", "--batch-size", "2", "--workers", "0", "--threads", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = next((out / "logs" / "csv").rglob("metrics.csv")).read_text().splitlines()
    header = rows[0].split(",")
    assert "pit" in header and "mixit" not in header
    values = [float(row.split(",")[header.index("pit")]) for row in rows[1:] if row.split(",")[header.index("pit")]]
    assert values and all(np.isfinite(values))


def test_more_references_than_sources_is_one_line(data_dir, tmp_path):
    train = data_dir / "xc" / "veery"
    for extra in (["--references", "5"], ["--references", "1"], ["--references", "3", "--references-share", "0"],
                  ["--noise-share", "1.5"], ["--song-share", "-0.1"], ["--level-gap", "-3"], ["--level-gap", "90"]):
        r = birdsep("train-separator", train, "--out", tmp_path / "r", "--steps", "1", "--sources", "4",
                    "--preset", "stft", *extra)
        assert r.returncode == 2, r.stderr[-2000:]
        assert extra[-2] in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "r").exists()


def test_minutes_budget_stops_with_a_checkpoint_and_the_model_and_resume_carries_on(data_dir, tmp_path):
    """--minutes spent: the run stops after its step, checkpointed, with the model written, says
    where it stopped on one line and exits 0; --resume carries on from there."""
    from birdsep.pretrained import load_model

    run = tmp_path / "run"
    args = ["train-separator", data_dir / "xc" / "veery", "--out", run, "--checkpoint-every", "500",
            *FAST[:-2], "--threads", "1"]
    r = birdsep(*args, "--steps", "1000", "--minutes", "0.01")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    stopped = last_step(run)
    assert 1 <= stopped < 1000
    assert f"train-separator: stopped at step {stopped} of 1000: --minutes 0.01 spent; carry on with --resume" \
        in r.stdout, r.stdout[-2000:]
    assert "/1000" in r.stdout  # the progress bar
    model = load_model(run)
    with torch.no_grad():
        out = model(torch.zeros(1, model.config.sample_rate))
    assert out.shape[:2] == (1, model.config.num_sources)

    r = birdsep(*args, "--steps", stopped + 3, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert last_step(run) == stopped + 3 and f"(step {stopped})" in r.stdout
    assert "--minutes" not in r.stdout + r.stderr  # a budget is this invocation's: no changed option
    bar = f"/{stopped + 3} ["
    assert 1 <= r.stdout.count(bar) <= 3, r.stdout  # not a terminal: no redraw at every step


def test_minutes_out_of_range_is_one_line(data_dir, tmp_path, capsys):
    for bad in ("0", "nan", "-1", "inf"):
        assert main(["train-separator", str(data_dir / "xc" / "veery"), "--out", str(tmp_path / "r"),
                     "--minutes", bad]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("birdsep train-separator: error: --minutes must be ")
                                   for line in lines), lines
    assert not (tmp_path / "r").exists()
