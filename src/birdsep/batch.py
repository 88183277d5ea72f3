"""Running one job over many files: the behaviour every batch command shares.

Inputs are files or folders (recursive). A file whose outputs are complete is skipped, so a
re-run picks up where an interrupted one stopped. A bad file costs one line (on stderr and,
for commands that write into an output folder, in ``OUT/errors.log`` with the traceback there
for internal errors) and the batch goes on; an input path that does not exist costs one line
on stderr and creates nothing. The progress bar counts hours of audio, within a long file
too, and files, with the time left.

Where the files run (an *executor*): one after another in this process; in ``jobs`` worker
processes on this machine; or, with ``cluster`` (an address), on the workers of a Ray
cluster (:mod:`birdsep.cluster`). A file whose worker died (a lost node, a killed process) is
tried again, at most :data:`MAX_TRIES` times; a file that fails for a reason of its own is
reported once and not retried. Runs that write into an output folder claim each file before
working on it (:mod:`birdsep.claims`), so that two runs on the same folder share the files
instead of doing them twice.

A command supplies ``make_worker(*args)``, a top-level function returning
``work(path, target, progress) -> Done`` (built once per process, so a model loads once;
``progress(fraction)`` reports how much of the file is done, 0 to 1), and, when it writes files,
``target_for(file, root)`` and ``is_done(target)``. A command that prints instead (one table
on stdout) gives ``out=None`` and returns its rows in :attr:`Done.lines`; the runner prints
them, after ``header``.

SIGTERM (``kill``, a scheduler ending its job, a container stopping) ends a batch as Ctrl-C
does, in this process and in its worker processes: the files in flight are abandoned with
their temporary files, finished ones are kept, and the command says "interrupted" on one
line (exit code 143, where Ctrl-C gives 130); a re-run carries on.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from birdsep.claims import BUSY, FAILED, MINE, Claims, tidy
from birdsep.errors import InputError, Terminated
from birdsep.files import file_in_the_way, find_audio, make_folder, remove_temps_of
from birdsep.task import Done, Lost, Progress, Result, Work, guarded  # noqa: F401 (Done, Progress: the commands')
from birdsep.threads import use as use_threads

ERROR_LOG = "errors.log"
MAX_TRIES = 3  # a file whose worker died this many times is reported as failed, not tried again
LOOK_AGAIN = 5.0  # seconds between looks at the files another run is working on


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    hours: float = 0.0
    others: list[str] = field(default_factory=list)  # finished or failed meanwhile by another run on the same folder
    targets: list[tuple[str, str | None]] = field(default_factory=list)  # (file, target) of every input, in order

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def threads_per_job(threads: int | None, jobs: int | None, cluster: str | None = None) -> int:
    """``--threads``, or by default this machine's cores shared among the jobs (one for a Ray worker)."""
    if threads:
        return threads
    return 1 if cluster is not None else max(1, (os.cpu_count() or 1) // max(1, jobs or 1))


#: Less audio than this runs in this process unless ``-j`` says otherwise: starting worker
#: processes (each imports PyTorch and loads its models, a few seconds) would cost more than
#: they save (benchmarks/batch_jobs.py).
AUTO_JOBS_MIN_SECONDS = 20 * 60
#: Memory set aside for each worker process when ``-j`` is chosen here (a separator, or a
#: classifier with its separator, and the audio in flight: ≈ 0.9 GB measured).
AUTO_JOBS_BYTES = 2 << 30


def plan_jobs(files: list[Path], jobs: int | None, device: str, threads: int | None = None) -> int:
    """``-j``'s default on this machine: ``jobs`` if given; else, on the CPU, with more than one
    file and at least :data:`AUTO_JOBS_MIN_SECONDS` of audio, one worker process per core (per
    ``threads`` cores when given), at most one per :data:`AUTO_JOBS_BYTES` of memory and one
    per file. A process of one thread keeps its core busier than one process of several
    threads: decoding, resampling and writing run on one thread (benchmarks/batch_jobs.py).
    On a GPU (``device`` cuda, or auto with one): 1."""
    if jobs is not None:
        return jobs
    if device == "cuda" or device == "auto" and _gpu():
        return 1
    from birdsep import audio

    cap = min(len(files), max(1, (os.cpu_count() or 1) // max(1, threads or 1)), max(1, _memory() // AUTO_JOBS_BYTES))
    if cap < 2:
        return 1
    seconds = 0.0
    for f in files:  # stops as soon as there is enough audio to be worth the workers
        try:
            seconds += audio.info(f).duration
        except InputError:
            continue
        if seconds >= AUTO_JOBS_MIN_SECONDS:
            return cap
    return 1


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _memory() -> int:
    """This machine's memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


# ----------------------------------------------------------------------------- executors
# Each has ``free`` (files it can take now), ``busy`` (files in flight), ``submit(path, target)``
# and ``poll(timeout, progress) -> [Result | Lost]``, and is a context manager.


class _Here:
    """Files one after another in this process."""

    def __init__(self, work: Work):
        self.work, self.next = work, None

    free = property(lambda self: int(self.next is None))
    busy = property(lambda self: self.next is not None)

    def submit(self, path: str, target: str | None) -> None:
        self.next = (path, target)

    def poll(self, timeout: float, progress: Callable[[str, float], None]) -> list[Result]:
        (path, target), self.next = self.next, None
        return [guarded(self.work, path, target, lambda fraction: progress(path, fraction))]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _interrupt(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """Within: SIGTERM raises :class:`~birdsep.errors.Terminated`, a KeyboardInterrupt, as Ctrl-C
    raises one (where signals can be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_worker: Work | None = None
_progress_queue = None
_stopping = None  # set by the parent when the batch stops: files still queued are not started
_busy = False  # a worker is working on a file (not waiting for one)
_reporting = False  # … and is putting its progress on the batch's queue
_deferred: list[int] = []  # a signal that came while it was


def _stop_worker(signum, frame) -> None:
    """Ctrl-C or SIGTERM in a worker: stop the file in hand (its clean-up runs, the batch reports
    it). A worker waiting for a file does nothing: the batch, which the same Ctrl-C or SIGTERM
    reached, stops and sends every worker its end through the pool's queue. (Ending at once
    would be wrong there: the waiting worker holds the queue's read lock, and a process that
    dies holding it leaves the other workers waiting on it forever, and the batch with them.)"""
    if _busy:
        if _reporting:  # raised inside the queue's put it could leave its feeder thread never told to
            _deferred.append(signum)  # stop, and the worker hanging at exit (seen): raised right after
            return
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _report(path: str, fraction: float) -> None:
    """Put a worker's progress on the batch's queue; Ctrl-C or SIGTERM meanwhile stops the file
    right after the put (multiprocessing's queue is not safe to interrupt)."""
    global _reporting
    _reporting = True
    try:
        _progress_queue.put((path, fraction))
    finally:
        _reporting = False
    if _deferred:
        signum = _deferred.pop()
        _deferred.clear()
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _die_with(parent: int) -> None:
    """End this worker process when ``parent`` (the batch) dies, even by ``kill -9``: on Linux
    the kernel sends SIGKILL (PR_SET_PDEATHSIG); everywhere a thread watches the parent's pid.
    A parent that died before this was set up ends the worker at once."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="birdsep-parent-watch", daemon=True).start()


def _init_worker(parent: int, make_worker, args, threads: int, queue, stopping) -> None:
    """A worker process's start-up. It was started with Ctrl-C ignored (:meth:`_Processes.submit`),
    so that a Ctrl-C while it imports PyTorch and loads its model prints no traceback; one
    that comes meanwhile ends it quietly once it is ready, and later ones stop its file."""
    global _worker, _progress_queue, _stopping
    _die_with(parent)
    stopped: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        import torch

        torch.set_num_threads(threads)
        _worker, _progress_queue, _stopping = make_worker(*args), queue, stopping
        queue.cancel_join_thread()  # progress not yet sent need not hold up the worker's exit
        signal.signal(signal.SIGINT, _stop_worker)
        signal.signal(signal.SIGTERM, _stop_worker)
        if stopped:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        os._exit(130)  # stopped while starting: nothing to clean up, and nothing to say (the batch says it)


def _in_worker(path: str, target: str | None) -> Result:
    global _busy
    if _stopping is not None and _stopping.is_set():
        return path, None, f"{path}: not started (the batch was stopped)", None
    _busy = True
    try:
        return guarded(_worker, path, target, lambda fraction: _report(path, fraction))
    finally:
        _busy = False


class _Processes:
    """Files in ``jobs`` worker processes on this machine, each building its own work once."""

    def __init__(self, jobs: int, make_worker, worker_args: tuple, threads: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.jobs, self.queue, self.pending, self.stopping = jobs, ctx.Queue(), set(), ctx.Event()
        self.pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                        initargs=(os.getpid(), make_worker, worker_args, threads, self.queue,
                                                  self.stopping))

    free = property(lambda self: self.jobs - len(self.pending))
    busy = property(lambda self: bool(self.pending))

    def submit(self, path: str, target: str | None) -> None:
        # Worker processes start here: they inherit Ctrl-C ignored, so that one pressed while
        # they import (before _init_worker) is no traceback; _init_worker takes it from there.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.pending.add(self.pool.submit(_in_worker, path, target))
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def poll(self, timeout: float, progress: Callable[[str, float], None]) -> list[Result]:
        finished, self.pending = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        while not self.queue.empty():
            progress(*self.queue.get())
        return [fut.result() for fut in finished]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:  # stopped: the files already queued to a worker are not started
            self.stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- progress


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
        self._advance(delta)
        self._show()

    def finish(self, path: str, seconds: float | None, failed: int) -> None:
        """``seconds`` of audio done (None: the file's whole length, done by another run)."""
        seconds = self.seconds.get(path, 0.0) if seconds is None else seconds
        self._advance(seconds - self.partial.pop(path, 0.0))
        self.finished.add(path)
        self.done_files, self.failed = self.done_files + 1, failed
        self._show()

    def _advance(self, seconds: float) -> None:
        """Never past the total: a decoded file can run a little longer than its header said (MP3)."""
        self.tqdm.update(max(0.0, min(seconds, self.tqdm.total - self.tqdm.n)))

    def _show(self) -> None:
        from birdsep import audio

        t = self.tqdm
        if t.disable:
            return
        t.set_postfix_str(f"{audio.amount(t.n, t.total)} of audio, {self.done_files}/{self.files} files"
                          + (f", {self.failed} failed" if self.failed else ""), refresh=False)
        t.refresh()

    def write(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.tqdm.close()


# ----------------------------------------------------------------------------- the runner


def run_batch(inputs: list[str], out: Path | None, *, make_worker, worker_args: tuple = (),
              target_for: Callable[[Path, Path], Path] | None = None, is_done: Callable[[Path], bool] | None = None,
              jobs: int | None = 1, threads: int | None = None, progress: bool = True, verb: str = "processing",
              past: str = "done", work: Work | None = None, header: str | None = None,
              stream: TextIO | None = None, prefix: str = "", cluster: str | None = None,
              device: str = "cpu", also_written: tuple[str | Path, ...] = ()) -> BatchSummary:
    """Run the command's work over ``inputs`` (see the module doc).

    Audio found by scanning a folder is left out when it lies in ``out`` or in one of
    ``also_written`` (other folders the command writes into) inside that folder: a re-run in
    the recordings' own folder must not take its outputs for recordings. (With ``-o`` the
    scanned folder itself, finished outputs are still left out by their separation.json.)

    ``work``, if given, is used in this process instead of building one (a caller that has
    already loaded its model to check it); worker processes always build their own. Error
    lines start with ``prefix`` + ``"error: "``. Printing commands (``out=None``) write
    ``header`` and each file's lines to ``stream`` (default stdout). ``cluster``: a Ray address
    (``local`` starts Ray here); ``jobs`` is then the number of Ray workers (None: as many as
    the cluster holds) and ``device`` (auto | cuda) gives each one a GPU where the cluster has them.
    """
    stream = stream or sys.stdout
    summary, started = BatchSummary(), time.time()
    todo: list[tuple[Path, Path | None]] = []
    missing: list[str] = []
    written = [Path(o).resolve() for o in [out, *also_written] if o is not None]
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        try:
            here = find_audio([item])
        except InputError as exc:
            missing.append(str(exc))
            continue
        if Path(item).is_dir():  # what birdsep writes into a folder inside this one is not an input, even half-written
            scanned = Path(item).resolve()
            inside = [o for o in written if o != scanned and o.is_relative_to(scanned)]
            here = [(f, root) for f, root in here if not any(f.resolve().is_relative_to(o) for o in inside)]
            if not here:
                missing.append(f"{item}: no audio files in this folder")
        found += here
    placed, clashes = distinct_targets(found, target_for)
    missing += clashes
    for f, target in placed:
        summary.targets.append((str(f), str(target) if target is not None else None))
        if is_done and is_done(target):
            summary.skipped.append(str(f))
        else:
            todo.append((f, target))
    if out is not None and todo and (in_the_way := file_in_the_way(out)) is not None:
        raise in_the_way  # before a model loads or a cluster starts
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_ctrl_c())
        handed = stack.enter_context(_Handed())  # its clean-up runs after the workers have ended
        # the workers first: a cluster that cannot be reached stops the command before it writes anything
        executor = stack.enter_context(_executor(todo, make_worker, worker_args, work, jobs, threads, cluster,
                                                 device)) if todo else None
        if out is not None and todo:
            make_folder(out)  # only when there is something to write into it
        bar = _Bar([f for f, _ in todo], progress, verb)
        stack.callback(bar.close)

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

        def elsewhere(path: str) -> None:
            summary.others.append(path)
            bar.finish(path, None, len(summary.failed))

        if todo:
            claims = stack.enter_context(Claims(out, started)) if out is not None and target_for else None
            _schedule(todo, executor, claims, is_done, finish, elsewhere, bar, prefix, handed)
        elif out is not None and target_for and out.is_dir():
            tidy(out)  # nothing to do: still clear the claims a killed run left
    return summary


def distinct_targets(found: list[tuple[Path, Path]], target_for: Callable[[Path, Path], Path] | None
                     ) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """Each input file once, with an output target of its own: ``[(file, target)]`` and an error
    line for each file whose outputs would land on another's.

    Targets mirror each file's path below the folder it was found in (its root). Recorders
    name their files alike (AudioMoth: by date and time), so two roots can give two files the
    same target: then every root among them keeps its files in a folder of its own name
    (``OUT/site1/…``, ``OUT/site2/…``). Two files of one folder that differ only by extension
    (``x.wav``, ``x.flac``) keep theirs under their whole names (``OUT/x.wav/``, ``OUT/x.flac/``).
    What still clashes (two roots of the same name) is refused for all but the first file. A
    file given twice (itself and its folder) is done once."""
    seen: set[Path] = set()
    unique = []
    for f, root in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append((f, root))
    if target_for is None:
        return [(f, None) for f, _ in unique], []

    def sharing(targets: list[Path], key) -> dict[Path, set]:
        """Each target given to several files → the ``key``s of those files."""
        groups: dict[Path, set] = {}
        for (f, root), t in zip(unique, targets):
            groups.setdefault(t, set()).add(key(f, root))
        return groups

    targets = [target_for(f, root) for f, root in unique]
    roots_apart = set().union(*(roots for roots in sharing(targets, lambda f, root: root).values() if len(roots) > 1))
    targets = [target_for(f, root.parent) if root in roots_apart else t for (f, root), t in zip(unique, targets)]
    by_format = {t for t, suffixes in sharing(targets, lambda f, root: f.suffix.lower()).items() if len(suffixes) > 1}
    targets = [t.with_name(t.name + f.suffix) if t in by_format else t for (f, _), t in zip(unique, targets)]
    placed, errors, taken = [], [], {}
    for (f, _), t in zip(unique, targets):
        if t in taken:
            errors.append(f"{f}: its outputs would go where those of {taken[t]} go ({t}); "
                          "rename one, or run them into different output folders")
        else:
            taken[t] = f
            placed.append((f, t))
    return placed, errors


def _executor(todo, make_worker, worker_args, work, jobs, threads, cluster, device):
    if cluster is not None:
        from birdsep.cluster import RayExecutor

        return RayExecutor(cluster, make_worker, worker_args, jobs=jobs, threads=threads_per_job(threads, jobs, cluster),
                           device=device, files=len(todo))
    jobs = max(1, min(plan_jobs([f for f, _ in todo], jobs, device, threads), len(todo)))
    if jobs > 1:
        return _Processes(jobs, make_worker, worker_args, threads_per_job(threads, jobs))
    use_threads(threads)
    return _Here(work or make_worker(*worker_args))


def _seconds(path: Path) -> float:
    from birdsep import audio

    try:
        return audio.info(path).duration
    except InputError:
        return 0.0


class _Handed(set):
    """The targets handed to workers. When the batch is stopped (Ctrl-C, SIGTERM, an error),
    what their files left half-written is removed: a worker stopped by a signal may not have
    reached its own clean-up."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            for target in self:
                remove_temps_of(Path(target))


def _schedule(todo, executor, claims: Claims | None, is_done, finish, elsewhere, bar: _Bar, prefix: str,
              handed: set) -> None:
    """Hand the files to ``executor`` as it has room, each claimed first; collect the results;
    retry the files of workers that died; wait for the files another run is working on."""
    where = {str(f): (f, t) for f, t in todo}
    queue, held, tries = deque(todo), [], Counter()
    look = time.monotonic() + LOOK_AGAIN
    while queue or held or executor.busy:
        while queue and executor.free:
            f, t = queue.popleft()
            state = claims.take(t) if claims else MINE
            if state == MINE and (claims or tries[str(f)]) and is_done and is_done(t):  # finished since the scan:
                if claims:
                    claims.release(t)
                if tries[str(f)]:  # by this run's worker that died before it could say so
                    finish(str(f), Done(_seconds(f)), None, None)
                else:  # by another run
                    elsewhere(str(f))
            elif state == MINE:
                if t is not None:
                    handed.add(str(t))
                executor.submit(str(f), str(t) if t is not None else None)
            elif state == FAILED:
                elsewhere(str(f))
            else:
                assert state == BUSY
                held.append((f, t))
        if held and time.monotonic() >= look:
            queue.extend(held)
            held, look = [], time.monotonic() + LOOK_AGAIN
            continue
        if not (executor.busy or queue):  # only files another run is working on: wait for it
            time.sleep(max(0.0, look - time.monotonic()))
            continue
        for outcome in executor.poll(0.5, bar.progress):
            if isinstance(outcome, Lost):
                tries[outcome.path] += 1
                if tries[outcome.path] < MAX_TRIES:
                    bar.write(f"{prefix}warning: {outcome.path}: {outcome.reason}; trying it again")
                    queue.appendleft(where[outcome.path])
                    continue
                outcome = (outcome.path, None, f"{outcome.path}: {outcome.reason} ({MAX_TRIES} times); given up", None)
            path, _done, err, _tb = outcome
            target = where[path][1]
            if claims and err:
                claims.failed(target, err)
            elif claims:
                claims.release(target)
            finish(*outcome)
