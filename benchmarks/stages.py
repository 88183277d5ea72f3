"""Where a birdsep command's time goes: stage seconds measured inside the command's own process.

    python benchmarks/stages.py PROFILE.json -m birdsep separate IN -o OUT -q

runs ``python -m birdsep …`` (whichever birdsep ``PYTHONPATH`` finds first, so a worktree of
an earlier commit is profiled the same way) after wrapping the functions that do each stage, and
writes {"wall": s, "stages": {stage: s}, "cpu": {stage: CPU s}, "calls": {stage: n}} to PROFILE.json.

A stage's seconds are its *own*: while a wrapped function calls another stage (a generator
pulling decoded blocks, say) the time counts for the inner one. Each thread keeps its own stack,
so stages that run in threads beside the main one are counted where they run, and the shares of
wall time can then add up to more than 100 %; the main thread's wait for a thread working ahead
of it is a stage of its own. Wall time not inside any stage ("start-up and
glue") is imports, model loading, argument parsing, folders. The wrappers cost ~1 µs per call.
Each stage's CPU seconds (its threads' own, ``time.thread_time``; PyTorch's and LiteRT's worker
threads are not seen) tell the work apart from waiting for a core on a busy machine.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: stage → the functions doing it ("module:attribute" or "module:Class.method"); names missing
#: from the birdsep being profiled (an earlier commit) are skipped.
STAGES = {
    "loading models": ["birdsep.pretrained:load_model", "birdsep.backends:load_classifier"],
    "decode": ["birdsep.audio:blocks", "birdsep.audio:load"],
    "resample": ["birdsep.audio:resample", "birdsep.audio:resampled", "birdsep.pipeline:_resampled",
                 "birdsep.audio:Resampler.__call__"],
    "model": ["birdsep.separation.apply:separate_stream"],
    "encode": ["birdsep.audio:TrackWriter.write", "birdsep.audio:TrackWriter.close"],
    "picture": ["birdsep.plots:SpectrogramAccumulator.add", "birdsep.plots:SpectrogramAccumulator.result",
                "birdsep.plots:plot_separation", "birdsep.plots:make_video"],
    "BirdNET": ["birdsep.backends:BirdNET.predict"],
    "combination": ["birdsep.detect:combine", "birdsep.combination:TrackInput.apply",
                    "birdsep.combination:track_levels"],
    "writing": ["birdsep.outputs:write_outputs", "birdsep.outputs:write_combined", "birdsep.files:write_json"],
    # the caller waiting for the thread that works ahead of it (audio.ahead): time that the
    # stages above, running in that thread, did not hide behind the caller's own work
    "waiting for the thread ahead": ["birdsep.audio:ahead"],
}
ORDER = [*STAGES, "start-up and glue"]

_local = threading.local()
_lock = threading.Lock()
seconds: dict[str, float] = {s: 0.0 for s in STAGES}
cpu: dict[str, float] = {s: 0.0 for s in STAGES}  # the thread's CPU seconds (time.thread_time)
calls: dict[str, int] = {s: 0 for s in STAGES}
main_thread = [0.0]  # the stages' seconds on the main thread: the rest of the wall time is start-up and glue


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []  # [stage, started, CPU started] of the stages entered on this thread, innermost last
    return _local.stack


def _enter(stage: str) -> None:
    now, used, stack = time.perf_counter(), time.thread_time(), _stack()
    if stack:  # the outer stage pauses
        outer = stack[-1]
        with _lock:
            seconds[outer[0]] += now - outer[1]
            cpu[outer[0]] += used - outer[2]
    else:
        _local.outermost = now
    stack.append([stage, now, used])


def _leave() -> None:
    now, used, stack = time.perf_counter(), time.thread_time(), _stack()
    stage, started, used_before = stack.pop()
    with _lock:
        seconds[stage] += now - started
        cpu[stage] += used - used_before
        calls[stage] += 1
        if not stack and threading.current_thread() is threading.main_thread():
            main_thread[0] += now - _local.outermost
    if stack:
        stack[-1][1], stack[-1][2] = now, used  # the outer stage resumes


def _timed(fn, stage: str):
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*a, **kw):
            it = fn(*a, **kw)
            while True:
                _enter(stage)
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    _leave()
                yield item
        return gen

    @functools.wraps(fn)
    def call(*a, **kw):
        _enter(stage)
        try:
            return fn(*a, **kw)
        finally:
            _leave()
    return call


def _patch(mod_name: str) -> None:
    """Wrap the targets that live in ``mod_name`` (just imported)."""
    for stage, targets in STAGES.items():
        for target in targets:
            name_of_module, attr = target.split(":")
            if name_of_module != mod_name:
                continue
            owner = sys.modules[mod_name]
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            if owner is not None and hasattr(owner, name):
                original = getattr(owner, name)
                wrapped = _timed(original, stage)
                setattr(owner, name, wrapped)
                for mod in list(sys.modules.values()):  # names bound by "from … import" before this
                    if getattr(mod, "__name__", "").startswith("birdsep") and getattr(mod, name, None) is original:
                        setattr(mod, name, wrapped)


class _WrapOnImport:
    """A meta-path finder that wraps a target module's functions right after it is imported, so
    that profiling imports nothing the command would not (``classify --mode mix`` loads no
    PyTorch, and its peak memory is measured without it)."""

    def __init__(self, modules: set[str]):
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        if name not in self.modules:
            return None
        self.modules.discard(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _patch(name)

        spec.loader.exec_module = exec_and_wrap
        return spec


def install() -> None:
    modules = {t.split(":")[0] for targets in STAGES.values() for t in targets}
    for name in [m for m in modules if m in sys.modules]:
        modules.discard(name)
        _patch(name)
    sys.meta_path.insert(0, _WrapOnImport(modules))


def main() -> None:
    started = time.perf_counter()
    out, flag, module, *argv = sys.argv[1:]
    assert flag == "-m", "usage: stages.py PROFILE.json -m MODULE ARGS..."
    install()
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    wall = time.perf_counter() - started
    with open(out, "w") as fh:
        json.dump({"wall": wall, "stages": seconds, "cpu": cpu, "calls": calls, "main_thread": main_thread[0]}, fh)
    sys.exit(code)


# ------------------------------------------------------------------------------ for the benchmark scripts


def profiled(cmd: list[str], pythonpath: str | None = None) -> tuple[str, float, int, float, dict]:
    """``cmd`` (``-m birdsep …`` arguments) run under this profiler in a process of its own (with
    ``pythonpath`` first on the path: an earlier commit's ``src``): exit code, wall seconds, peak
    RSS kB, CPU seconds (as :func:`common.measure`) and the stage profile, whose wall is the
    whole process's (start-up and exit included)."""
    from common import measure

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        saved = os.environ.get("PYTHONPATH")
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        try:
            rc, wall, rss_kb, cpu = measure([sys.executable, __file__, out, *cmd])
        finally:
            if pythonpath:
                os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
        profile = json.loads(out.read_text()) if out.exists() else {"stages": {}, "calls": {}}
    profile["wall"] = wall
    return rc, wall, rss_kb, cpu, profile


def stage_rows(profile: dict) -> dict[str, tuple[float, float, float | None]]:
    """stage → (seconds, share of wall, CPU seconds or None) in ORDER; "start-up and glue" is the
    wall time that the main thread spent in no stage (imports, model loading's Python side, exit)."""
    wall, st, used = profile["wall"], profile["stages"], profile.get("cpu", {})
    glue = max(0.0, wall - profile.get("main_thread", sum(st.values())))
    return {s: (v, v / wall, used.get(s)) for s in ORDER for v in [st.get(s, glue if s == ORDER[-1] else 0.0)]}


def stage_table(title: str, profiles: dict[str, dict]) -> None:
    """One table: a row per stage, a column per run (label → profile): seconds, share of wall and
    the stage's own CPU seconds on the threads that ran it."""
    from common import table

    print(f"stages, {title} (wall seconds, share of wall time, [CPU seconds of the stage's own thread];"
          " threads can make shares add up to > 100 %):")
    cells = {label: stage_rows(p) for label, p in profiles.items()}

    def cell(c):
        return f"{c[0]:6.2f} s {100 * c[1]:3.0f} %" + ("" if c[2] is None else f" [{c[2]:5.2f}]")

    rows = [{"stage": s, **{label: cell(c[s]) for label, c in cells.items()}}
            for s in ORDER if any(c[s][0] >= 0.005 for c in cells.values())]
    rows.append({"stage": "wall", **{label: f"{p['wall']:6.2f} s 100 %" for label, p in profiles.items()}})
    table(rows)


@contextmanager
def previous(commits: list[str]) -> Iterator[dict[str, str]]:
    """Detached ``git worktree``s of ``commits`` in a temporary folder; yields commit → its
    ``src`` (for PYTHONPATH, with this checkout's virtual environment)."""
    repo = Path(__file__).resolve().parents[1]
    trees: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for commit in commits:
                tree = Path(tmp) / f"birdsep-{commit}"
                subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(tree), commit],
                               check=True)
                trees[commit] = str(tree / "src")
            yield trees
        finally:
            for src in trees.values():
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(Path(src).parent)],
                               check=False)


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def report(rows: list[dict], ratios: list[str], stages: dict[str, dict]) -> None:
    """What separate_long.py and classify_long.py print at the end: the runs, the ratios, one stage
    table per title, and the load average."""
    from common import table

    table(rows)
    for line in ratios:
        print(line)
    print()
    for title, profiles in stages.items():
        stage_table(f"{title} (the median run of each)", profiles)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
