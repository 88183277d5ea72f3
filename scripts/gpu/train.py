#!/usr/bin/env python3
"""Fine-tune a birdsep separator with MixIT on a lent GPU, from the set ``prepare.py`` built.

Pure PyTorch (no soundfile, no soxr, no Lightning): the device machine has none of the audio
libraries. The whole training set (µ-law codes) sits on the GPU; every step draws a batch of
mixtures of mixtures there:

* N = 2 reference windows per mixture (or ``--references`` N for a ``--references-share`` of
  the steps), distinct windows, each a random ``clip_seconds`` crop at a random polarity;
* levels as ``birdsep.separation.data.draw_mom`` draws them: with ``--level-gap`` G > 0 one
  reference at U(−40, −15) dBFS RMS and every other one U(0, G) dB below it, in random order
  (G = 0: each at its own U(−40, −15) dBFS);

then the MixIT loss (birdsep.separation.mixit, thresholded SNR, 30 dB), Adam, gradient norm
clipped at 5, bf16 autocast on CUDA, a short warm-up and a cosine decay over the time allowed.

Every ``--checkpoint-minutes`` (and at the end, or on SIGTERM) the model is written to OUT as
``model.safetensors`` + ``config.json`` (birdsep's format, each file written to a temporary file
and renamed), so ``birdsep separate --model OUT`` loads it. Some source files of the set are held
out: fixed mixtures of their windows at level differences of 0, 6, … 24 dB are scored at every
checkpoint (MoMi, the quieter recording's SI-SNR improvement, the share of mixtures losing a
recording: an estimate under −10 dB SI-SNR), the model with the best mean MoMi is kept in
OUT/best, and OUT/log.jsonl, OUT/summary.json record the run.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 scripts/gpu/train.py --data .gpu/trainset --minutes 8 --out $OUT
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import signal
import sys
import time
from pathlib import Path

T0 = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from birdsep.files import write_json  # noqa: E402
from birdsep.pretrained import load_model  # noqa: E402
from birdsep.separation.mixit import best_assignment, mixit_loss, si_snr  # noqa: E402
from birdsep.separation.model import save_model  # noqa: E402

FORMAT = "birdsep-gpu-trainset"
MU = 255
LEVEL_LOW, LEVEL_HIGH = -40.0, -15.0  # dBFS RMS of the loudest reference (birdsep.separation.data.normalise)
VAL_LEVEL = -25.0  # dBFS RMS of the louder reference in the held-out mixtures
LOST_DB = -10.0  # a reference whose estimate is below this SI-SNR is lost


def mulaw_table() -> torch.Tensor:
    """(256,) float32: µ-law code → value in [-1, 1] (prepare.py's codec)."""
    c = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    return (torch.sign(c) * torch.expm1(c.abs() * math.log1p(MU)) / MU).float()


class TrainSet:
    """The prepared windows on ``device``: codes (N, L) uint8, block scales (N, L / block)."""

    def __init__(self, folder: Path, device: torch.device):
        self.manifest = json.loads((folder / "manifest.json").read_text())
        if self.manifest.get("format") != FORMAT:
            raise SystemExit(f"{folder}: not a training set written by scripts/gpu/prepare.py")
        n, length = int(self.manifest["windows"]), int(self.manifest["samples"])
        self.block = int(self.manifest["codec"]["block"])
        raw = lzma.decompress((folder / "windows.u8.xz").read_bytes())  # concatenated streams
        if len(raw) != n * length:
            raise SystemExit(f"{folder}: windows.u8.xz holds {len(raw)} codes, the manifest says {n} × {length}")
        meta = np.load(folder / "meta.npz")
        self.codes = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(n, length).copy()).to(device)
        self.scales = torch.from_numpy(meta["scales"].astype(np.float32)).to(device)
        self.file_id = meta["file_id"].astype(np.int64)
        self.table = mulaw_table().to(device)
        self.sample_rate, self.length, self.count = int(self.manifest["sample_rate"]), length, n
        self.device = device

    def crops(self, rows: torch.Tensor, offsets: torch.Tensor, samples: int) -> torch.Tensor:
        """rows, offsets (K,) → (K, samples) float32 waveforms."""
        pos = offsets[:, None] + torch.arange(samples, device=self.device)  # (K, T)
        codes = self.codes[rows].gather(1, pos).long()
        scales = self.scales[rows].gather(1, torch.div(pos, self.block, rounding_mode="floor"))
        return self.table[codes] * scales


def set_levels(x: torch.Tensor, levels_db: torch.Tensor) -> torch.Tensor:
    """x (B, N, T) each window scaled to the RMS ``levels_db`` (B, N) dBFS; silent windows stay as they are."""
    rms = x.pow(2).mean(-1).sqrt()
    gain = torch.where(rms > 1e-7, 10.0 ** (levels_db / 20) / rms.clamp_min(1e-7), torch.ones_like(rms))
    return x * gain[..., None]


def draw_batch(data: TrainSet, pool: torch.Tensor, size: int, refs: int, samples: int, level_gap: float,
               gen: torch.Generator) -> torch.Tensor:
    """(B, N, T) reference mixtures: distinct windows of ``pool``, random crops, polarities and levels."""
    dev = data.device
    pick = torch.rand(size, len(pool), generator=gen, device=dev).topk(refs, dim=1).indices  # distinct per row
    rows = pool[pick].reshape(-1)
    offsets = torch.randint(0, data.length - samples + 1, (rows.numel(),), generator=gen, device=dev)
    x = data.crops(rows, offsets, samples).view(size, refs, samples)
    sign = torch.randint(0, 2, (size, refs, 1), generator=gen, device=dev).float() * 2 - 1
    u = torch.rand(size, refs, generator=gen, device=dev)
    if level_gap > 0:
        top = LEVEL_LOW + (LEVEL_HIGH - LEVEL_LOW) * u[:, :1]
        gaps = torch.rand(size, refs, generator=gen, device=dev) * level_gap
        gaps[:, 0] = 0.0
        order = torch.rand(size, refs, generator=gen, device=dev).argsort(dim=1)  # the quiet ones anywhere
        levels = (top - gaps).gather(1, order)
    else:
        levels = LEVEL_LOW + (LEVEL_HIGH - LEVEL_LOW) * u
    return set_levels(x * sign, levels)


def validation_set(data: TrainSet, pool: np.ndarray, gaps: list[float], per_gap: int, samples: int,
                   seed: int) -> dict[float, torch.Tensor]:
    """Fixed MoMs (per_gap, 2, T) per level difference: two windows of ``pool`` brought to equal
    RMS, the second then lowered by the gap."""
    rng = np.random.default_rng([seed, 1])
    out = {}
    for gap in gaps:
        rows = np.stack([rng.choice(pool, 2, replace=False) for _ in range(per_gap)]).reshape(-1)
        offsets = rng.integers(0, data.length - samples + 1, len(rows))
        x = data.crops(torch.from_numpy(rows).to(data.device), torch.from_numpy(offsets).to(data.device), samples)
        levels = torch.tensor([[VAL_LEVEL, VAL_LEVEL - gap]] * per_gap, device=data.device)
        out[gap] = set_levels(x.view(per_gap, 2, samples), levels)
    return out


@torch.no_grad()
def evaluate(model, moms: dict[float, torch.Tensor], autocast, batch: int = 32) -> dict:
    model.eval()
    result = {}
    for gap, refs in moms.items():
        momi, quiet, lost = [], [], []
        for i in range(0, len(refs), batch):
            r = refs[i:i + batch].float()
            mix = r.sum(1)
            with autocast():
                sources = model(mix)
            sources = sources.float()
            remixed = torch.bmm(best_assignment(r, sources), sources)
            gain = si_snr(r, remixed) - si_snr(r, mix[:, None].expand_as(r))  # (b, 2)
            momi.append(gain.mean(1))
            quiet.append(gain[:, 1])
            lost.append((si_snr(r, remixed) < LOST_DB).any(1).float())
        result[f"{gap:g}"] = {"momi": round(torch.cat(momi).mean().item(), 3),
                              "quiet_sisnri": round(torch.cat(quiet).mean().item(), 3),
                              "lost": round(torch.cat(lost).mean().item(), 4)}
    model.train()
    if result:
        result["mean_momi"] = round(float(np.mean([v["momi"] for v in result.values()])), 3)
    return result


def split(data: TrainSet, share: float, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): whole source files held out, about ``share`` of the windows."""
    all_rows = np.arange(data.count)
    want = min(cap, int(round(share * data.count)))
    if share <= 0 or want < 2 or data.count - want < 2:
        return all_rows, np.zeros(0, np.int64)
    files = np.random.default_rng([seed, 2]).permutation(np.unique(data.file_id))
    held = []
    for f in files:
        held.extend(np.flatnonzero(data.file_id == f).tolist())
        if len(held) >= want:
            break
    held_set = set(held)
    train = np.array([r for r in all_rows if r not in held_set])
    if len(train) < 2:
        return all_rows, np.zeros(0, np.int64)
    return train, np.array(sorted(held))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=".gpu/trainset", help="folder written by prepare.py")
    p.add_argument("--out", default=os.environ.get("OUT") or ".gpu/run", help="where the model goes (default $OUT, else .gpu/run)")
    p.add_argument("--init-from", default="separator_stft_m4", help="shipped model name or model folder to start from")
    p.add_argument("--minutes", type=float, default=8.0, help="wall time for the whole script (default 8)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps as well")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: the rate falls to a tenth over the time allowed")
    p.add_argument("--level-gap", type=float, default=30.0, help="other references U(0, G) dB below the first")
    p.add_argument("--references", type=int, default=2, help="N reference windows for a share of the steps")
    p.add_argument("--references-share", type=float, default=0.5)
    p.add_argument("--snr-max", type=float, default=30.0)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--clip-seconds", type=float, default=None, help="mixture length (default: the model's)")
    p.add_argument("--checkpoint-minutes", type=float, default=1.0)
    p.add_argument("--print-seconds", type=float, default=15.0)
    p.add_argument("--val-share", type=float, default=0.05, help="share of windows (whole files) held out")
    p.add_argument("--val-max", type=int, default=48)
    p.add_argument("--val-gaps", default="0,6,12,18,24")
    p.add_argument("--val-per-gap", type=int, default=32)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (costs start-up time)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    bf16 = a.precision == "bf16" or (a.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    data = TrainSet(Path(a.data), device)
    model = load_model(a.init_from, device=str(device))
    cfg = model.config
    if cfg.sample_rate != data.sample_rate:
        raise SystemExit(f"the model runs at {cfg.sample_rate} Hz, the training set at {data.sample_rate} Hz")
    if not 2 <= a.references <= cfg.num_sources:
        raise SystemExit(f"--references must be 2 … {cfg.num_sources}")
    samples = min(data.length, int(round((a.clip_seconds or cfg.clip_seconds) * cfg.sample_rate)))
    train_rows, val_rows = split(data, a.val_share, a.val_max, a.seed)
    pool = torch.from_numpy(train_rows).to(device)
    gaps = [float(g) for g in a.val_gaps.split(",") if g.strip()]
    val = validation_set(data, val_rows, gaps, a.val_per_gap, samples, a.seed) if len(val_rows) >= 2 else {}
    net = torch.compile(model) if a.compile else model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator(device=device)
    gen.manual_seed(a.seed)
    deadline = T0 + a.minutes * 60
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, bf16 {bf16}; {data.count} windows ({len(train_rows)} train, {len(val_rows)} held out) of "
          f"{data.length / data.sample_rate:g} s, {samples / cfg.sample_rate:g} s crops; batch {a.batch_size}, "
          f"level gap {a.level_gap:g} dB, lr {a.lr:g}; from {a.init_from}; start-up {time.time() - T0:.1f} s", flush=True)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    log_path = out / "log.jsonl"
    history: list[dict] = []
    best = {"score": -math.inf, "step": None}
    summary = {"args": vars(a), "device": name, "bf16": bf16, "trainset": data.manifest,
               "train_windows": len(train_rows), "held_out_windows": len(val_rows), "model": cfg.to_dict()}

    def checkpoint(step: int, losses: list[float], final: bool = False) -> None:
        t = time.time()
        if step > 0:
            save_model(model, out)
        scores = evaluate(model, val, autocast) if val else {}
        entry = {"step": step, "elapsed_s": round(t - T0, 1), "loss": round(float(np.mean(losses)), 4) if losses else None,
                 "val": scores, "final": final}
        if scores and step > 0 and scores["mean_momi"] > best["score"]:
            best.update(score=scores["mean_momi"], step=step)
            save_model(model, out / "best")
        entry["eval_s"] = round(time.time() - t, 1)
        history.append(entry)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        write_json(out / "summary.json", {**summary, "steps": step, "best": best, "history": history})
        if scores:
            print(f"[checkpoint] step {step}: MoMi by gap " +
                  " ".join(f"{g}:{v['momi']:.2f}/{v['quiet_sisnri']:.2f}/{v['lost']:.2f}"
                           for g, v in scores.items() if g != "mean_momi") +
                  f" (MoMi/quiet SI-SNRi/lost), mean {scores['mean_momi']:.2f}; best step {best['step']}", flush=True)
        else:
            print(f"[checkpoint] step {step} written", flush=True)

    checkpoint(0, [])
    step, losses, skipped = 0, [], 0
    train_start = time.time()
    last_print = last_ckpt = train_start
    printed_step = 0
    while time.time() < deadline and (a.steps is None or step < a.steps) and stop["signal"] is None:
        frac = min(1.0, (time.time() - train_start) / max(1.0, deadline - train_start))
        scale = min(1.0, (step + 1) / max(1, a.warmup_steps))
        if a.schedule == "cosine":
            scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = a.lr * scale
        refs = a.references if a.references > 2 and torch.rand(1, generator=gen, device=device).item() < a.references_share else 2
        batch = draw_batch(data, pool, a.batch_size, refs, samples, a.level_gap, gen)
        with autocast():
            sources = net(batch.sum(1))
        loss, _ = mixit_loss(batch, sources.float(), a.snr_max)
        loss = loss.mean()
        if not torch.isfinite(loss):
            skipped += 1
            opt.zero_grad(set_to_none=True)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        step += 1
        losses.append(loss.item())
        now = time.time()
        if now - last_print >= a.print_seconds:
            rate = (step - printed_step) / (now - last_print)
            print(f"step {step}  {rate:.2f} steps/s  loss {np.mean(losses[-(step - printed_step):]):.3f}  "
                  f"lr {a.lr * scale:.2e}  {now - T0:.0f} s", flush=True)
            last_print, printed_step = now, step
        if now - last_ckpt >= a.checkpoint_minutes * 60:
            checkpoint(step, losses[-200:])
            last_ckpt = time.time()
    if stop["signal"] is not None:
        print(f"stopped by signal {stop['signal']}", flush=True)
    checkpoint(step, losses[-200:], final=True)
    elapsed = time.time() - train_start
    summary.update(skipped_nonfinite=skipped, train_seconds=round(elapsed, 1),
                   steps_per_second=round(step / max(elapsed, 1e-9), 3))
    write_json(out / "summary.json", {**summary, "steps": step, "best": best, "history": history})
    print(f"done: {step} steps in {elapsed:.0f} s ({step / max(elapsed, 1e-9):.2f} steps/s), model in {out}"
          + (f", best held-out MoMi at step {best['step']} in {out / 'best'}" if best["step"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
