"""scripts/gpu: the compact training set (prepare.py) and the GPU trainer (train.py), on the CPU,
with a tiny corpus and a tiny model."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from birdsep.pretrained import load_model
from birdsep.separation.model import preset, save_model, Separator

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "gpu"
BLOCKER = """\
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("soundfile", "soxr", "_soundfile", "lightning", "pytorch_lightning"):
            raise ImportError(f"{name} is not on the GPU machine")
        return None
sys.meta_path.insert(0, _Block())
"""


def script(name):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus(root: Path, rate: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(8 * rate) / rate
    for k, folder in enumerate(["a", "b", "c", "d", "heldout_sp", "extra_annotated/x"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        f0 = 800 + 400 * k
        chirp = np.sin(2 * np.pi * (f0 * t + 300 * t ** 2)) * (np.sin(2 * np.pi * (0.7 + k / 5) * t) > 0)
        x = 0.2 * chirp + 0.01 * rng.standard_normal(len(t))
        sf.write(root / folder / f"rec{k}.wav", x.astype(np.float32), rate)
    return root


def test_codec_round_trip_and_tables_agree():
    prep, train = script("prepare"), script("train")
    x = np.random.default_rng(1).standard_normal((2, 4096)).astype(np.float32)
    x[1, 2048:] *= 1e-3  # a faint half keeps its own precision
    codes, scales = prep.encode(x)
    y = prep.decode(codes, scales)
    for row_x, row_y in ((x[0], y[0]), (x[1, 2048:], y[1, 2048:])):
        assert 10 * np.log10(np.sum(row_x ** 2) / np.sum((row_x - row_y) ** 2)) > 35
    np.testing.assert_allclose(prep.decode_table(), train.mulaw_table().numpy(), atol=1e-7)


def test_prepare_then_train_on_cpu_writes_a_loadable_model(tmp_path):
    data = corpus(tmp_path / "data")
    tiny = tmp_path / "tiny"
    cfg = preset("stft", sample_rate=16000, num_sources=3, bottleneck=16, hidden=32, repeats=1, blocks=2,
                 clip_seconds=1.0)
    torch.manual_seed(0)
    save_model(Separator(cfg), tiny)
    exclude = tmp_path / "heldout.txt"
    exclude.write_text("# kept out\n*/heldout_sp/*\n")
    trainset = tmp_path / "set"
    assert script("prepare").main(["--data", str(data), "--out", str(trainset), "--model", str(tiny), "--seconds", "1.5",
                                   "--max-mib", "1", "--max-windows", "8", "--chunk", "3", "--index-cache", "none",
                                   "--exclude-from", str(exclude), "--quiet"]) == 0
    manifest = json.loads((trainset / "manifest.json").read_text())
    assert manifest["windows"] == 8 and manifest["sample_rate"] == 16000 and manifest["samples"] % 512 == 0
    assert manifest["codec"]["snr_db_median"] > 35
    assert sum(manifest["bytes"].values()) < 2 ** 20
    used = json.loads((trainset / "windows.json").read_text())["files"]
    assert used and not any("heldout_sp" in f or "extra_annotated" in f for f in used)
    meta = np.load(trainset / "meta.npz")
    assert meta["scales"].shape == (8, manifest["samples"] // 512) and (meta["rms"] > 1e-3).all()

    # train.py where soundfile, soxr and Lightning cannot be imported (as on the GPU machine)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO / "src")]), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    probe = subprocess.run([sys.executable, "-c", "import soundfile"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "not on the GPU machine" in probe.stderr
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "--data", str(trainset), "--out", str(run),
                           "--init-from", str(tiny), "--steps", "3", "--batch-size", "2", "--device", "cpu",
                           "--precision", "bf16", "--lr", "1e-2", "--warmup-steps", "1", "--val-share", "0.25",
                           "--val-per-gap", "2", "--val-gaps", "0,12", "--print-seconds", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "steps/s" in done.stdout and "loss" in done.stdout

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["held_out_windows"] >= 2
    assert set(summary["history"][-1]["val"]) == {"0", "12", "mean_momi"}
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # step 0 and the end
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*tmp"))
    for folder in (run, run / "best"):
        model = load_model(folder)
        assert model.config == cfg
        x = torch.randn(16000)
        assert model(x).shape == (3, 16000)
    before, after = load_model(tiny).state_dict(), load_model(run).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
