"""Scoring detections against annotations (``birdsep evaluate``, the paper's §3.3 metrics).

Predictions and annotations are tables (Raven selection tables or CSV, see
:mod:`birdsep.outputs`) or folders of them, matched by file name (:func:`outputs.file_key`).
Every annotated file is cut into ``window``-second windows; an event or a detection covers a
window it overlaps by at least 0.5 s (or half the event, if it is shorter). A window's label
for a species is 1 if an annotated event of it covers the window; its score is the highest
confidence of a prediction of that species covering it. Those (windows × species) matrices go
to :func:`birdsep.metrics.score_all`. Pure NumPy: no PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdsep import files, limits, metrics
from birdsep.errors import UsageError
from birdsep.outputs import Detection, file_key, read_table
from birdsep.taxonomy import label_names, read_species_list

MIN_OVERLAP = 0.5  # seconds an event must share with a window to count (or half the event if shorter)


def _tables(item: str) -> list[Path]:
    p = Path(item)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise UsageError(f"{item}: no such file or folder")
    csvs = sorted(p.rglob("*.csv"))
    if csvs:
        return csvs
    found = []
    for f in sorted(p.rglob("*.txt")):
        try:
            with open(f, encoding="utf-8-sig") as fh:
                if "Begin Time (s)" in fh.readline():
                    found.append(f)
        except (OSError, UnicodeDecodeError):
            continue
    if not found:
        raise UsageError(f"{item}: no CSV or Raven selection tables in this folder")
    return found


def _collect(items: list[str]) -> dict[str, list[Detection]]:
    """{file key: detections}; a table with no rows still names its file (a file with no events)."""
    by_file: dict[str, list[Detection]] = {}
    for item in items:
        for t in _tables(item):
            dets = read_table(t)
            if not dets:
                by_file.setdefault(file_key(t.name), [])
            for d in dets:
                by_file.setdefault(file_key(d.file), []).append(d)
    return by_file


def covers(s: float, e: float, w0: float, w1: float) -> bool:
    return min(e, w1) - max(s, w0) >= min(MIN_OVERLAP, 0.5 * (e - s)) - 1e-9


@dataclass
class Evaluation:
    rows: list[tuple[str, metrics.Scores]]
    species: list[str]
    window: float
    files: int

    def table(self) -> str:
        names = [name if len(name) <= 60 else "…" + name[-59:] for name, _ in self.rows]
        width = max([len("predictions"), *map(len, names)])
        head = f"{'predictions':<{width}} {'cmAP':>6} {'lwlrap':>7} {'d′':>6} {'top-1':>6}"
        lines = [head, "-" * len(head)]
        for name, (_, s) in zip(names, self.rows):
            lines.append(f"{name:<{width}} {s.cmap:6.3f} {s.lwlrap:7.3f} {s.dprime:6.2f} {s.top1:6.3f}")
        s = self.rows[0][1] if self.rows else None
        if s:
            lines.append(f"{self.files} file(s), {s.windows} windows of {self.window:g} s ({s.labelled_windows} with "
                         f"birds), {s.species} species, {s.cmap_species} with ≥ {metrics.MIN_POSITIVES} positives")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"window_s": self.window, "files": self.files, "species": self.species,
                "rows": [{"predictions": n, **s.to_dict()} for n, s in self.rows]}


def _windows_of(d: Detection, first: int, count: int, window: float):
    """Row indices of the windows (of one file, rows first … first+count−1) that event ``d`` covers."""
    k0, k1 = max(0, int(d.start // window)), min(count, int(math.ceil(d.end / window)))
    return [first + k for k in range(k0, k1) if covers(d.start, d.end, k * window, (k + 1) * window)]


def truth_matrix(truth: dict[str, list[Detection]], preds: list[dict[str, list[Detection]]], species: list[str],
                 window: float):
    """Windows ({file key: (first row, count)}) over every truth file, and their (W, S) labels."""
    index = {s.lower(): i for i, s in enumerate(species)}
    wins, rows = {}, 0
    for key in sorted(truth):
        end = max([d.end for d in truth[key]] + [d.end for p in preds for d in p.get(key, [])] + [window])
        count = max(1, math.ceil(end / window - 1e-6))
        wins[key], rows = (rows, count), rows + count
    y = np.zeros((rows, len(species)), np.int8)
    for key, (first, count) in wins.items():
        for d in truth[key]:
            y[_windows_of(d, first, count, window), index[d.species.lower()]] = 1
    return wins, y


def score_matrix(pred: dict[str, list[Detection]], wins, species: list[str], window: float) -> np.ndarray:
    """(W, S) window scores: the highest confidence of a prediction of the species covering the window."""
    lookup: dict[str, int] = {}
    for i, s in enumerate(species):
        for n in label_names(s):
            lookup.setdefault(n, i)
    rows = sum(c for _, c in wins.values())
    s = np.zeros((rows, len(species)), np.float32)
    for key, (first, count) in wins.items():
        for d in pred.get(key, []):
            j = lookup.get(d.species.lower())
            if j is None:
                j = next((lookup[n] for n in label_names(d.species) if n in lookup), None)
            if j is not None:
                for w in _windows_of(d, first, count, window):
                    s[w, j] = max(s[w, j], d.confidence)
    return s


def evaluate(preds: list[str], truth: list[str], window: float = 5.0, species_list: str | None = None,
             min_positives: int = metrics.MIN_POSITIVES) -> Evaluation:
    """Score one or more prediction sets (each a table or a folder of tables) against annotations."""
    limits.window(window, "--window")
    truth_by = _collect(truth)
    if not truth_by:
        raise UsageError("no annotations found in --truth")
    species = sorted({d.species for ds in truth_by.values() for d in ds}, key=str.lower)
    if species_list:
        have = {s.lower() for s in species}
        species += [e for e in read_species_list(species_list) if e.lower() not in have]
    pred_sets = [_collect([p]) for p in preds]
    unmatched = [p for p, ps in zip(preds, pred_sets) if not set(ps) & set(truth_by)]
    if unmatched:
        raise UsageError(f"{unmatched[0]}: no prediction names a file that the annotations cover")
    wins, y = truth_matrix(truth_by, pred_sets, species, window)
    rows = [(p, metrics.score_all(y, score_matrix(ps, wins, species, window), min_positives))
            for p, ps in zip(preds, pred_sets)]
    return Evaluation(rows, species, window, len(truth_by))


def evaluate_command(preds: list[str], truth: list[str], window: float = 5.0, json_path: str | None = None,
                     species_list: str | None = None) -> int:
    ev = evaluate(preds, truth, window, species_list)
    print(ev.table())
    if json_path:
        files.write_json(json_path, ev.to_dict())
    return 0
