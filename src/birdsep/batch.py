"""Running one job over many files: the behaviour every batch command shares.

Inputs are files or folders (recursive); a file whose outputs are complete is skipped, so a
re-run picks up where an interrupted one stopped; a bad file costs one line (on stderr and
in ``OUT/errors.log``, with the traceback there for internal errors) and the batch goes on;
``jobs`` > 1 runs files in worker processes; a progress bar counts files and hours.

A command supplies ``make_worker(*args)``, a top-level function returning
``work(path, target) -> seconds of audio`` (built once per process, so a model loads once),
``target_for(file, root)`` and ``is_done(target)``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from birdsep.errors import InputError
from birdsep.files import find_audio

ERROR_LOG = "errors.log"

Work = Callable[[Path, Path], float]
Result = tuple[str, float, "str | None", "str | None"]  # path, seconds, error line, traceback


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    hours: float = 0.0


def guarded(work: Work, path: str, target: str) -> Result:
    """Run ``work`` on one file; a failure becomes one line (and a traceback for internal errors)."""
    try:
        return path, float(work(Path(path), Path(target))), None, None
    except InputError as exc:
        return path, 0.0, str(exc), None
    except Exception as exc:  # keep the batch going; the details go to errors.log
        return path, 0.0, f"{path}: internal error ({type(exc).__name__}: {exc})", traceback.format_exc()


_worker: Work | None = None


def _init_worker(make_worker, args, threads: int) -> None:
    global _worker
    import torch

    torch.set_num_threads(threads)
    _worker = make_worker(*args)


def _in_worker(path: str, target: str) -> Result:
    return guarded(_worker, path, target)


def run_batch(inputs: list[str], out: Path, *, target_for: Callable[[Path, Path], Path],
              is_done: Callable[[Path], bool], make_worker, worker_args: tuple = (), jobs: int = 1,
              threads: int | None = None, progress: bool = True, verb: str = "processing", past: str = "done",
              work: Work | None = None) -> BatchSummary:
    """``work``, if given, is used in this process instead of building one (a caller that has
    already loaded its model to check it); worker processes always build their own."""
    from tqdm import tqdm

    summary = BatchSummary()
    todo: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for item in inputs:
        try:
            found = find_audio([item])
        except InputError as exc:
            errors.append(str(exc))
            continue
        if Path(item).is_dir() and not found:
            errors.append(f"{item}: no audio files in this folder")
        for f, root in found:
            target = target_for(f, root)
            if is_done(target):
                summary.skipped.append(str(f))
            else:
                todo.append((f, target))
    out.mkdir(parents=True, exist_ok=True)

    def report(line: str, tb: str | None = None) -> None:
        summary.failed.append(line)
        tqdm.write(f"error: {line}", file=sys.stderr)
        with open(out / ERROR_LOG, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{line}\n")
            if tb:
                fh.write(tb)

    for line in errors:
        report(line)
    if summary.skipped:
        print(f"{len(summary.skipped)} file(s) already {past} in {out}: skipped")
    bar = tqdm(total=len(todo), unit="file", desc=verb, disable=not progress or not todo)

    def finish(path: str, seconds: float, err: str | None, tb: str | None) -> None:
        if err:
            report(err, tb)
        else:
            summary.done.append(path)
            summary.hours += seconds / 3600
        bar.update(1)
        bar.set_postfix(hours=f"{summary.hours:.2f}", failed=len(summary.failed))

    jobs = max(1, min(jobs, len(todo)))
    if todo and jobs == 1:
        if threads:
            import torch

            torch.set_num_threads(threads)
        work = work or make_worker(*worker_args)
        for f, target in todo:
            finish(*guarded(work, str(f), str(target)))
    elif todo:
        import multiprocessing as mp

        per_job = threads or max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(make_worker, worker_args, per_job)) as pool:
            futures = [pool.submit(_in_worker, str(f), str(t)) for f, t in todo]
            for fut in as_completed(futures):
                finish(*fut.result())
    bar.close()
    return summary
