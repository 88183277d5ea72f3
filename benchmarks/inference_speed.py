"""Separator inference speed on the CPU, against a peer of the same size in the same run.

birdsep's `paper` preset (8.89 M parameters, M = 4) against asteroid 0.7.0's ConvTasNet built
to the same size (TDConvNet 4 × 8 blocks, 256/512 channels, no skip path, a free 22-sample /
11-hop filterbank of 256 filters: 8.89 M parameters), on the same 6 s of 22.05 kHz audio; the
shipped small model beside them. Achieved GFLOP/s (counted by torch's FlopCounterMode) is
compared with a matrix-multiply peak measured in the same run.

    bash benchmarks/setup.sh && .venv/bin/python benchmarks/inference_speed.py
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import best_of, header, table

from birdsep.pretrained import load_model
from birdsep.separation.model import Separator, count_parameters, preset


def matmul_peak(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    sec = best_of(lambda: a @ b, repeats=5)
    return 2 * n ** 3 / sec / 1e9


def flops(model, x) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("Separator inference (fp32, inference_mode)")
    x = torch.randn(1, int(args.seconds * 22050))
    peak = matmul_peak()
    models = {"birdsep paper (M=4)": Separator(preset("paper")).eval(),
              "birdsep shipped small (M=4)": load_model(None)}
    try:
        from asteroid.models import ConvTasNet

        models["asteroid ConvTasNet, same size"] = ConvTasNet(
            n_src=4, n_blocks=8, n_repeats=4, bn_chan=256, hid_chan=512, skip_chan=0, conv_kernel_size=3,
            kernel_size=22, n_filters=256, stride=11, sample_rate=22050, norm_type="gLN", mask_act="sigmoid").eval()
    except ImportError:
        print("asteroid not installed (bash benchmarks/setup.sh): no peer row\n")
    rows, times = [], {}
    for name, model in models.items():
        def run():
            with torch.inference_mode():
                model(x)
        sec = best_of(run, repeats=args.repeats)
        times[name] = sec
        gflop = flops(model, x) / 1e9
        rows.append({"model": name, "parameters": f"{count_parameters(model) / 1e6:.2f} M",
                     f"s per {args.seconds:g} s": f"{sec:.3f}", "× real time": f"{args.seconds / sec:.1f}",
                     "GFLOP": f"{gflop:.1f}", "GFLOP/s": f"{gflop / sec:.1f}", "of matmul peak": f"{gflop / sec / peak:.0%}"})
    print(f"matrix-multiply peak measured now (2048², fp32): {peak:.1f} GFLOP/s\n")
    table(rows)
    peer = times.get("asteroid ConvTasNet, same size")
    if peer:
        print(f"paper preset throughput / asteroid's: {peer / times['birdsep paper (M=4)']:.2f}×")


if __name__ == "__main__":
    main()
