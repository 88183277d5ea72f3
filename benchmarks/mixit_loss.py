"""MixIT loss + backward: birdsep's vectorised loss against asteroid's MixITLossWrapper,
on the same tensors (batch 8 × 6 s at 22.05 kHz), with both minima side by side; and one
training step of each separator preset.

    bash benchmarks/setup.sh && .venv/bin/python benchmarks/mixit_loss.py
"""
from __future__ import annotations

import argparse

import torch

from common import best_of, header, table

from birdsep.separation.mixit import mixit_loss, neg_snr_loss
from birdsep.separation.model import Separator, count_parameters, preset


def asteroid_loss(refs, srcs):
    from asteroid.losses import MixITLossWrapper

    def pair_loss(est, ref):  # (B, 2, T) each → (B,): the same thresholded SNR, summed over mixtures
        return neg_snr_loss(ref, est).sum(1)

    return MixITLossWrapper(pair_loss, generalized=True)(srcs, refs, return_est=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--sources", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    header("MixIT loss + backward, and one training step per preset")
    t = int(args.seconds * 22050)
    rows = []
    for m in args.sources:
        g = torch.Generator().manual_seed(m)
        refs = torch.randn(args.batch, 2, t, generator=g)
        base = torch.randn(args.batch, m, t, generator=g)

        def run(fn):
            srcs = base.clone().requires_grad_(True)
            loss = fn(refs, srcs)
            loss = loss.mean() if loss.dim() else loss
            loss.backward()
            return loss.item()

        ours = run(lambda r, s: mixit_loss(r, s)[0])
        t_ours = best_of(lambda: run(lambda r, s: mixit_loss(r, s)[0]), repeats=5)
        try:
            theirs = run(asteroid_loss)
            t_theirs = best_of(lambda: run(asteroid_loss), repeats=1, warmup=0)
            ratio = f"{t_theirs / t_ours:.0f}×"
            theirs_s, t_theirs_s = f"{theirs:.4f}", f"{t_theirs:.3f}"
        except ImportError:
            theirs_s = t_theirs_s = ratio = "asteroid not installed"
        rows.append({"M": m, "assignments": 2 ** m, "birdsep min loss": f"{ours:.4f}", "asteroid min loss": theirs_s,
                     "birdsep s": f"{t_ours:.4f}", "asteroid s": t_theirs_s, "speed-up": ratio})
    print(f"MixIT loss + backward, batch {args.batch} × {args.seconds:g} s (mean loss over the batch, dB)")
    table(rows)

    if args.skip_training:
        return
    rows = []
    for name in ("small", "paper"):
        cfg = preset(name)
        model = Separator(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = 2
        refs = torch.randn(batch, 2, int(cfg.clip_seconds * cfg.sample_rate))

        def step():
            loss, _ = mixit_loss(refs, model(refs.sum(1)))
            opt.zero_grad()
            loss.mean().backward()
            opt.step()

        for precision in ("fp32", "bf16"):
            def timed():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    step()
            sec = best_of(timed, repeats=2 if name == "small" else 1)
            rows.append({"preset": name, "parameters": f"{count_parameters(model) / 1e6:.2f} M",
                         "basis": f"{cfg.window_ms:g}/{cfg.hop_ms:g} ms", "batch": f"{batch} × {cfg.clip_seconds:g} s",
                         "precision": precision, "step s": f"{sec:.2f}",
                         "audio s per s": f"{batch * cfg.clip_seconds * 2 / sec:.2f}"})
    print("One training step (forward + MixIT + backward + Adam); 'audio s per s' counts both mixtures")
    table(rows)


if __name__ == "__main__":
    main()
