"""The Lightning layer both trainers share: flags → options, run folders, the checkpoint a resume uses."""
import dataclasses

import pytest

from birdsep import training
from birdsep.cli import build_parser, options_from
from birdsep.errors import UsageError


@pytest.mark.parametrize("command,cls", [("train-separator", training.SeparatorTrainOptions),
                                         ("train-classifier", training.ClassifierTrainOptions)])
def test_flags_give_the_options_defaults(command, cls):
    a = build_parser().parse_args([command, "data", "-o", "run"])
    opts = options_from(cls, a)
    assert opts == cls(out="run")  # every default of the command line is the options' default
    a = build_parser().parse_args([command, "data", "--out", "run", "--steps", "7", "--devices", "0,1",
                                   "--strategy", "ddp", "--num-nodes", "2", "--precision", "bf16", "-q"])
    opts = options_from(cls, a)
    assert (opts.steps, opts.devices, opts.strategy, opts.num_nodes, opts.progress) == (7, "0,1", "ddp", 2, False)
    assert training.parse_devices(opts.devices) == [0, 1] and training.parse_devices("2") == 2
    assert training.PRECISION_ALIASES[opts.precision] == "bf16-mixed"


def test_shared_fields_and_separator_constants():
    base = {f.name for f in dataclasses.fields(training.TrainOptions)}
    for cls in (training.SeparatorTrainOptions, training.ClassifierTrainOptions):
        assert base <= {f.name for f in dataclasses.fields(cls)}
    from birdsep.separation.mixit import DEFAULT_SNR_MAX

    assert training.SeparatorTrainOptions(out="x").snr_max == DEFAULT_SNR_MAX


def test_old_no_progress_spelling_still_works(capsys):
    a = build_parser().parse_args(["train-classifier", "data", "-o", "run", "--no-progress"])
    assert a.progress is False
    assert "--no-progress is now --quiet" in capsys.readouterr().err


def test_run_folder_and_the_checkpoint_to_resume_from(tmp_path, capsys):
    opts = training.SeparatorTrainOptions(out=str(tmp_path))
    marker = tmp_path / "checkpoints" / "last.ckpt"
    assert training.start(opts, marker) == tmp_path  # nothing there yet
    assert training.find_checkpoint(marker.parent, opts, "run:") is None  # not resuming
    marker.parent.mkdir()
    marker.write_bytes(b"")
    with pytest.raises(UsageError, match="--resume"):
        training.start(opts, marker)
    resuming = dataclasses.replace(opts, resume=True)
    assert training.start(resuming, marker) == tmp_path
    assert training.find_checkpoint(marker.parent, resuming, "run:") == marker
    assert f"run: resumes from {marker}" in capsys.readouterr().out
    assert training.find_checkpoint(tmp_path / "nothing", resuming, "run:") is None
    with pytest.raises(UsageError, match="at least 1"):
        training.start(dataclasses.replace(opts, steps=0), marker)


def test_training_without_the_train_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    from birdsep.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightning" else real(name, *a))
    for command in ("train-separator", "train-classifier"):
        assert main([command, "data", "-o", "run"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f'birdsep {command}: error: training needs the train extra: pip install "birdsep[train]"']
