"""A folder of many recordings: `birdsep separate` (or `classify`) with its default number of
jobs against `-j 1` (one process using every core, the default before jobs were chosen).

Runs the two alternately, each in a fresh process into an empty output folder, and prints
wall and CPU time, files per minute, × real time, the peak memory of the largest process and
the ratio of the two walls (pairs taken run by run, so a busy spell of the machine hits both).

    .venv/bin/python benchmarks/batch_jobs.py [--inputs FOLDER] [--repeats 3] [--command separate|classify]

The default input is ../shared/data/xc_extra (171 Xeno-canto recordings, 49 min, 22–48 kHz).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from common import header, measure, table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=Path, default=DATA / "xc_extra")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each (alternating); medians are shown")
    ap.add_argument("--command", choices=["separate", "classify"], default="separate")
    args = ap.parse_args()
    if not args.inputs.is_dir():
        sys.exit(f"needs {args.inputs}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from birdsep.batch import plan_jobs
    from birdsep.files import find_audio

    found = [f for f, _ in find_audio([args.inputs])]
    seconds = sum(sf.info(str(f)).duration for f in found)
    header(f"birdsep {args.command}: default jobs against -j 1 on a folder of recordings")
    print(f"input: {args.inputs} ({len(found)} files, {seconds / 60:.1f} min); default here: "
          f"-j {plan_jobs(found, None, 'cpu')}\n")
    configs = {"default": [], "-j 1": ["-j", "1"]}
    runs: dict[str, list] = {label: [] for label in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for label, flags in configs.items():
                out = Path(tmp) / "out"
                extra = ["--mode", "mix+separated"] if args.command == "classify" else []
                runs[label].append(measure([sys.executable, "-m", "birdsep", args.command, args.inputs, "-o", out,
                                            "-q", *extra, *flags]))
                shutil.rmtree(out, ignore_errors=True)
    rows = []
    for label, got in runs.items():
        wall = statistics.median(r[1] for r in got)
        rows.append({"settings": label, "exit": ",".join(sorted({r[0] for r in got})),
                     "wall s (median)": f"{wall:.1f}", "runs": f"{len(got)}: {min(r[1] for r in got):.1f}–"
                                                             f"{max(r[1] for r in got):.1f} s",
                     "CPU s": f"{statistics.median(r[3] for r in got):.1f}",
                     "files/min": f"{len(found) / wall * 60:.0f}", "× real time": f"{seconds / wall:.0f}",
                     "peak RSS MB (one process)": f"{max(r[2] for r in got) / 1024:.0f}"})
    table(rows)
    ratios = [b[1] / a[1] for a, b in zip(runs["default"], runs["-j 1"])]
    print(f"default runs {statistics.median(ratios):.2f}× as fast as -j 1 (median of {len(ratios)} paired runs, "
          f"{min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
