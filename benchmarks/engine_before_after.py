"""The inference engine before and after a change, in one process on the same models and audio.

The engine of revision ``--before`` (default 7af8eb6, the last with a hand-written copy of the
TDCN++ forward) is loaded from git beside today's (the model's own forward over fused layers)
and both run the same model objects on the same real audio, in interleaved rounds (best of
each), fp32 and bf16: the shipped separators and the randomly initialised paper preset. The
ratio before/after > 1 means today's is faster; the SI-SNR column says both give the same
sources.

    .venv/bin/python benchmarks/engine_before_after.py [--before REV] [--seconds 12] [--rounds 5]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import header, table

from birdsep import audio
from birdsep.pretrained import EXAMPLE_RECORDING, load_model
from birdsep.separation import engine as after
from birdsep.separation.mixit import si_snr
from birdsep.separation.model import Separator, preset
from birdsep.separation.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac"


def engine_at(rev: str):
    """The engine module of revision ``rev`` (it imports today's layers under their old names)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/birdsep/separation/engine.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "engine_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("engine_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clip(rate: int, seconds: float) -> torch.Tensor:
    path = CLIP if CLIP.exists() else EXAMPLE_RECORDING
    x, _ = audio.load(path, rate, duration=seconds)
    if len(x) < seconds * rate:  # the bundled example is 10 s: loop it
        x = x.repeat(int(seconds * rate // len(x)) + 1)[: int(seconds * rate)]
    return torch.from_numpy(x)[None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="7af8eb6")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    header(f"Inference engine: revision {args.before} against today's, same models, same audio")
    tune_allocator()
    torch.manual_seed(0)
    before = engine_at(args.before)
    models = {name: load_model(name) for name in ("stft_m4", "stft_m8", "small_m4")}
    models["paper (random)"] = Separator(preset("paper")).eval()
    rows = []
    for name, model in models.items():
        x = clip(model.config.sample_rate, args.seconds if "paper" not in name else min(args.seconds, 6.0))
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            old, new = before.Engine(model, dtype), after.Engine(model, dtype)
            y_old, y_new = old(x), new(x)  # also the warm-up
            best = {"before": float("inf"), "after": float("inf")}
            for _ in range(args.rounds):
                for key, run in (("before", old), ("after", new)):
                    t = time.perf_counter()
                    run(x)
                    best[key] = min(best[key], time.perf_counter() - t)
            seconds = x.shape[-1] / model.config.sample_rate
            rows.append({"model": name, "precision": precision, "audio": f"{seconds:g} s",
                         "before × real time": f"{seconds / best['before']:.0f}",
                         "after × real time": f"{seconds / best['after']:.0f}",
                         "before / after time": f"{best['before'] / best['after']:.2f}",
                         "SI-SNR after vs before": f"{float(si_snr(y_old[0].double(), y_new[0].double()).min()):.0f} dB"})
            print(rows[-1], file=sys.stderr)
    print(f"best of {args.rounds} interleaved rounds; {torch.get_num_threads()} threads\n")
    table(rows)


if __name__ == "__main__":
    main()
