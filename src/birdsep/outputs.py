"""Detection tables: write them (Raven selection table in BirdNET-Analyzer's column layout,
CSV, Audacity labels; all atomically) and read them back (Raven or CSV) for evaluation.

A detection is one species in one window: ``file, start, end, species, confidence, channel``
where ``channel`` names the track whose score was kept (``mix`` or ``source_k``).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from birdsep.errors import UsageError
from birdsep.files import write_text
from birdsep.taxonomy import split_label

#: BirdNET-Analyzer's Raven header; birdsep appends one column, ``Source`` (the track kept).
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)",
                 "Source"]
CSV_COLUMNS = ["file", "start", "end", "species", "confidence", "channel"]
LOW_FREQ, HIGH_FREQ = 0, 15000  # BirdNET-Analyzer's default band


@dataclass(frozen=True)
class Detection:
    file: str
    start: float
    end: float
    species: str
    confidence: float
    channel: str = "mix"


def raven_text(dets: list[Detection]) -> str:
    lines = ["\t".join(RAVEN_COLUMNS)]
    for i, d in enumerate(sorted(dets, key=lambda d: (d.start, -d.confidence)), 1):
        sci, common = split_label(d.species)
        lines.append("\t".join([str(i), "Spectrogram 1", "1", f"{d.start:g}", f"{d.end:g}", str(LOW_FREQ),
                                str(HIGH_FREQ), common, sci, f"{d.confidence:.4f}", d.file, f"{d.start:g}",
                                d.channel]))
    return "\n".join(lines) + "\n"


def csv_text(dets: list[Detection]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in sorted(dets, key=lambda d: (d.start, -d.confidence)):
        w.writerow([d.file, f"{d.start:g}", f"{d.end:g}", d.species, f"{d.confidence:.4f}", d.channel])
    return buf.getvalue()


def audacity_text(dets: list[Detection]) -> str:
    """Audacity label track: ``start<TAB>end<TAB>label`` per line."""
    rows = []
    for d in sorted(dets, key=lambda d: (d.start, -d.confidence)):
        common = split_label(d.species)[1]
        rows.append(f"{d.start:.3f}\t{d.end:.3f}\t{common} ({d.confidence:.2f}, {d.channel})")
    return "".join(r + "\n" for r in rows)


def write_raven(path: str | os.PathLike, dets: list[Detection]) -> None:
    write_text(path, raven_text(dets))


def write_csv(path: str | os.PathLike, dets: list[Detection]) -> None:
    write_text(path, csv_text(dets))


def write_audacity(path: str | os.PathLike, dets: list[Detection]) -> None:
    write_text(path, audacity_text(dets))


# ------------------------------------------------------------------------------ reading

_START = ("begin time (s)", "start", "start_s", "begin", "onset")
_END = ("end time (s)", "end", "end_s", "offset")
_CONF = ("confidence", "score", "probability")
_FILE = ("file", "begin path", "begin file", "filename", "path")


def file_key(name: str) -> str:
    """What matches a prediction's file to an annotation's: the basename up to its first dot
    (``a/XC1.mp3``, ``XC1.Table.1.selections.txt`` and ``XC1.birdsep.results.csv`` → ``XC1``)."""
    base = Path(str(name).replace("\\", "/")).name
    return base.split(".")[0] if not base.startswith(".") else base


def _pick(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def read_table(path: str | os.PathLike) -> list[Detection]:
    """Read a Raven selection table (tab-separated) or a CSV into detections.

    Needs start, end and species columns (Raven: ``Begin Time (s)``, ``End Time (s)`` and one of
    ``Species``/``Annotation``/``Common Name``…; BirdNET-style tables with both ``Species Code``
    and ``Common Name`` give ``Scientific_Common``). Without a confidence column every row
    counts 1; without a file column the table's own name gives the file. Raven's waveform view
    duplicates (``View`` = ``Waveform 1``) are skipped. Raises UsageError naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError.of(path, f"cannot read table ({exc})") from None
    first = text.splitlines()[0] if text.strip() else ""
    delim = "\t" if "\t" in first else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    if not rows:
        return []
    header, body = rows[0], [r for r in rows[1:] if any(c.strip() for c in r)]
    i_start, i_end = _pick(header, _START), _pick(header, _END)
    i_conf, i_file = _pick(header, _CONF), _pick(header, _FILE)
    i_view, i_src = _pick(header, ("view",)), _pick(header, ("source",) if delim == "\t" else ("channel",))
    i_code, i_common = _pick(header, ("species code",)), _pick(header, ("common name",))
    i_species = _pick(header, ("species", "label", "annotation", "class", "scientific name"))
    if i_start is None or i_end is None or (i_species is None and i_common is None and i_code is None):
        raise UsageError.of(path, "not a detection table (needs start, end and species columns)")
    out = []
    for n, r in enumerate(body, 2):
        try:
            if i_view is not None and r[i_view].lower().startswith("waveform"):
                continue
            if i_species is not None:
                species = r[i_species]
            elif i_code is not None and i_common is not None and r[i_code] != r[i_common]:
                species = f"{r[i_code]}_{r[i_common]}"
            else:
                species = r[i_common if i_common is not None else i_code]
            out.append(Detection(
                file=r[i_file] if i_file is not None else path.name, start=float(r[i_start]), end=float(r[i_end]),
                species=species.strip(), confidence=float(r[i_conf]) if i_conf is not None else 1.0,
                channel=r[i_src] if i_src is not None else "mix"))
        except (IndexError, ValueError) as exc:
            raise UsageError.of(path, f"line {n}: cannot parse ({exc})") from None
    return out
