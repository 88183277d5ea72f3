"""What a job does: separate a recording with the chosen shipped separator (``birdsep
separate``'s :func:`~birdsep.pipeline.separate_file`, picture included), then classify it
from the tracks just written (``birdsep classify``'s :class:`~birdsep.detect.Detector`), so
that ``source_k`` in the detections is the voice in that track's file. Models load once and
are kept for the next job.
"""
from __future__ import annotations

import os
from functools import partial

from birdsep.separation import runtime
from birdsep.serve.jobs import Job
from birdsep.serve.library import SERVE_RTYPES, Library, Recording, Settings


class Worker:
    def __init__(self, library: Library, device: str = "auto", precision: str = "auto", threads: int | None = None):
        self.library, self.device, self.precision, self.threads = library, device, precision, threads
        self._separators: dict[str, object] = {}
        self._detectors: dict[tuple, object] = {}

    def plan(self, rec: Recording, s: Settings) -> tuple[str, ...]:
        """The stages still to run for ``rec`` with ``s`` (empty: all on disk)."""
        stages = []
        if self.library.separation(rec, s) is None:
            stages.append("separating")
        if s.classifier is not None and self.library.detections_csv(rec, s) is None:
            stages.append("classifying")
        return tuple(stages)

    def __call__(self, job: Job) -> None:
        from birdsep.pipeline import SeparateOptions, separate_file, track_files

        rec, s = job.recording, job.settings
        lib = self.library
        folder = lib.separated_dir(rec, s)
        if "separating" in job.stages:
            job.begin("separating", "loading the separator")
            opts = SeparateOptions(out=str(folder.parent), model=lib.separator_path(s), device=self.device,
                                   precision=self.precision, plot=True, threads=self.threads, progress=False)
            model, rt = self._separator(s)
            job.begin("separating")
            separate_file(rec.real, folder, model, opts, rt, lib.separator_path(s), progress=job.progress)
        if "classifying" in job.stages:
            job.begin("classifying", "loading the classifier")
            result = lib.separation(rec, s)
            tracks = track_files(folder, result)[: len(result["sources"])]
            detector = self._detector(s)
            job.begin("classifying")
            lib.describe_detections(rec, s)
            detector.run(rec.real, lib.detections_base(rec, s), tracks=tracks, progress=job.progress)

    def _separator(self, s: Settings):
        """(model, runtime) of ``s``'s separator, loaded and its precision settled once."""
        from birdsep.pretrained import load_model

        if s.separator not in self._separators:
            load = partial(load_model, self.library.separator_path(s))
            self._separators[s.separator] = runtime.settle(self.device, self.precision, load=load)
        return self._separators[s.separator]

    def _detector(self, s: Settings):
        from birdsep.detect import ClassifyOptions, Detector

        key = (s.separator, s.classifier, s.mode, s.combine, s.min_conf, s.lat, s.lon, s.week)
        if key not in self._detectors:
            opts = ClassifyOptions(out="", classifier=self.library.classifiers[s.classifier], mode=s.mode,
                                   combine=s.combine, min_conf=s.min_conf, lat=s.lat, lon=s.lon, week=s.week,
                                   rtype=SERVE_RTYPES,
                                   model=self.library.separator_path(s), device=self.device,
                                   precision=self.precision, threads=self.threads or os.cpu_count() or 1,
                                   progress=False)
            opts.check()
            model, rt = self._separator(s)
            self._detectors[key] = Detector(opts, rt, model)  # the same model, and no second measurement
        return self._detectors[key]
