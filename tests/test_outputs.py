"""Detection tables: BirdNET-Analyzer's Raven layout, CSV, Audacity labels, reading back."""
import pytest

from birdsep.errors import UsageError
from birdsep.outputs import (RAVEN_COLUMNS, Detection, file_key, read_table, write_audacity, write_csv,
                             write_raven)

DETS = [
    Detection("rec/a, b.wav", 3.0, 6.0, "Turdus merula_Eurasian Blackbird", 0.8123, "source_2"),
    Detection("rec/a, b.wav", 0.0, 3.0, "Erithacus rubecula_European Robin", 0.5, "mix"),
    Detection("rec/a, b.wav", 0.0, 3.0, "Turdus merula_Eurasian Blackbird", 0.25, "source_1"),
]


def test_raven_layout_and_round_trip(tmp_path):
    path = tmp_path / "a.birdsep.selection.table.txt"
    write_raven(path, DETS)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[:12] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                        "Low Freq (Hz)", "High Freq (Hz)", "Common Name", "Species Code",
                                        "Confidence", "Begin Path", "File Offset (s)"]
    assert lines[0].split("\t") == RAVEN_COLUMNS
    first = lines[1].split("\t")
    assert first[:10] == ["1", "Spectrogram 1", "1", "0", "3", "0", "15000", "European Robin", "Erithacus rubecula",
                          "0.5000"]
    assert len(lines) == 4
    back = read_table(path)
    assert sorted(back, key=lambda d: (d.start, d.species)) == sorted(DETS, key=lambda d: (d.start, d.species))
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_round_trip_quotes_commas(tmp_path):
    path = tmp_path / "a.csv"
    write_csv(path, DETS)
    text = path.read_text().splitlines()
    assert text[0] == "file,start,end,species,confidence,channel"
    assert text[1] == '"rec/a, b.wav",0,3,Erithacus rubecula_European Robin,0.5000,mix'
    assert sorted(read_table(path), key=lambda d: (d.start, d.species)) == sorted(
        DETS, key=lambda d: (d.start, d.species))


def test_audacity_labels(tmp_path):
    path = tmp_path / "a.txt"
    write_audacity(path, DETS)
    lines = path.read_text().splitlines()
    assert lines[0] == "0.000\t3.000\tEuropean Robin (0.50, mix)"
    assert lines[2] == "3.000\t6.000\tEurasian Blackbird (0.81, source_2)"


def test_reads_raven_annotations_without_confidence(tmp_path):
    path = tmp_path / "XC123.Table.1.selections.txt"
    path.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
                    "1\tSpectrogram 1\t1\t1.5\t2.5\t1000\t4000\tWOTH\n"
                    "1\tWaveform 1\t1\t1.5\t2.5\t1000\t4000\tWOTH\n"
                    "2\tSpectrogram 1\t1\t4\t9\t2000\t8000\tEATO\n")
    dets = read_table(path)
    assert [(d.start, d.end, d.species, d.confidence) for d in dets] == [(1.5, 2.5, "WOTH", 1.0),
                                                                          (4.0, 9.0, "EATO", 1.0)]
    assert file_key(dets[0].file) == "XC123" == file_key("/x/y/XC123.flac")


def test_bad_tables_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UsageError, match="bad.csv: not a detection table"):
        read_table(bad)
    bad.write_text("file,start,end,species\nx,one,2,y\n")
    with pytest.raises(UsageError, match="line 2"):
        read_table(bad)
    assert read_table(_empty(tmp_path)) == []


def _empty(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("file,start,end,species,confidence\n")
    return p
