"""Google's bird MixIT separators converted to birdsep: real-time factor on the CPU beside the
shipped default separator (separator_stft_m4), through birdsep's engine.

The published graph's size (M = 4 and M = 8: 22-sample window, 11-sample hop, 4 × 8 blocks of
256/512 with skip connections; 2005 frames per second of audio) with random weights (the speed
does not depend on them; ``--checkpoint DIR`` converts a checkpoint folder instead, e.g. the
published files or ``benchmarks/bird_mixit_reference.py``'s full-size one). Each model gets the
same seconds of real audio at its own sample rate, through
``birdsep.separation.engine.engine_for(model, "fp32")`` (and the bird model's own forward, to
show what the engine's fused form gives); best of interleaved rounds, so a slow spell of a
shared machine hits all alike. Real-time factor = processing seconds / audio seconds (lower is
faster).

    .venv/bin/python benchmarks/bird_mixit_speed.py > benchmarks/results/bird_mixit_speed.txt
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import header, table

from birdsep import audio
from birdsep.pretrained import DEFAULT_SEPARATOR, EXAMPLE_RECORDING, load_model
from birdsep.separation.architectures import bird_mixit
from birdsep.separation.engine import engine_for
from birdsep.separation.model import count_parameters
from birdsep.separation.runtime import tune_allocator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = DATA / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac"


def clip(seconds: float, sample_rate: int) -> torch.Tensor:
    """(1, T): ``seconds`` of a real dawn chorus at ``sample_rate``."""
    path = CLIP if CLIP.exists() else EXAMPLE_RECORDING
    x, _ = audio.load(path, sample_rate, duration=seconds)
    n = int(seconds * sample_rate)
    if len(x) < n:  # the bundled example is 10 s: loop it
        x = x.repeat(n // len(x) + 1)[:n]
    return torch.from_numpy(x)[None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--checkpoint", type=Path, help="convert this bird_mixit_m4 checkpoint folder instead")
    args = ap.parse_args()
    header("bird MixIT (converted) against the shipped separator_stft_m4, CPU real-time factor")
    tune_allocator()
    torch.manual_seed(0)
    if args.checkpoint:
        tensors, cfg, _ = bird_mixit.read_checkpoint(args.checkpoint, "bird_mixit_m4")
        m4 = bird_mixit.from_variables(tensors, cfg)
    else:
        m4 = bird_mixit.BirdMixIT(bird_mixit.PRESETS["bird-mixit-m4"]).eval()
    m8 = bird_mixit.BirdMixIT(bird_mixit.PRESETS["bird-mixit-m8"]).eval()
    shipped = load_model(DEFAULT_SEPARATOR)

    def module(model):
        def run(x):
            with torch.inference_mode():
                return model(x)
        return run

    cands = {  # name: (runner, model)
        "separator_stft_m4 (shipped), engine fp32": (engine_for(shipped, "fp32"), shipped),
        "bird_mixit_m4, engine fp32": (engine_for(m4, "fp32"), m4),
        "bird_mixit_m4, module fp32": (module(m4), m4),
        "bird_mixit_m8, engine fp32": (engine_for(m8, "fp32"), m8),
    }
    inputs = {name: clip(args.seconds, model.config.sample_rate) for name, (_, model) in cands.items()}
    for name, (run, _) in cands.items():
        run(inputs[name])  # warm-up (and the engine's first build)
    best = {name: float("inf") for name in cands}
    for _ in range(args.rounds):
        for name, (run, _) in cands.items():
            t = time.perf_counter()
            run(inputs[name])
            best[name] = min(best[name], time.perf_counter() - t)
    base = best["separator_stft_m4 (shipped), engine fp32"]
    rows = []
    for name, (run, model) in cands.items():
        cfg = model.config
        rows.append({"model, how": name, "parameters": f"{count_parameters(model) / 1e6:.2f} M",
                     "sample rate": cfg.sample_rate, f"s per {args.seconds:g} s": f"{best[name]:.2f}",
                     "real-time factor": f"{best[name] / args.seconds:.3f}",
                     "× separator_stft_m4's time": f"{best[name] / base:.1f}"})
    fused = engine_for(m4, "fp32")
    print(f"input: {args.seconds:g} s of {CLIP.name if CLIP.exists() else EXAMPLE_RECORDING.name}, "
          f"best of {args.rounds} interleaved rounds; bird_mixit weights: "
          f"{'converted from ' + str(args.checkpoint) if args.checkpoint else 'random (published sizes)'}")
    print(f"engine: fused {', '.join(fused.fused) or '-'}; runs as they are: {', '.join(fused.unfused) or '-'}\n")
    table(rows)
    import os

    print(f"load average while measuring (1/5/15 min): {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores (other work on a shared machine slows every row alike)")


if __name__ == "__main__":
    main()
