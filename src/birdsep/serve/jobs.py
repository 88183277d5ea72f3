"""Background work for the page: one worker thread runs jobs one at a time (separating and
classifying use every core already), in the order they were asked for.

A job is keyed by its recording and settings: asking again for a job that is queued or
running (a second browser tab, a reload) returns the same job, so nothing is done twice.
Progress is a stage (``separating``, ``classifying``), the fraction done overall and an
estimate of the time left; a failure keeps its one-line message for the page.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from birdsep.errors import AudioError, UsageError

log = logging.getLogger(__name__)

#: How much of a whole job each stage is taken to be, for one percentage over both.
STAGE_WEIGHTS = {"separating": 0.5, "classifying": 0.5}


@dataclass
class Job:
    id: str
    key: tuple
    recording: object  # library.Recording
    settings: object  # library.Settings
    state: str = "queued"  # queued | running | done | failed
    stages: tuple[str, ...] = ()  # the stages this job has to run, in order
    stage: str | None = None
    stage_fraction: float = 0.0
    stage_started: float = 0.0
    note: str | None = None  # what the stage is doing before its progress starts, e.g. loading a model
    created: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, stage: str, note: str | None = None) -> None:
        with self._lock:
            self.stage, self.stage_fraction, self.stage_started, self.note = stage, 0.0, time.time(), note

    def progress(self, fraction: float) -> None:
        with self._lock:
            self.stage_fraction = min(1.0, max(self.stage_fraction, float(fraction)))

    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if self.state == "queued":
            return 0.0
        stages = self.stages or ((self.stage,) if self.stage else ())
        total = sum(STAGE_WEIGHTS.get(s, 1.0) for s in stages) or 1.0
        done = 0.0
        for s in stages:
            if s == self.stage:
                done += STAGE_WEIGHTS.get(s, 1.0) * self.stage_fraction
                break
            done += STAGE_WEIGHTS.get(s, 1.0)
        return done / total

    def eta(self) -> float | None:
        """Seconds left in the current stage, from its pace so far (None until it has one)."""
        if self.state != "running" or self.stage_fraction < 0.02:
            return None
        spent = time.time() - self.stage_started
        return spent * (1 - self.stage_fraction) / self.stage_fraction

    def to_dict(self) -> dict:
        with self._lock:
            eta = self.eta()
            return {"job": self.id, "state": self.state, "stage": self.stage, "note": self.note,
                    "stages": list(self.stages),
                    "percent": round(100 * self.fraction(), 1), "eta_s": None if eta is None else round(eta, 1),
                    "error": self.error}


class JobManager:
    """``work(job)`` does a job, calling ``job.begin(stage)`` and ``job.progress(fraction)``;
    ``plan(recording, settings)`` says which stages are left (empty: nothing to do)."""

    def __init__(self, work: Callable[[Job], None], plan: Callable[[object, object], tuple[str, ...]]):
        self._work, self._plan = work, plan
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[tuple, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="birdsep-jobs", daemon=True)
        self._thread.start()

    def submit(self, recording, settings) -> Job | None:
        """The job for this recording and settings: the queued or running one if there is one,
        else a new one; None when everything is already on disk."""
        key = (recording.id, settings)
        with self._lock:
            job = self._by_key.get(key)
            if job is not None and job.state in ("queued", "running"):
                return job
            stages = self._plan(recording, settings)
            if not stages:
                return None
            job = Job(str(next(self._ids)), key, recording, settings, stages=tuple(stages))
            self._jobs[job.id] = job
            self._by_key[key] = job
        self._queue.put(job)
        return job

    def plan(self, recording, settings) -> tuple[str, ...]:
        """The stages a new job for this recording and settings would run (empty: all on disk)."""
        return tuple(self._plan(recording, settings))

    def current(self, recording, settings) -> Job | None:
        """The latest job for this recording and settings (any state), or None."""
        with self._lock:
            return self._by_key.get((recording.id, settings))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.state = "running"
            try:
                self._work(job)
                job.state = "done"
            except (AudioError, UsageError) as exc:
                job.error, job.state = str(exc), "failed"
            except Exception as exc:  # the server goes on; the page shows one line
                log.exception("job %s (%s) failed", job.id, job.key[0])
                job.error, job.state = f"internal error ({type(exc).__name__}: {exc})", "failed"
            job.finished = time.time()
