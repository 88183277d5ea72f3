"""The command line itself: fast, light --help (no PyTorch, no Lightning), --version, old flag
spellings kept for one release, and missing inputs that create nothing."""
import subprocess
import sys

import pytest

from birdsep import __version__
from birdsep.cli import COMMANDS, build_parser, main

HEAVY = ("torch", "lightning", "timm", "torchvision", "soxr", "soundfile")


def _imported_after(*argv: str) -> tuple[set[str], str]:
    """Run ``birdsep ARGV`` in a fresh interpreter; return the heavy modules it imported, and stdout."""
    code = ("import sys\nfrom birdsep.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('\\nIMPORTED', ' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    out, _, imported = r.stdout.rpartition("IMPORTED")
    return set(imported.split()), out


def _commands() -> list[str]:
    return list(build_parser()._subparsers._group_actions[0].choices)


def test_help_imports_neither_torch_nor_lightning():
    imported, out = _imported_after("--help")
    assert imported == set(), imported
    assert "(MixIT), and classify species from the mix and its separated tracks." in " ".join(out.split())
    assert len(_commands()) == len(COMMANDS)
    for command in _commands():
        imported, out = _imported_after(command, "--help")
        assert not imported & {"torch", "lightning", "timm", "torchvision"}, (command, imported)
        assert "usage: birdsep " + command in out


def test_evaluate_imports_neither_torch_nor_lightning(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("file,start,end,species\nf1.wav,0,3,A\n")
    imported, out = _imported_after("evaluate", "--pred", str(truth), "--truth", str(truth))
    assert "cmAP" in out and not imported & {"torch", "lightning"}


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"birdsep {__version__}"


@pytest.mark.parametrize("command,old,new,dest,value", [
    ("separate x.wav", "--overlap", "--block-overlap", "overlap", 0.25),
    ("classify-clips x.wav", "--model", "--classifier", "classifier", "run"),
    ("detect-activity x.wav", "--windows", "--max-windows", "max_windows", 3),
    ("detect-activity x.wav", "--seconds", "--window", "window", 4.0),
])
def test_old_flag_spellings_work_for_one_release_and_are_hidden(command, old, new, dest, value, capsys):
    args = command.split()
    required = ["--classifier", "run"] if args[0] == "classify-clips" and old != "--model" else []
    a = build_parser().parse_args(args + required + [old, str(value)])
    assert getattr(a, dest) == value
    assert f"{old} is now {new}" in capsys.readouterr().err
    assert getattr(build_parser().parse_args(args + required + [new, str(value)]), dest) == value
    with pytest.raises(SystemExit):
        build_parser().parse_args([args[0], "--help"])
    help_text = capsys.readouterr().out
    assert new in help_text and f"{old} " not in help_text.replace(new, "")


@pytest.mark.parametrize("command", ["separate", "classify"])
def test_missing_input_creates_nothing(command, tmp_path, capsys):
    out = tmp_path / "out"
    extra = ["--classifier", "birdnet", "--mode", "mix"] if command == "classify" else []
    try:
        code = main([command, str(tmp_path / "missing.wav"), "-o", str(out), "-q", *extra])
    except SystemExit as stop:  # pragma: no cover - argparse
        code = stop.code
    err = capsys.readouterr().err
    if command == "classify" and "birdnet extra" in err:
        pytest.skip("the birdnet extra is not installed")
    assert code == 1 and "missing.wav: no such file or folder" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["separate", "classify", "train-separator"])
@pytest.mark.parametrize("under", [False, True])
def test_an_output_folder_that_is_a_file_is_one_line(command, under, tmp_path, capsys):
    """-o / --out naming a file of the user's (or a folder under one): exit 2, one line, the file untouched."""
    import numpy as np
    import soundfile as sf

    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    out = mine / "run" if under else mine
    extra = {"classify": ["--mode", "mix"], "train-separator": ["--steps", "1"]}.get(command, [])
    code = main([command, str(clip), "--out", str(out), "-q", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"birdsep {command}: error: {out}: cannot be written: ") and "is a file, not a folder" in err[0]
    assert mine.read_text() == "mine"


@pytest.mark.parametrize("rate", ["7", "22.05", "1000000", "fast"])
def test_an_output_rate_out_of_range_is_one_line(rate, tmp_path, capsys):
    assert main(["separate", str(tmp_path / "x.wav"), "-o", str(tmp_path / "out"), "--sample-rate", rate]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"birdsep separate: error: --sample-rate must be 'native' or a rate in Hz from 1000 to 768000 "
                   f"(e.g. 22050), not '{rate}'"] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["separate", "x.wav", "--block", "nan"], ["classify", "x.wav", "--window", "inf"],
                                  ["classify", "x.wav", "--min_conf", "NaN"], ["species", "--lat", "nan", "--lon", "0"],
                                  ["train-separator", "d", "--out", "r", "--sparsity=-inf"]])
def test_numbers_must_be_finite(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "invalid number value" in capsys.readouterr().err
