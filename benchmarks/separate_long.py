"""`birdsep separate` end to end on long recordings: real-time factor, peak memory and where
the time goes.

Builds 1, 10 and 60-minute recordings by tiling a real field recording from ../shared/data
(32 kHz Pennsylvania dawn chorus, written as FLAC block by block), then times the whole
command — decoding, resampling, separation, writing — in a fresh process each, reading the
peak resident memory (RSS) from the operating system, with the seconds of each stage (decode,
resample, model, encode, picture, writing; ``benchmarks/stages.py``) measured inside it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/separate_long.py [--minutes 1 10 60] \
        [--model NAME_OR_PATH ...] [--compare] [--previous COMMIT] [--plot]

Several ``--model`` run alternately (each with the defaults), with speed ratios to the first:
``--model stft_m4 --model small_m4`` compares today's default separator with the earlier one.
--compare also runs each length with the settings birdsep used before the inference engine
(6 s blocks, 50 % overlap, fp32), alternating with the defaults, and prints their ratio.
--previous runs the same command with the birdsep of an earlier commit (a ``git worktree`` of it
on PYTHONPATH, this checkout's virtual environment), alternating, for the ratio to it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from common import header
from stages import load_average, previous, profiled, report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = DATA / "soundscapes" / "pennsylvania" / "dawn_chorus_1min.flac"

def make_recording(path: Path, minutes: float) -> None:
    x, sr = sf.read(SOURCE, dtype="float32")
    if x.ndim == 2:
        x = x.mean(1)
    total = int(minutes * 60 * sr)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        done = 0
        while done < total:
            n = min(len(x), total - done)
            f.write(x[:n])
            done += n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--model", action="append", default=None,
                    help="a shipped model's name, a model folder or a run directory (repeatable)")
    ap.add_argument("--compare", action="store_true", help="also run the earlier settings, for a ratio")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (alternating); the median is shown")
    ap.add_argument("--previous", action="append", default=[], metavar="COMMIT",
                    help="also run the birdsep of this commit (e.g. 7af8eb6), for the ratio to it (repeatable)")
    ap.add_argument("--plot", action="store_true", help="draw separation.png too (birdsep separate --plot)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for birdsep separate")
    args = ap.parse_args()
    if not SOURCE.exists():
        sys.exit(f"needs {SOURCE}")
    header("birdsep separate, end to end on long recordings")
    models = args.model or [None]
    plot = ["--plot"] if args.plot else []
    # label → (flags, PYTHONPATH or None for this checkout)
    configs = {("defaults" if m is None else f"defaults, {Path(m).name}"): ([*plot] if m is None else
                                                                           ["--model", m, *plot], None)
               for m in models}
    first = next(iter(configs))
    if args.compare:
        configs["6 s blocks, 50 % overlap, fp32"] = (["--block", "6", "--block-overlap", "0.5", "--precision", "fp32",
                                                      *configs[first][0]], None)
    rows, ratios, stages = [], [], {}
    print(f"load average at the start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp, previous(args.previous) as earlier:
        tmp = Path(tmp)
        for commit, src in earlier.items():
            configs[f"previous ({commit})"] = (configs[first][0], src)
        for minutes in args.minutes:
            rec = tmp / f"rec_{minutes:g}min.flac"
            make_recording(rec, minutes)
            walls = {}
            runs: dict[str, list] = {label: [] for label in configs}
            for _ in range(args.repeats):
                for label, (flags, pythonpath) in configs.items():
                    out = tmp / f"out_{minutes:g}"
                    cmd = ["-m", "birdsep", "separate", str(rec), "-o", str(out), "-q", *flags, *args.extra]
                    rc, wall, rss_kb, cpu, profile = profiled(cmd, pythonpath)
                    meta = json.loads((out / rec.stem / "separation.json").read_text()) if rc == "0" else {}
                    runs[label].append((wall, rc, cpu, rss_kb, meta, profile))
                    shutil.rmtree(out, ignore_errors=True)
            for label, got in runs.items():
                got.sort(key=lambda r: r[0])
                wall, rc, cpu, rss_kb, meta, profile = got[len(got) // 2]
                stages.setdefault(f"{minutes:g} min @ 32 kHz", {})[label] = profile
                walls[label] = wall
                rows.append({"input": f"{minutes:g} min @ 32 kHz", "settings": label, "exit": rc,
                             "wall s (median)": f"{wall:.1f}", "× real time": f"{minutes * 60 / wall:.1f}",
                             "runs": f"{len(got)}: {got[0][0]:.1f}–{got[-1][0]:.1f} s",
                             "CPU s": f"{cpu:.1f}", "peak RSS MB": f"{max(r[3] for r in got) / 1024:.0f}",
                             "precision": meta.get("settings", {}).get("precision", "?"),
                             "model": Path(meta.get("model", "?")).name})
            now = walls.pop(first)
            for label, other in walls.items():
                ratios.append(f"{minutes:g} min: {first} runs {other / now:.2f}× as fast as {label}")
            rec.unlink()
    report(rows, ratios, stages)


if __name__ == "__main__":
    main()
