"""MoMi per CPU-hour: separator variants trained at an equal CPU budget, scored on species
they never heard (the paper's Table 1, re-asked for a 2-core CPU).

Every variant trains with the same MixIT recipe as ``birdsep train-separator`` (Adam, lr
1e-3, gradient clipping 5, batches of 4 mixtures of mixtures of 4 s, energy-favouring
windows) on all of ../shared/data except the species in ``splits/heldout_species.txt``,
until its process has used ``--budget`` CPU-minutes (data loading included: the loader runs
in the process). Each is then scored on the same 200 seeded 6 s mixtures of mixtures drawn
only from recordings of the held-out species:

* ``MoMi 11k``: the references band-limited to 0–11.025 kHz (drawn at 22.05 kHz, upsampled
  for 32 kHz models), so every variant faces the same task;
* ``MoMi full``: for 32 kHz models, the full-band (0–16 kHz) references as well.

Intervals are 95 % bootstrap intervals over the mixtures. ``infer ×RT`` is the inference
engine's speed on one thread (seconds of audio per second, 12 s blocks, the variant's
precision). Runs resume: each variant's state is saved in ``--out`` every few minutes.

    .venv/bin/python benchmarks/separator_ablation.py --budget 20 --threads 1 \\
        --out ~/birdsep-runs/ablation
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import header, table

from birdsep.separation.data import MoMDataset, RecordingIndex, WindowSampler, fixed_moms
from birdsep.separation.mixit import mixit_loss, momi, sparsity_loss
from birdsep.separation.model import Separator, SeparatorConfig, count_parameters, preset

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
HELDOUT = HERE / "splits" / "heldout_species.txt"

SPARSE_WEIGHT = 0.5  # weight of the ℓ1/ℓ2 sparsity loss in the -sparse variant
SMALL_TDCN = dict(bottleneck=128, hidden=256, repeats=2, blocks=8)
WIDE_TDCN = dict(bottleneck=256, hidden=512, repeats=2, blocks=8)
STFT32 = dict(basis="stft", window_ms=32.0, hop_ms=8.0)

#: name → (model config, training precision, what it asks)
VARIANTS: dict[str, tuple[SeparatorConfig, str, str]] = {
    "learned-2.5ms": (preset("small"), "bf16", "today's small preset"),
    "stft-32/8": (SeparatorConfig(**STFT32, **SMALL_TDCN, clip_seconds=4.0), "bf16", "STFT basis, same TDCN++"),
    "stft-16/4": (SeparatorConfig(basis="stft", window_ms=16.0, hop_ms=4.0, **SMALL_TDCN, clip_seconds=4.0), "bf16",
                  "shorter STFT window"),
    "stft-32/8-wide": (SeparatorConfig(**STFT32, **WIDE_TDCN, clip_seconds=4.0), "bf16", "width 256/512"),
    "stft-32/8-deep": (SeparatorConfig(**STFT32, **{**SMALL_TDCN, "repeats": 4}, clip_seconds=4.0), "bf16",
                       "depth 4 × 8 blocks"),
    "stft-32/8-wide-fp32": (SeparatorConfig(**STFT32, **WIDE_TDCN, clip_seconds=4.0), "fp32", "fp32 training"),
    "stft-32/8-wide-32k": (SeparatorConfig(sample_rate=32000, **STFT32, **WIDE_TDCN, clip_seconds=4.0), "bf16",
                           "32 kHz, full band (= preset stft-wide)"),
    "stft-32/8-32k": (SeparatorConfig(sample_rate=32000, **STFT32, **SMALL_TDCN, clip_seconds=4.0), "bf16",
                      "32 kHz, full band (= preset stft)"),
    "stft-32/8-32k-sparse": (SeparatorConfig(sample_rate=32000, **STFT32, **SMALL_TDCN, clip_seconds=4.0), "bf16",
                             f"preset stft + sparsity loss {SPARSE_WEIGHT:g}"),
}

BATCH, LR, GRAD_CLIP, SEED = 4, 1e-3, 5.0, 0
EVAL_MIXTURES, EVAL_SECONDS, EVAL_SEED = 200, 6.0, 1234


def read_globs(path: Path) -> tuple[str, ...]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(g for g in lines if g)


def heldout_files(data: Path) -> list[str]:
    import fnmatch

    from birdsep.separation.data import collect

    globs = read_globs(HELDOUT)
    return [str(f) for f in collect([str(data)]) if any(fnmatch.fnmatch(str(f), g) for g in globs)]


def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def eval_sets(data: Path, cache: Path) -> dict[int, torch.Tensor]:
    """The fixed held-out MoMs: {22050: (K, 2, T) band-limited, 32000: (K, 2, T) full band}."""
    files = cache / "eval_moms.pt"
    if files.exists():
        return torch.load(files)
    index = RecordingIndex.build(heldout_files(data), cache=cache / "heldout_index.json", progress=False)
    sets = {}
    for rate in (22050, 32000):
        sampler = WindowSampler(index, EVAL_SECONDS, rate)
        sets[rate] = torch.stack(list(fixed_moms(sampler, EVAL_MIXTURES, EVAL_SEED)))
    sets["recordings"] = len(index.recordings)
    torch.save(sets, files)
    return sets


def evaluate(model: Separator, sets: dict) -> dict:
    from birdsep import audio

    rate = model.config.sample_rate
    scores = {}
    with torch.inference_mode():
        narrow = sets[22050]
        if rate != 22050:  # the same band-limited task, upsampled to the model's rate
            narrow = torch.from_numpy(np.stack([audio.resample(m.numpy(), 22050, rate) for m in narrow]))
        tasks = {"11k": narrow}
        if rate == 32000:
            tasks["full"] = sets[32000]
        for name, moms in tasks.items():
            vals = np.concatenate([momi(chunk, model(chunk.sum(1))).numpy() for chunk in moms.split(8)])
            lo, hi = bootstrap(vals)
            scores[name] = (float(vals.mean()), lo, hi)
    return scores


def inference_speed(model: Separator, precision: str) -> float:
    from birdsep.separation.engine import engine_for

    engine = engine_for(model, precision)
    x = torch.randn(1, int(12 * model.config.sample_rate)) * 0.05
    engine(x)
    t = time.perf_counter()
    for _ in range(3):
        engine(x)
    return 36.0 / (time.perf_counter() - t)


def train_variant(name: str, cfg: SeparatorConfig, precision: str, budget_s: float, sampler: WindowSampler,
                  folder: Path, sets: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    torch.manual_seed(SEED)
    model = Separator(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    state_file = folder / "state.pt"
    step, used = 0, 0.0
    if state_file.exists():
        state = torch.load(state_file)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, used = state["step"], state["cpu_seconds"]
    stream = iter(torch.utils.data.DataLoader(MoMDataset(sampler, seed=SEED * 1000 + step), batch_size=BATCH,
                                              num_workers=0))
    start, last_save, losses = time.process_time() - used, time.process_time(), []
    model.train()
    while time.process_time() - start < budget_s:
        refs = next(stream)  # (B, 2, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            sources = model(refs.sum(1))  # (B, M, T)
        loss = mixit_loss(refs.float(), sources.float())[0].mean()
        if name.endswith("-sparse"):
            loss = loss + SPARSE_WEIGHT * sparsity_loss(sources).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        losses.append(loss.item())
        if time.process_time() - last_save > 120:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "cpu_seconds": time.process_time() - start}, state_file)
            last_save = time.process_time()
            print(f"  {name}: step {step}, {(time.process_time() - start) / 60:.1f} CPU-min, "
                  f"loss {np.mean(losses[-50:]):.2f}", flush=True)
    used = time.process_time() - start
    model.eval()
    scores = evaluate(model, sets)
    result = {
        "variant": name, "rate": cfg.sample_rate, "basis": f"{cfg.basis} {cfg.window_ms:g}/{cfg.hop_ms:g} ms",
        "frames/s": round(cfg.frames_per_second), "TDCN++": f"{cfg.repeats}×{cfg.blocks}, {cfg.bottleneck}/{cfg.hidden}",
        "params": count_parameters(model), "precision": precision, "steps": step, "cpu_min": used / 60,
        "momi_11k": scores["11k"], "momi_full": scores.get("full"), "infer_rt": inference_speed(model, precision),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
    }
    from birdsep.separation.model import save_model

    save_model(model, folder / "model")
    result_file.write_text(json.dumps(result, indent=2))
    state_file.unlink(missing_ok=True)
    return result


def score_models(folders: list[str], sets: dict, json_out: str | None = None) -> None:
    """MoMi of finished models (e.g. the shipped ones) on the ablation's held-out MoMs;
    ``json_out``: also write ``{folder: {"11k": [mean, lo, hi], "full": …}}`` there."""
    from birdsep.pretrained import load_model

    rows, found = [], {}
    for folder in folders:
        model = load_model(folder)
        cfg = model.config
        scores = evaluate(model, sets)
        found[folder] = scores
        rows.append({"model": folder, "kHz": f"{cfg.sample_rate / 1000:g}", "M": cfg.num_sources,
                     "basis": f"{cfg.basis} {cfg.window_ms:g}/{cfg.hop_ms:g} ms", "params": f"{count_parameters(model) / 1e6:.2f} M",
                     "MoMi 11k dB [95% CI]": fmt(scores["11k"]), "MoMi full dB": fmt(scores.get("full"))})
    table(rows)
    if json_out:
        Path(json_out).write_text(json.dumps(found, indent=2))


def fmt(score) -> str:
    if not score:
        return "–"
    mean, lo, hi = score
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=20.0, help="CPU-minutes of training per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=os.path.expanduser("~/birdsep-runs/ablation"))
    ap.add_argument("--score", nargs="+", default=None, metavar="MODEL",
                    help="only score these model folders / run directories on the same held-out MoMs")
    ap.add_argument("--json", default=None, metavar="FILE", help="with --score: also write the scores as JSON")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"real audio not found at {data}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header("MoMi of finished models on held-out species" if args.score else
           f"Separator variants at {args.budget:g} CPU-minutes each, MoMi on held-out species")
    sets = eval_sets(data, out)
    if args.score:
        score_models(args.score, sets, args.json)
        return
    train_index = RecordingIndex.build([str(data)], read_globs(HELDOUT), cache=out / "train_index.json", progress=False)
    print(f"training audio: {len(train_index.recordings)} recordings, {train_index.hours:.2f} h; held out: "
          f"{sets['recordings']} recordings of {len(read_globs(HELDOUT))} species, {EVAL_MIXTURES} MoMs × "
          f"{EVAL_SECONDS:g} s", flush=True)
    rows = []
    for name in args.variants:
        cfg, precision, what = VARIANTS[name]
        print(f"{name}: {what}", flush=True)
        sampler = WindowSampler(train_index, cfg.clip_seconds, cfg.sample_rate)
        r = train_variant(name, cfg, precision, args.budget * 60, sampler, out / name.replace("/", "-"), sets)
        rows.append({
            "variant": name, "kHz": f"{r['rate'] / 1000:g}", "basis": r["basis"], "frames/s": r["frames/s"],
            "TDCN++": r["TDCN++"], "params": f"{r['params'] / 1e6:.2f} M", "train": r["precision"],
            "steps": r["steps"], "CPU-min": f"{r['cpu_min']:.1f}", "MoMi 11k dB [95% CI]": fmt(r["momi_11k"]),
            "MoMi full dB": fmt(r["momi_full"]), "infer ×RT": f"{r['infer_rt']:.0f}",
        })
    table(rows)


if __name__ == "__main__":
    main()
