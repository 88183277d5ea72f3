#!/usr/bin/env python3
"""Build the compact separator training set that ``scripts/gpu/train.py`` reads on a lent GPU.

Runs here, on the CPU, where the recordings are. Windows are drawn with birdsep's own
:class:`RecordingIndex` / :class:`WindowSampler` (the draw ``birdsep train-separator`` trains on:
windows with energy favoured, read at the file's rate and resampled to the model's), without the
species kept out for evaluation (``benchmarks/splits/heldout_species.txt``) and without
``*/extra_annotated/*``. No two windows overlap, so every byte is distinct audio.

Storage: 8-bit µ-law (µ = 255) codes with a float32 peak scale per 512-sample block, the codes
compressed with xz (lzma). Why: the working tree that travels to the device machine is at most
64 MiB with the repository in it, so the set gets what is left (about 40 MiB, see ``--max-mib``),
and more distinct audio matters more than precision for a few minutes of MixIT on a GPU, which
sees every window hundreds of times. 8-bit µ-law with a scale per 16 ms block keeps about 38 dB
of SNR in every block, loud or faint, above the 30 dB at which MixIT's thresholded SNR loss stops
counting, so the loss cannot tell the codes from the original; and since each window is coded on
its own, a faint window laid 30 dB under a loud one keeps its own 38 dB. xz takes the codes to
about 0.77 bytes a sample: 2.6 times the audio of raw int16 in the same bytes (1.5 times that of
xz-compressed int16). The block scales keep each window's level and its level changes; each
window's RMS is stored too.

Output folder (default ``.gpu/trainset``, git-ignored):

* ``windows.u8.xz``  — (N, L) uint8 µ-law codes, row after row, in concatenated xz streams;
* ``meta.npz``       — ``scales`` (N, L / block) float32, ``rms`` (N,) float32, ``file_id`` (N,) int32;
* ``windows.json``   — where each window comes from: ``[[file, start_s], …]`` and the file list;
* ``manifest.json``  — windows, rate, seconds, codec, source data, exclusions, seed, bytes.

Usage: ``.venv/bin/python scripts/gpu/prepare.py`` (see scripts/gpu/README.md).
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from birdsep.files import read_config, read_list  # noqa: E402
from birdsep.pretrained import resolve  # noqa: E402
from birdsep.separation.data import FRAME_SECONDS, RecordingIndex, WindowSampler  # noqa: E402

FORMAT = "birdsep-gpu-trainset"
VERSION = 1
MU = 255
BLOCK = 512
TRAVEL_LIMIT_MIB = 64.0  # what the device machine receives: the working tree plus carried paths
DEFAULT_EXCLUDE = ("*/extra_annotated/*",)


# ----------------------------------------------------------------------------- codec


def encode(x: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) float → (N, L) uint8 µ-law codes, (N, L // block) float32 peak scales (L a multiple of block)."""
    n, length = x.shape
    blocks = x.reshape(n, length // block, block).astype(np.float64)
    scale = np.abs(blocks).max(axis=-1, keepdims=True)
    y = blocks / np.where(scale > 0, scale, 1.0)
    c = np.sign(y) * np.log1p(MU * np.abs(y)) / np.log1p(MU)  # [-1, 1]
    codes = np.clip(np.round((c + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return codes.reshape(n, length), scale[..., 0].astype(np.float32)


def decode_table() -> np.ndarray:
    """(256,) float32: µ-law code → value in [-1, 1] (the same table train.py uses)."""
    c = np.arange(256, dtype=np.float64) / 127.5 - 1.0
    return (np.sign(c) * np.expm1(np.abs(c) * np.log1p(MU)) / MU).astype(np.float32)


def decode(codes: np.ndarray, scales: np.ndarray, block: int = BLOCK) -> np.ndarray:
    n, length = codes.shape
    y = decode_table()[codes].reshape(n, length // block, block) * scales[..., None]
    return y.reshape(n, length)


# ----------------------------------------------------------------------------- sizes


def travelling_bytes(root: Path) -> int:
    """Bytes of the working tree that travels to the device machine (tracked files and untracked
    files git does not ignore); 0 outside a git checkout."""
    try:
        names = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    total = 0
    for name in names.decode("utf-8", "replace").split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def budget_bytes(max_mib: str, root: Path, margin_mib: float) -> tuple[int, str]:
    if max_mib != "auto":
        return int(float(max_mib) * 2 ** 20), f"--max-mib {max_mib}"
    tree = travelling_bytes(root)
    mib = min(60.0, TRAVEL_LIMIT_MIB - tree / 2 ** 20 - margin_mib)
    return int(mib * 2 ** 20), (f"auto: {TRAVEL_LIMIT_MIB:g} MiB travel limit − {tree / 2 ** 20:.1f} MiB working "
                                f"tree − {margin_mib:g} MiB margin, at most 60 MiB")


# ----------------------------------------------------------------------------- drawing


class DistinctDraw:
    """Windows from a :class:`WindowSampler` (its file and window weights, its reader), none
    overlapping another: the frames a drawn window covers get weight 0."""

    def __init__(self, sampler: WindowSampler):
        self.s = sampler
        self.weights = [w.astype(np.float64).copy() for w in sampler.weights]
        self.k = max(1, int(round(sampler.seconds / FRAME_SECONDS)))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int, float] | None:
        totals = np.array([w.sum() for w in self.weights])
        if totals.sum() <= 0:
            return None
        i = int(rng.choice(len(totals), p=totals / totals.sum()))
        rec, w = self.s.recordings[i], self.weights[i]
        j = int(rng.choice(len(w), p=w / w.sum()))
        start = (self.s.starts[i][j] + rng.uniform(0, 1)) * FRAME_SECONDS
        start = min(start, max(0.0, rec.duration - self.s.seconds))
        first = int(start / FRAME_SECONDS)
        w[max(0, first - self.k):first + self.k + 1] = 0.0  # every window start that would overlap
        x = self.s.read(rec, start)
        length = self.s.length
        if len(x) < length:
            off = int(rng.integers(0, length - len(x) + 1))
            x = np.pad(x, (off, length - len(x) - off))
        return x[:length].astype(np.float32), i, round(float(start), 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=[str(ROOT.parent / "shared" / "data")],
                   help="folders of recordings (default: ../shared/data)")
    p.add_argument("--exclude-from", action="append", default=None, metavar="FILE",
                   help="glob list of recordings to leave out (default: benchmarks/splits/heldout_species.txt)")
    p.add_argument("--exclude", action="append", default=list(DEFAULT_EXCLUDE), metavar="GLOB",
                   help="more globs to leave out (default: */extra_annotated/*)")
    p.add_argument("--out", default=str(ROOT / ".gpu" / "trainset"), help="output folder (default .gpu/trainset)")
    p.add_argument("--model", default="separator_stft_m4", help="the model whose sample rate the set is cut at")
    p.add_argument("--sample-rate", type=int, default=None, help="override the model's rate")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="window length (default 5 s; train.py cuts its 4 s mixtures at random offsets)")
    p.add_argument("--max-mib", default="auto",
                   help="size of the set (default auto: what the 64 MiB travel limit leaves beside the "
                        "working tree, at most 60)")
    p.add_argument("--margin-mib", type=float, default=3.0, help="room left for the tree to grow (auto size)")
    p.add_argument("--max-windows", type=int, default=None, help="stop after this many windows")
    p.add_argument("--chunk", type=int, default=16, help="windows per xz stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-cache", default=str(ROOT / ".gpu" / "data_index.json"),
                   help="scan cache (default .gpu/data_index.json; 'none' for none)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)

    say = (lambda *m: None) if a.quiet else (lambda *m: print(*m, flush=True))
    out = Path(a.out)
    exclude_files = a.exclude_from if a.exclude_from is not None else [str(ROOT / "benchmarks/splits/heldout_species.txt")]
    exclude = tuple(dict.fromkeys(list(a.exclude) + [g for f in exclude_files for g in read_list(f, "exclude list")]))
    rate = a.sample_rate or int(read_config(resolve(a.model), "separator")["sample_rate"])
    budget, why = budget_bytes(a.max_mib, ROOT, a.margin_mib)
    if budget < 2 ** 20:
        say(f"no room for a training set ({why})")
        return 2
    say(f"budget {budget / 2 ** 20:.1f} MiB ({why})")

    t0 = time.time()
    cache = None if a.index_cache == "none" else Path(a.index_cache)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    index = RecordingIndex.build(a.data, exclude, cache=cache, progress=not a.quiet)
    say(f"{len(index.recordings)} recordings, {index.hours:.2f} h (skipped {len(index.skipped)}), "
        f"{time.time() - t0:.0f} s")
    sampler = WindowSampler(index, a.seconds, rate)
    length = -(-sampler.length // BLOCK) * BLOCK  # a whole number of blocks
    draw = DistinctDraw(sampler)
    rng = np.random.default_rng(a.seed)

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("windows.u8.xz", "meta.npz", "windows.json", "manifest.json"):
        (out / stale).unlink(missing_ok=True)
    meta_per_window = 4 * (length // BLOCK) + 4 + 4 + 60  # scales, rms, file id, windows.json entry
    reserve = 64 * 1024 + 200 * len(index.recordings)  # manifest, file list, npz headers
    streams: list[bytes] = []
    scales, rms, file_ids, where = [], [], [], []
    used = 0
    pending: list[tuple[np.ndarray, int, float]] = []
    silent = 0
    exhausted = False
    cap = a.max_windows if a.max_windows is not None else 10 ** 9
    while len(rms) < cap and not exhausted:
        while len(pending) < min(a.chunk, cap - len(rms)):
            got = draw.draw(rng)
            if got is None:
                exhausted = True
                break
            x = got[0]
            r = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
            if r < 1e-6:  # nothing MixIT could learn from
                silent += 1
                continue
            pending.append(got)
        if not pending:
            break
        take = len(pending)
        while take:
            x = np.zeros((take, length), np.float32)
            for k, (w, _, _) in enumerate(pending[:take]):
                x[k, :len(w)] = w
            codes, sc = encode(x)
            blob = lzma.compress(codes.tobytes(), preset=6)
            if used + len(blob) + take * meta_per_window + reserve <= budget:
                break
            take //= 2
        if not take:
            break
        streams.append(blob)
        used += len(blob) + take * meta_per_window
        for k, (w, i, start) in enumerate(pending[:take]):
            scales.append(sc[k])
            rms.append(float(np.sqrt(np.mean(w.astype(np.float64) ** 2))))
            file_ids.append(i)
            where.append((i, start))
        full = take < len(pending)
        pending = pending[take:]
        if len(streams) % 8 == 0:
            say(f"{len(rms)} windows, {used / 2 ** 20:.1f} MiB, {time.time() - t0:.0f} s")
        if full:
            break
    if not rms:
        say("no windows drawn")
        return 2

    with open(out / "windows.u8.xz", "wb") as fh:
        for blob in streams:
            fh.write(blob)
    np.savez(out / "meta.npz", scales=np.stack(scales).astype(np.float32), rms=np.asarray(rms, np.float32),
             file_id=np.asarray(file_ids, np.int32))
    data_roots = [str(Path(d).resolve()) for d in a.data]

    def rel(path: str) -> str:
        for root in data_roots:
            if path.startswith(root + os.sep):
                return os.path.relpath(path, root)
        return path

    used_files = sorted(set(file_ids))
    names = {i: n for n, i in enumerate(used_files)}
    (out / "windows.json").write_text(json.dumps({
        "files": [rel(str(Path(index.recordings[i].path).resolve())) for i in used_files],
        "windows": [[names[i], s] for i, s in where],
    }, separators=(",", ":")) + "\n")
    # quality of the codes, measured on the last chunk
    check = decode(codes[:take], sc[:take])
    snr = 10 * np.log10(np.sum(x[:take].astype(np.float64) ** 2, 1) /
                        np.maximum(np.sum((x[:take] - check) ** 2, 1), 1e-30) + 1e-30)
    n = len(rms)
    files_bytes = sum((out / f).stat().st_size for f in ("windows.u8.xz", "meta.npz", "windows.json"))
    manifest = {
        "format": FORMAT, "version": VERSION,
        "windows": n, "sample_rate": rate, "seconds": length / rate, "samples": length,
        "audio_minutes": round(n * length / rate / 60, 2),
        "codec": {"codes": "uint8 mu-law", "mu": MU, "block": BLOCK, "scales": "float32 peak per block",
                  "container": "xz (lzma) streams, rows of `samples` codes", "snr_db_median": round(float(np.median(snr)), 2)},
        "source": {"data": data_roots, "exclude": list(exclude), "recordings": len(index.recordings),
                   "hours": round(index.hours, 3), "files_used": len(used_files),
                   "drawn_with": "birdsep.separation.data.WindowSampler, windows not overlapping"},
        "skipped_silent": silent, "seed": a.seed,
        "bytes": {"windows.u8.xz": (out / "windows.u8.xz").stat().st_size, "meta.npz": (out / "meta.npz").stat().st_size,
                  "windows.json": (out / "windows.json").stat().st_size},
        "budget_bytes": budget, "budget": why,
        "bytes_per_sample": round((out / "windows.u8.xz").stat().st_size / (n * length), 4),
        "mean_rms_dbfs": round(float(20 * np.log10(np.mean(rms) + 1e-12)), 2),
        "seconds_to_build": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = files_bytes + (out / "manifest.json").stat().st_size
    say(f"{n} windows of {length / rate:g} s at {rate} Hz ({manifest['audio_minutes']:.1f} min of audio, "
        f"{len(used_files)} files), {total / 2 ** 20:.2f} MiB in {out}; code SNR {np.median(snr):.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
