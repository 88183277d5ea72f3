"""Files per minute of `birdsep separate` here (`--jobs 1/2`) and on Ray (1/2 workers) on this
machine, and Ray's own cost per file.

The input is a folder of real 10 s field recordings (Jura forest, ../shared/data). Each
configuration is the whole command in a fresh process, fp32 and one thread per worker, into
an empty folder. Reported:

* *wall*: the command from start to exit (imports, model loading, Ray's start-up included);
* *first file*: when the first output was complete (start-up plus one file);
* *files/min*: the steady rate, from the first to the last output written ((n − 1) files
  over that span), which is what a long archive sees;
* Ray's cost per file: a worker doing nothing (no model, no audio) fed tiny files through
  the same runner, with one worker: the time between two results is scheduling, the call and
  its reply, and the runner's bookkeeping (claims are not used: no output folder).

    .venv/bin/python benchmarks/cluster_scaling.py [--files 24] [--repeats 1] [--noop-files 200]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from common import header, table

DATA = Path(os.environ.get("BIRDSEP_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SOURCE = DATA / "soundscapes" / "jura_forest_24h"
CONFIGS = [("here", 1), ("here", 2), ("ray", 1), ("ray", 2)]


def run(inputs: Path, out: Path, runner: str, jobs: int) -> dict:
    cmd = [sys.executable, "-m", "birdsep", "separate", str(inputs), "-o", str(out), "--precision", "fp32",
           "--threads", "1", "-j", str(jobs), "-q"] + (["--ray"] if runner == "ray" else [])
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    times = sorted(f.stat().st_mtime for f in out.glob("*/separation.json"))
    steady = (len(times) - 1) / (times[-1] - times[0]) * 60 if len(times) > 1 and times[-1] > times[0] else float("nan")
    return {"wall": wall, "first": times[0] - t0, "steady": steady, "files": len(times)}


def noop_worker():
    from birdsep.batch import Done

    return lambda path, target, progress: Done(0.0, (path.name,))


class Stamps(io.StringIO):
    """A stream that notes when each result line arrives."""

    def __init__(self):
        super().__init__()
        self.times = []

    def write(self, text):
        if text.strip():
            self.times.append(time.perf_counter())
        return super().write(text)


def ray_cost(files: int, jobs: int) -> float:
    """Milliseconds between results of a worker that does nothing, fed through the runner."""
    from birdsep.batch import run_batch

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(files):
            sf.write(Path(tmp) / f"f{k:04d}.wav", np.zeros(80, np.float32), 8000)
        stamps = Stamps()
        s = run_batch([tmp], None, make_worker=noop_worker, jobs=jobs, threads=1, progress=False, stream=stamps,
                      cluster="local")
        assert len(s.done) == files, s.failed
    gaps = stamps.times[len(stamps.times) // 10:]  # past the first results (workers warming up)
    return (gaps[-1] - gaps[0]) / (len(gaps) - 1) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=24, help="10 s recordings in the input folder")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the configurations (medians shown)")
    ap.add_argument("--noop-files", type=int, default=200, help="files for Ray's cost per file")
    args = ap.parse_args()
    sources = sorted(SOURCE.glob("*.flac"))[: args.files]
    if len(sources) < args.files:
        raise SystemExit(f"need {args.files} recordings in {SOURCE}")
    header("birdsep separate: files per minute here and on Ray (this machine)")
    audio_s = sum(sf.info(f).duration for f in sources)
    rows, load = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for f in sources:
            (inputs / f.name).symlink_to(f)
        measured = {c: [] for c in CONFIGS}
        for _ in range(args.repeats):
            for runner, jobs in CONFIGS:  # alternate, so that a busy spell of the machine hits all alike
                out = Path(tmp) / f"out_{runner}_{jobs}"
                shutil.rmtree(out, ignore_errors=True)
                measured[(runner, jobs)].append(run(inputs, out, runner, jobs))
        base = statistics.median(r["steady"] for r in measured[("here", 1)])
        for (runner, jobs), runs in measured.items():
            steady = statistics.median(r["steady"] for r in runs)
            wall = statistics.median(r["wall"] for r in runs)
            rows.append({"runner": "this process / worker processes" if runner == "here" else "Ray (started here)",
                         "flags": f"-j {jobs}" + (" --ray" if runner == "ray" else ""),
                         "workers": jobs, "files": runs[0]["files"],
                         "wall s": f"{wall:.1f}", "first file s": f"{statistics.median(r['first'] for r in runs):.1f}",
                         "files/min (steady)": f"{steady:.1f}", "× -j 1": f"{steady / base:.2f}",
                         "× real time (steady)": f"{steady * audio_s / len(sources) / 60:.1f}"})
    print(f"input: {len(sources)} recordings of 10 s ({audio_s / 60:.1f} min), fp32, 1 thread per worker, "
          f"{args.repeats} round(s); load average before / after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores\n")
    table(rows)
    cost = [{"workers": j, "files": args.noop_files, "ms per file (no-op work)": f"{ray_cost(args.noop_files, j):.2f}"}
            for j in (1, 2)]
    print("Ray's cost per file (a worker that does nothing, through the same runner):\n")
    table(cost)


if __name__ == "__main__":
    main()
