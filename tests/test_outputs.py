"""Detection tables in BirdNET-Analyzer's formats (Raven, CSV, Audacity, Kaleidoscope), combined tables, reading back."""
import pytest

from birdsep.errors import UsageError
from birdsep.outputs import (RAVEN_COLUMNS, RTYPES, Context, Detection, file_key, read_table, write_combined,
                             write_csv, write_outputs, write_raven)

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
                                        "Confidence", "Begin Path", "File Offset (s)"]  # BirdNET-Analyzer's
    assert lines[0].split("\t") == RAVEN_COLUMNS
    first = lines[1].split("\t")
    assert first == ["1", "Spectrogram 1", "1", "0", "3", "0", "15000", "European Robin", "eurrob1", "0.5000",
                     "rec/a, b.wav", "0", "Erithacus rubecula", "mix"]  # eBird code, then the scientific name
    assert len(lines) == 4
    back = read_table(path)
    assert sorted(back, key=lambda d: (d.start, d.species)) == sorted(DETS, key=lambda d: (d.start, d.species))
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_round_trip_quotes_commas(tmp_path):
    path = tmp_path / "a.csv"
    write_csv(path, DETS)
    text = path.read_text().splitlines()
    assert text[0] == "Start (s),End (s),Scientific name,Common name,Confidence,File,Source"
    assert text[1] == '0,3,Erithacus rubecula,European Robin,0.5000,"rec/a, b.wav",mix'
    assert sorted(read_table(path), key=lambda d: (d.start, d.species)) == sorted(
        DETS, key=lambda d: (d.start, d.species))


def test_audacity_labels_as_birdnet_analyzer_writes_them(tmp_path):
    path = tmp_path / "a.txt"
    write_outputs(tmp_path / "a", DETS, ("audacity",))
    lines = (tmp_path / "a.birdsep.labels.txt").read_text().splitlines()
    assert lines[0] == "0.000\t3.000\tErithacus rubecula, European Robin\t0.5000\tmix"
    assert lines[2] == "3.000\t6.000\tTurdus merula, Eurasian Blackbird\t0.8123\tsource_2"
    assert not path.exists()


def test_kaleidoscope_round_trip(tmp_path):
    write_outputs(tmp_path / "a", DETS, ("kaleidoscope",), Context(lat=47.5, lon=7.6, week=20, overlap=1.0))
    path = tmp_path / "a.birdsep.results.kaleidoscope.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == ("INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,"
                        "overlap,sensitivity,source")
    assert lines[1] == ',rec,"a, b.wav",0,3,Erithacus rubecula,European Robin,0.5000,47.5,7.6,20,1,1,mix'
    back = read_table(path)
    assert sorted((d.start, d.end, d.species, d.confidence, d.channel) for d in back) == sorted(
        (d.start, d.end, d.species, d.confidence, d.channel) for d in DETS)
    assert {d.file for d in back} == {"a, b.wav"} and file_key("a, b.wav") == file_key(DETS[0].file)


def test_combined_tables_shift_raven_times_and_read_back(tmp_path):
    one = [Detection("x/one.wav", 0, 3, "Turdus merula_Eurasian Blackbird", 0.9, "mix")]
    two = [Detection("x/two.wav", 3, 6, "Erithacus rubecula_European Robin", 0.7, "source_1"),
           Detection("x/two.wav", 0, 3, "Erithacus rubecula_European Robin", 0.6, "mix")]
    for name, dets in (("one", one), ("two", two)):
        write_outputs(tmp_path / name, dets, RTYPES)
    done = [("x/one.wav", tmp_path / "one", 10.0), ("x/two.wav", tmp_path / "two", 9.0)]
    written = write_combined(tmp_path, done, RTYPES)
    assert sorted(p.name for p in written) == ["birdsep_CombinedTable.csv", "birdsep_Kaleidoscope.csv",
                                               "birdsep_SelectionTable.list.txt", "birdsep_SelectionTable.txt"]
    raven = [ln.split("\t") for ln in (tmp_path / "birdsep_SelectionTable.txt").read_text().splitlines()]
    assert [r[0] for r in raven[1:]] == ["1", "2", "3"]
    assert [(r[3], r[4], r[11]) for r in raven[1:]] == [("0", "3", "0"), ("10", "13", "0"), ("13", "16", "3")]
    assert (tmp_path / "birdsep_SelectionTable.list.txt").read_text() == "x/one.wav\nx/two.wav\n"
    want = sorted(one + two, key=lambda d: (d.file, d.start))
    for name in ("birdsep_SelectionTable.txt", "birdsep_CombinedTable.csv", "birdsep_Kaleidoscope.csv"):
        back = sorted(read_table(tmp_path / name), key=lambda d: (d.file, d.start))
        assert [(d.start, d.end, d.species, d.confidence, d.channel) for d in back] == [
            (d.start, d.end, d.species, d.confidence, d.channel) for d in want], name
    assert (tmp_path / "birdsep_CombinedTable.csv").read_text().count("Start (s)") == 1


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
    path.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\n1\tSpectrogram 1\t1\t1.5\t2.5\n")
    with pytest.raises(UsageError, match="not a detection table"):
        read_table(path)
    assert [d.species for d in read_table(path, species="Ninox boobook")] == ["Ninox boobook"]


def test_old_birdsep_csv_still_reads(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("file,start,end,species,confidence,channel\nx.wav,0,5,Turdus merula_Eurasian Blackbird,0.5,source_1\n")
    assert read_table(path) == [Detection("x.wav", 0, 5, "Turdus merula_Eurasian Blackbird", 0.5, "source_1")]


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
