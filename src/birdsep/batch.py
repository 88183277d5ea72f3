"""Running one job over many files: the behaviour every batch command shares.

Inputs are files or folders (recursive). A file whose outputs are complete is skipped, so a
re-run picks up where an interrupted one stopped. A bad file costs one line (on stderr and,
for commands that write into an output folder, in ``OUT/errors.log`` with the traceback there
for internal errors) and the batch goes on; an input path that does not exist costs one line
on stderr and creates nothing. ``jobs`` > 1 runs files in worker processes. The progress bar
counts hours of audio, within a long file too, with the time left.

A command supplies ``make_worker(*args)``, a top-level function returning
``work(path, target, progress) -> Done`` (built once per process, so a model loads once;
``progress(fraction)`` reports how much of the file is done, 0 to 1), and, when it writes files,
``target_for(file, root)`` and ``is_done(target)``. A command that prints instead (one table
on stdout) gives ``out=None`` and returns its rows in :attr:`Done.lines`; the runner prints
them, after ``header``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from birdsep.errors import InputError
from birdsep.files import find_audio

ERROR_LOG = "errors.log"


@dataclass(frozen=True)
class Done:
    """One file's result: its seconds of audio and, for printing commands, its output lines."""

    seconds: float
    lines: tuple[str, ...] = ()


Progress = Callable[[float], None]  # the fraction of a file done, 0 to 1
Work = Callable[[Path, "Path | None", Progress], Done]
Result = tuple[str, "Done | None", "str | None", "str | None"]  # path, result, error line, traceback


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    hours: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def guarded(work: Work, path: str, target: str | None, progress: Progress) -> Result:
    """Run ``work`` on one file; a failure becomes one line (and a traceback for internal errors)."""
    try:
        return path, work(Path(path), Path(target) if target else None, progress), None, None
    except InputError as exc:
        return path, None, str(exc), None
    except Exception as exc:  # keep the batch going; the details go to errors.log
        return path, None, f"{path}: internal error ({type(exc).__name__}: {exc})", traceback.format_exc()


_worker: Work | None = None
_progress_queue = None


def _init_worker(make_worker, args, threads: int, queue) -> None:
    global _worker, _progress_queue
    import torch

    torch.set_num_threads(threads)
    _worker, _progress_queue = make_worker(*args), queue


def _in_worker(path: str, target: str | None) -> Result:
    return guarded(_worker, path, target, lambda seconds: _progress_queue.put((path, seconds)))


class _Bar:
    """Hours of audio done of the batch's total, and files done, with the time left."""

    def __init__(self, files: list[Path], enabled: bool, verb: str):
        from tqdm import tqdm

        from birdsep import audio

        self.seconds: dict[str, float] = {}  # each file's duration
        for f in files if enabled else ():
            try:
                self.seconds[str(f)] = audio.info(f).duration
            except InputError:
                pass  # fails again, with its line, when its turn comes
        self.files, self.done_files, self.failed, self.partial, self.finished = len(files), 0, 0, {}, set()
        self.tqdm = tqdm(total=max(sum(self.seconds.values()), 1e-9), desc=verb, disable=not enabled or not files,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
        self._show()

    def progress(self, path: str, fraction: float) -> None:
        if path in self.finished or self.tqdm.disable:  # a report from a worker that arrived after its result
            return
        delta = max(0.0, min(1.0, fraction) * self.seconds.get(path, 0.0) - self.partial.get(path, 0.0))
        self.partial[path] = self.partial.get(path, 0.0) + delta
        self.tqdm.update(delta)
        self._show()

    def finish(self, path: str, seconds: float, failed: int) -> None:
        self.tqdm.update(max(0.0, seconds - self.partial.pop(path, 0.0)))
        self.finished.add(path)
        self.done_files, self.failed = self.done_files + 1, failed
        self._show()

    def _show(self) -> None:
        t = self.tqdm
        if t.disable:
            return
        t.set_postfix_str(f"{t.n / 3600:.2f}/{t.total / 3600:.2f} h of audio, {self.done_files}/{self.files} files"
                          + (f", {self.failed} failed" if self.failed else ""), refresh=False)
        t.refresh()

    def write(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.tqdm.close()


def run_batch(inputs: list[str], out: Path | None, *, make_worker, worker_args: tuple = (),
              target_for: Callable[[Path, Path], Path] | None = None, is_done: Callable[[Path], bool] | None = None,
              jobs: int = 1, threads: int | None = None, progress: bool = True, verb: str = "processing",
              past: str = "done", work: Work | None = None, header: str | None = None,
              stream: TextIO | None = None, prefix: str = "") -> BatchSummary:
    """Run the command's work over ``inputs`` (see the module doc).

    ``work``, if given, is used in this process instead of building one (a caller that has
    already loaded its model to check it); worker processes always build their own. Error
    lines start with ``prefix`` + ``"error: "``. Printing commands (``out=None``) write
    ``header`` and each file's lines to ``stream`` (default stdout).
    """
    stream = stream or sys.stdout
    summary = BatchSummary()
    todo: list[tuple[Path, Path | None]] = []
    missing: list[str] = []
    for item in inputs:
        try:
            found = find_audio([item])
        except InputError as exc:
            missing.append(str(exc))
            continue
        if Path(item).is_dir() and not found:
            missing.append(f"{item}: no audio files in this folder")
        for f, root in found:
            target = target_for(f, root) if target_for else None
            if is_done and is_done(target):
                summary.skipped.append(str(f))
            else:
                todo.append((f, target))
    if out is not None and todo:
        out.mkdir(parents=True, exist_ok=True)  # only when there is something to write into it
    bar = _Bar([f for f, _ in todo], progress, verb)

    def report(line: str, tb: str | None = None) -> None:
        summary.failed.append(line)
        bar.write(f"{prefix}error: {line}")
        if out is not None and out.is_dir():
            with open(out / ERROR_LOG, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{line}\n")
                if tb:
                    fh.write(tb)

    for line in missing:
        report(line)
    if summary.skipped:
        print(f"{len(summary.skipped)} file(s) already {past} in {out}: skipped")
    if header is not None:
        print(header, file=stream, flush=True)

    def finish(path: str, done: Done | None, err: str | None, tb: str | None) -> None:
        if err:
            report(err, tb)
        else:
            summary.done.append(path)
            summary.hours += done.seconds / 3600
            for line in done.lines:
                print(line, file=stream)
            stream.flush()
        bar.finish(path, done.seconds if done else 0.0, len(summary.failed))

    jobs = max(1, min(jobs, len(todo)))
    if todo and jobs == 1:
        if threads:
            import torch

            torch.set_num_threads(threads)
        work = work or make_worker(*worker_args)
        for f, target in todo:
            finish(*guarded(work, str(f), str(target) if target else None, lambda s, f=str(f): bar.progress(f, s)))
    elif todo:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        per_job = threads or max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(make_worker, worker_args, per_job, queue)) as pool:
            pending = {pool.submit(_in_worker, str(f), str(t) if t else None) for f, t in todo}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    bar.progress(*queue.get())
                for fut in finished:
                    finish(*fut.result())
    bar.close()
    return summary
