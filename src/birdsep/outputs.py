"""Detection tables: write them in BirdNET-Analyzer's formats (``--rtype``: Raven selection
table, CSV, Audacity labels, Kaleidoscope CSV; each atomically), combine a batch's per-file
tables into one of each kind, and read tables back (Raven, CSV, Kaleidoscope) for evaluation.

A detection is one species in one window: ``file, start, end, species, confidence, channel``
where ``channel`` names the track whose score was kept (``mix`` or ``source_k``). Every format
has BirdNET-Analyzer's columns in its order, and birdsep adds what it knows beyond them at
the end: the track (``Source``/``source``), and in the Raven table the scientific name (its
``Species Code`` holds the eBird code, as BirdNET-Analyzer's does).
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

#: BirdNET-Analyzer's Raven header, then birdsep's two columns.
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)",
                 "Scientific Name", "Source"]
#: BirdNET-Analyzer's CSV header, then the track.
CSV_COLUMNS = ["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File", "Source"]
#: BirdNET-Analyzer's Kaleidoscope header, then the track.
KALEIDOSCOPE_COLUMNS = ["INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name",
                        "confidence", "lat", "lon", "week", "overlap", "sensitivity", "source"]
LOW_FREQ, HIGH_FREQ = 0, 15000  # BirdNET-Analyzer's band
#: --rtype → per-file suffix.
SUFFIXES = {"table": ".birdsep.selection.table.txt", "csv": ".birdsep.results.csv",
            "audacity": ".birdsep.labels.txt", "kaleidoscope": ".birdsep.results.kaleidoscope.csv"}
#: --rtype → the batch's combined file in OUT (the types that BirdNET-Analyzer combines).
COMBINED = {"table": "birdsep_SelectionTable.txt", "csv": "birdsep_CombinedTable.csv",
            "kaleidoscope": "birdsep_Kaleidoscope.csv"}
RTYPES = tuple(SUFFIXES)


@dataclass(frozen=True)
class Detection:
    file: str
    start: float
    end: float
    species: str
    confidence: float
    channel: str = "mix"


@dataclass(frozen=True)
class Context:
    """What a table states besides its detections: the recording's top frequency (Raven's High
    Freq: BirdNET's 15 kHz or the Nyquist frequency, whichever is lower) and the settings that
    BirdNET-Analyzer's Kaleidoscope rows repeat (−1: not given)."""

    high_freq: int = HIGH_FREQ
    lat: float = -1
    lon: float = -1
    week: int = -1
    overlap: float = 0.0
    sensitivity: float = 1.0


def _sorted(dets: list[Detection]) -> list[Detection]:
    return sorted(dets, key=lambda d: (d.start, -d.confidence, d.species))


def raven_text(dets: list[Detection], ctx: Context = Context()) -> str:
    from birdsep.taxonomy import ebird_code

    lines = ["\t".join(RAVEN_COLUMNS)]
    for i, d in enumerate(_sorted(dets), 1):
        sci, common = split_label(d.species)
        lines.append("\t".join([str(i), "Spectrogram 1", "1", f"{d.start:g}", f"{d.end:g}", str(LOW_FREQ),
                                str(ctx.high_freq), common, ebird_code(d.species) or sci, f"{d.confidence:.4f}",
                                d.file, f"{d.start:g}", sci, d.channel]))
    return "\n".join(lines) + "\n"


def csv_text(dets: list[Detection], ctx: Context = Context()) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in _sorted(dets):
        w.writerow([f"{d.start:g}", f"{d.end:g}", *split_label(d.species), f"{d.confidence:.4f}", d.file, d.channel])
    return buf.getvalue()


def audacity_text(dets: list[Detection], ctx: Context = Context()) -> str:
    """Audacity label track as BirdNET-Analyzer writes it: ``start, end, "Scientific, Common",
    confidence`` tab-separated, then the track."""
    return "".join(f"{d.start:.3f}\t{d.end:.3f}\t{', '.join(split_label(d.species))}\t{d.confidence:.4f}\t{d.channel}\n"
                   for d in _sorted(dets))


def kaleidoscope_text(dets: list[Detection], ctx: Context = Context()) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(KALEIDOSCOPE_COLUMNS)
    for d in _sorted(dets):
        folder, name = os.path.split(d.file)
        parent, folder_name = os.path.split(folder)
        w.writerow([parent.rstrip("/"), folder_name, name, f"{d.start:g}", f"{d.end - d.start:g}",
                    *split_label(d.species), f"{d.confidence:.4f}", f"{ctx.lat:g}", f"{ctx.lon:g}", ctx.week,
                    f"{ctx.overlap:g}", f"{ctx.sensitivity:g}", d.channel])
    return buf.getvalue()


TEXT = {"table": raven_text, "csv": csv_text, "audacity": audacity_text, "kaleidoscope": kaleidoscope_text}


def paths_of(base: Path, rtypes=RTYPES) -> dict[str, Path]:
    """Per-file output paths: ``base`` is OUT/<the input's relative path without extension>."""
    return {r: base.with_name(base.name + SUFFIXES[r]) for r in rtypes}


def write_outputs(base: Path, dets: list[Detection], rtypes=RTYPES, ctx: Context = Context()) -> None:
    """Write one file's detections in each of ``rtypes`` (each file atomically)."""
    for r, path in paths_of(base, rtypes).items():
        write_text(path, TEXT[r](dets, ctx))


def write_raven(path: str | os.PathLike, dets: list[Detection], ctx: Context = Context()) -> None:
    write_text(path, raven_text(dets, ctx))


def write_csv(path: str | os.PathLike, dets: list[Detection], ctx: Context = Context()) -> None:
    write_text(path, csv_text(dets, ctx))


# ------------------------------------------------------------------------------ a batch's combined tables


def write_combined(out: Path, done: list[tuple[str, Path, float]], rtypes=RTYPES) -> list[Path]:
    """One table per combinable type in ``rtypes`` over a batch's files, in the given order.

    ``done``: (audio file, output base, duration s) of every file with outputs. As in
    BirdNET-Analyzer, the combined Raven table (``birdsep_SelectionTable.txt``) numbers the
    selections anew and shifts Begin/End Time by the durations of the files before (Raven Pro
    opens the files listed in ``birdsep_SelectionTable.list.txt`` as one sound; ``File Offset
    (s)`` and ``Begin Path`` still give each detection's own file and time); the CSV and
    Kaleidoscope tables are the per-file rows under one header. Rebuilt from the per-file
    tables on every run, so a resumed batch ends with the same files as an uninterrupted one.
    """
    written = []
    for r in rtypes:
        if r not in COMBINED:
            continue
        header, rows, offset = None, [], 0.0
        for audio_file, base, duration in done:
            lines = paths_of(base, (r,))[r].read_text(encoding="utf-8").splitlines()
            header = header or lines[0]
            for line in lines[1:]:
                if r == "table":
                    cells = line.split("\t")
                    cells[0] = str(len(rows) + 1)
                    cells[3], cells[4] = f"{float(cells[3]) + offset:g}", f"{float(cells[4]) + offset:g}"
                    line = "\t".join(cells)
                rows.append(line)
            offset += duration
        if header is None:
            header = "\t".join(RAVEN_COLUMNS) if r == "table" else (
                ",".join(CSV_COLUMNS) if r == "csv" else ",".join(KALEIDOSCOPE_COLUMNS))
        path = out / COMBINED[r]
        write_text(path, "\n".join([header] + rows) + "\n")
        written.append(path)
        if r == "table":
            listing = path.with_name(path.name[: -len(".txt")] + ".list.txt")
            write_text(listing, "".join(f"{f}\n" for f, _, _ in done))
            written.append(listing)
    return written


# ------------------------------------------------------------------------------ reading

_START = ("file offset (s)", "begin time (s)", "start (s)", "start", "start_s", "begin", "onset", "offset")
_END = ("end time (s)", "end (s)", "end", "end_s")
_CONF = ("confidence", "score", "probability")
_FILE = ("begin path", "file", "in file", "begin file", "filename", "path")


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


def read_table(path: str | os.PathLike, species: str | None = None) -> list[Detection]:
    """Read a Raven selection table (tab-separated), a CSV or a Kaleidoscope CSV into detections.

    Needs start and end (or duration) columns and a species: ``Species``/``Annotation``/…, or a
    scientific and a common name (BirdNET-style tables; read as ``Scientific_Common``), or
    Raven's ``Common Name`` with ``Species Code``. Times within the file come from ``File
    Offset (s)`` where a table has it (so a combined Raven table reads right). Without a
    confidence column every row counts 1; without a file column the table's own name gives the
    file. Raven's waveform view duplicates (``View`` = ``Waveform 1``) are skipped. ``species``
    labels every row of a table that has no species column (single-target annotations).
    Raises UsageError naming the file.
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
    i_start, i_end, i_dur = _pick(header, _START), _pick(header, _END), _pick(header, ("duration",))
    i_begin = _pick(header, ("begin time (s)",))
    i_conf, i_file = _pick(header, _CONF), _pick(header, _FILE)
    i_view, i_src = _pick(header, ("view",)), _pick(header, ("source", "channel") if delim == "," else ("source",))
    i_sci = _pick(header, ("scientific name", "scientific_name"))
    i_common, i_code = _pick(header, ("common name", "common_name")), _pick(header, ("species code",))
    i_species = _pick(header, ("species", "label", "annotation", "class"))
    named = i_species is not None or i_sci is not None or i_common is not None or i_code is not None
    if i_start is None or (i_end is None and i_dur is None) or not (named or species):
        raise UsageError.of(path, "not a detection table (needs start, end and species columns)")
    out = []
    for n, r in enumerate(body, 2):
        try:
            if i_view is not None and r[i_view].lower().startswith("waveform"):
                continue
            sci = r[i_sci if i_sci is not None else i_code] if (i_sci is not None or i_code is not None) else None
            common = r[i_common] if i_common is not None else None
            if i_species is not None:
                label = r[i_species]
            elif sci and common and sci != common:
                label = f"{sci}_{common}"
            elif sci or common:
                label = sci or common
            else:
                label = species
            start = float(r[i_start])
            if i_end is not None:  # a combined Raven table's Begin/End run on; File Offset is the file's own
                end = float(r[i_end]) - (float(r[i_begin]) - start if i_begin is not None else 0.0)
            else:
                end = start + float(r[i_dur])
            out.append(Detection(
                file=r[i_file] if i_file is not None else path.name, start=start, end=end,
                species=label.strip(), confidence=float(r[i_conf]) if i_conf is not None else 1.0,
                channel=r[i_src] if i_src is not None else "mix"))
        except (IndexError, ValueError) as exc:
            raise UsageError.of(path, f"line {n}: cannot parse ({exc})") from None
    return out
