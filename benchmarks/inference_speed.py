"""Separator inference speed on the CPU, against a peer of the same size in the same run.

birdsep's `paper` preset (8.89 M parameters, M = 4) against asteroid 0.7.0's ConvTasNet built
to the same size (TDConvNet 4 × 8 blocks, 256/512 channels, no skip path, a free 22-sample /
11-hop filterbank of 256 filters: 8.89 M parameters), on the same 6 s of real 22.05 kHz audio;
the shipped small model beside them. Each is run as the model's own forward ("module") and,
for birdsep, through the inference engine (birdsep.separation.engine) in fp32 and bf16.
Candidates are timed in interleaved rounds (best of the rounds each), so a slow spell of a
shared machine hits all of them alike. Achieved GFLOP/s (counted by torch's FlopCounterMode on
the module forward: the engine does the same arithmetic) is compared with the matrix-multiply
peak of the same precision, measured in the same run. All candidates run in one process under
the same allocator setting (birdsep's runtime.tune_allocator, applied first).

    bash benchmarks/setup.sh && .venv/bin/python benchmarks/inference_speed.py
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from common import header, table
from torch.utils.flop_counter import FlopCounterMode

from birdsep import audio
from birdsep.pretrained import EXAMPLE_RECORDING, load_model
from birdsep.separation.engine import Engine
from birdsep.separation.runtime import tune_allocator
from birdsep.separation.mixit import si_snr
from birdsep.separation.model import Separator, count_parameters, preset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIP = DATA / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac"


def matmul_peak(dtype: torch.dtype, rounds: int = 7) -> float:
    """Best GFLOP/s over square and tall-skinny products (the model's own GEMM shape among them)."""
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (12027, 256, 512), (12027, 512, 256)]:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.mm(a, b, out=out)
        for _ in range(rounds):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def flops(model, x) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def module_runner(model, bf16: bool = False):
    def run(x):
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), cast:
            return model(x).float()
    return run


def load_clip(seconds: float) -> tuple[torch.Tensor, str]:
    path = CLIP if CLIP.exists() else EXAMPLE_RECORDING
    x, _ = audio.load(path, 22050, duration=seconds)
    if len(x) < seconds * 22050:  # the bundled example is 10 s: loop it
        x = x.repeat(int(seconds * 22050 // len(x)) + 1)[: int(seconds * 22050)]
    return torch.from_numpy(x)[None], path.name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    header("Separator inference on the CPU (inference_mode)")
    tune_allocator()
    torch.manual_seed(0)
    x, clip = load_clip(args.seconds)
    paper, small = Separator(preset("paper")).eval(), load_model(None)
    # name: (runner, module for FLOPs/parameters, precision, fp32 reference runner for accuracy)
    cands = {
        "birdsep paper, module fp32": (module_runner(paper), paper, "fp32", None),
        "birdsep paper, engine fp32": (Engine(paper, torch.float32), paper, "fp32", "birdsep paper, module fp32"),
        "birdsep paper, engine bf16": (Engine(paper, torch.bfloat16), paper, "bf16", "birdsep paper, module fp32"),
    }
    try:
        from asteroid.models import ConvTasNet

        peer = ConvTasNet(n_src=4, n_blocks=8, n_repeats=4, bn_chan=256, hid_chan=512, skip_chan=0,
                          conv_kernel_size=3, kernel_size=22, n_filters=256, stride=11, sample_rate=22050,
                          norm_type="gLN", mask_act="sigmoid").eval()
        cands["asteroid ConvTasNet, module fp32"] = (module_runner(peer), peer, "fp32", None)
        cands["asteroid ConvTasNet, autocast bf16"] = (module_runner(peer, bf16=True), peer, "bf16",
                                                       "asteroid ConvTasNet, module fp32")
    except ImportError:
        print("asteroid not installed (bash benchmarks/setup.sh): no peer rows\n")
    cands.update({
        "birdsep shipped small, module fp32": (module_runner(small), small, "fp32", None),
        "birdsep shipped small, engine fp32": (Engine(small, torch.float32), small, "fp32",
                                               "birdsep shipped small, module fp32"),
        "birdsep shipped small, engine bf16": (Engine(small, torch.bfloat16), small, "bf16",
                                               "birdsep shipped small, module fp32"),
    })
    outputs = {name: run(x) for name, (run, *_) in cands.items()}  # also the warm-up
    best = {name: float("inf") for name in cands}
    for _ in range(args.rounds):
        for name, (run, *_) in cands.items():
            t = time.perf_counter()
            run(x)
            best[name] = min(best[name], time.perf_counter() - t)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for name, (run, module, precision, ref) in cands.items():
        gflop = flops(module, x) / 1e9
        sec = best[name]
        acc = "reference"
        if ref is not None:
            acc = f"{float(si_snr(outputs[ref][0].double(), outputs[name][0].double()).min()):.1f} dB"
        rows.append({"model, how": name, "parameters": f"{count_parameters(module) / 1e6:.2f} M",
                     f"s per {args.seconds:g} s": f"{sec:.3f}", "× real time": f"{args.seconds / sec:.1f}",
                     "GFLOP": f"{gflop:.1f}", "GFLOP/s": f"{gflop / sec:.0f}",
                     "of matmul peak": f"{gflop / sec / peaks[precision]:.0%} ({precision})",
                     "SI-SNR vs fp32 module": acc})
    print(f"input: {args.seconds:g} s of {clip} at 22.05 kHz; best of {args.rounds} interleaved rounds")
    print(f"matrix-multiply peak measured now: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s\n")
    table(rows)
    if "asteroid ConvTasNet, module fp32" in best:
        a32, a16 = best["asteroid ConvTasNet, module fp32"], best["asteroid ConvTasNet, autocast bf16"]
        for mine in ("birdsep paper, engine bf16", "birdsep paper, engine fp32", "birdsep paper, module fp32"):
            print(f"{mine}: {a32 / best[mine]:.2f}× asteroid's fp32 throughput, {a16 / best[mine]:.2f}× its bf16 autocast")
    print("(the paper preset is randomly initialised: its accuracy column is a stress test, not the shipped model's)")


if __name__ == "__main__":
    main()
