"""The Lightning layer both trainers share: flags → options, run folders, the checkpoint and options a resume uses."""
import dataclasses
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from birdsep import training
from birdsep.cli import build_parser, options_from
from birdsep.errors import StorageError, UsageError


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


def _ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(3)}}, path)
    return path


def test_run_folder_guard(tmp_path):
    opts = training.SeparatorTrainOptions(out=str(tmp_path))
    marker = tmp_path / "checkpoints" / "last.ckpt"
    assert training.start(opts, marker) == tmp_path  # nothing there yet
    marker.parent.mkdir()
    marker.write_bytes(b"")
    with pytest.raises(UsageError, match="--resume"):
        training.start(opts, marker)
    stale = tmp_path / ".options.json.abc123.tmp"  # left by a run killed while writing
    stale.write_text("{")
    assert training.start(dataclasses.replace(opts, resume=True), marker) == tmp_path
    assert not stale.exists()
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


def test_resume_takes_the_newest_checkpoint_that_loads_whatever_its_name(tmp_path, capsys):
    """The issue's case: Lightning wrote last-v1.ckpt beside an older last.ckpt."""
    opts = training.SeparatorTrainOptions(out=str(tmp_path), resume=True)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert training.find_checkpoint(folder, dataclasses.replace(opts, resume=False), "run:") is None
    assert training.find_checkpoint(folder, opts, "run:") is None
    assert "no checkpoint" in capsys.readouterr().err
    _ckpt(folder / "last.ckpt", 200)
    _ckpt(folder / "last-v1.ckpt", 300)
    _ckpt(folder / "step-100.ckpt", 100)
    (folder / ".last.ckpt.x1y2.tmp").write_bytes(b"PK half")  # a write killed half-way
    found = training.find_checkpoint(folder, opts, "run:")
    assert found == (folder / "last-v1.ckpt", 300)
    out, err = capsys.readouterr()
    assert out == f"run: resumes from {folder / 'last-v1.ckpt'} (step 300)\n" and err == ""
    assert not list(folder.glob("*.tmp"))

    whole = (folder / "last-v1.ckpt").read_bytes()
    (folder / "last-v1.ckpt").write_bytes(whole[: len(whole) // 2])  # truncated newest
    (folder / "step-400.ckpt").write_bytes(b"\0" * 100)  # garbage
    assert training.find_checkpoint(folder, opts, "run:") == (folder / "last.ckpt", 200)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("damaged checkpoint" in line for line in err)
    assert "last-v1.ckpt" in err[0] and "step-400.ckpt" in err[1]

    _ckpt(folder / "step-200.ckpt", 200)  # a tie: last.ckpt is the one to carry on from
    assert training.find_checkpoint(folder, opts, "run:").path.name == "last.ckpt"

    for f in ("last.ckpt", "step-100.ckpt", "step-200.ckpt"):
        (folder / f).write_bytes(b"")
    with pytest.raises(UsageError, match="no checkpoint here loads"):  # never start again over a run's work
        training.find_checkpoint(folder, opts, "run:")


#: options.json as birdsep versions before resume checks wrote it (a real run's, trimmed):
#: no sparsity or init_from yet, the --exclude-from globs expanded.
OLD_OPTIONS = {
    "options": {"out": "/runs/stft_m4", "preset": "stft", "sources": 4, "steps": 100000, "batch_size": 4,
                "lr": 0.001, "clip_seconds": None, "exclude": ["*/xc/blood_pheasant/*", "*/xc_extra/wrentit/*"],
                "checkpoint_every": 200, "resume": False, "seed": 0, "workers": 1, "precision": "bf16-mixed",
                "accelerator": "auto", "devices": "auto", "strategy": "auto", "num_nodes": 1, "threads": 1,
                "snr_max": 30.0, "grad_clip": 5.0, "progress": True},
    "model": {"sample_rate": 32000, "num_sources": 4, "basis": "stft"},
    "data": ["/work/shared/data"],
    "resumes": 0,
}
OLD_COMMAND = ["train-separator", "/work/shared/data", "--exclude-from", "EXCLUDES", "--out", "/runs/stft_m4",
               "--preset", "stft", "--sources", "4", "--steps", "100000", "--batch-size", "4", "--lr", "1e-3",
               "--checkpoint-every", "200", "--precision", "bf16-mixed", "--threads", "1", "--workers", "1"]


def _separator_options(tmp_path, *extra):
    from birdsep.files import read_list

    excludes = tmp_path / "heldout.txt"
    excludes.write_text("# held-out species\n*/xc/blood_pheasant/*\n*/xc_extra/wrentit/*\n")
    a = build_parser().parse_args([str(excludes) if w == "EXCLUDES" else w for w in OLD_COMMAND] + ["--resume", *extra])
    globs = [g for f in a.exclude_from for g in read_list(f, "exclude list")]
    return options_from(training.SeparatorTrainOptions, a, exclude=tuple(a.exclude + globs))


def _effective(options):
    from birdsep.separation.train import _effective

    return _effective(options)


def test_an_old_run_resumes_with_its_command_line(tmp_path, capsys):
    run = tmp_path / "options.json"
    run.write_text(json.dumps(OLD_OPTIONS))
    opts = _separator_options(tmp_path)
    blob = training.stored_run(run, opts, ["/work/shared/data"], "run:", effective=_effective)
    assert blob["model"]["num_sources"] == 4
    assert capsys.readouterr().out == ""  # nothing changed: nothing to say
    # the same run without --sources (the preset's 4) and --workers 1 being the default
    plain = dataclasses.replace(opts, sources=None)
    assert training.stored_run(run, plain, ["/work/shared/data/"], "run:", effective=_effective) is not None


def test_changed_options_reported_or_refused(tmp_path, capsys):
    run = tmp_path / "options.json"
    run.write_text(json.dumps(OLD_OPTIONS))
    data = ["/work/shared/data"]
    opts = _separator_options(tmp_path, "--steps", "200000", "--checkpoint-every", "500", "--lr", "5e-4",
                              "--threads", "2", "--precision", "32-true", "-q")
    assert training.stored_run(run, opts, data, "run:", effective=_effective) is not None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("run: resumes with changed options: ")
    for change in ("--steps 100000 → 200000", "--checkpoint-every 200 → 500", "--lr 0.001 → 0.0005",
                   "--threads 1 → 2", "--precision bf16-mixed → 32-true", "progress bar on → off"):
        assert change in out

    for extra, data_now, named in [(["--preset", "small"], data, "--preset stft (now small)"),
                                   (["--sources", "8"], data, "--sources 4 (now 8)"),
                                   (["--exclude", "*/veery/*"], data, "--exclude"),
                                   (["--batch-size", "8"], data, "--batch-size 4 (now 8)"),
                                   (["--sparsity", "0.1"], data, "--sparsity 0 (now 0.1)"),  # absent: the default
                                   ([], ["/elsewhere"], "data /work/shared/data (now /elsewhere)")]:
        changed = _separator_options(tmp_path, *extra)
        with pytest.raises(UsageError) as err:
            training.stored_run(run, changed, data_now, "run:", effective=_effective)
        assert named in str(err.value) and "--allow-changed-options" in str(err.value)
        assert "\n" not in str(err.value)
        allowed = dataclasses.replace(changed, allow_changed_options=True)
        assert training.stored_run(run, allowed, data_now, "run:", effective=_effective) is not None
        assert "--allow-changed-options" in capsys.readouterr().out


def test_classifier_options(tmp_path, capsys):
    run = tmp_path / "run.json"
    opts = training.ClassifierTrainOptions(out=str(tmp_path), species_list="species.txt", resume=True)
    run.write_text(json.dumps({"classifier": {}, "options": dataclasses.asdict(opts), "data": "labels.csv"}))
    assert training.stored_run(run, dataclasses.replace(opts, steps=9), ["labels.csv"], "cls:") is not None
    assert "--steps 2000 → 9" in capsys.readouterr().out
    for change in ({"backbone": "b1"}, {"species_list": "other.txt"}, {"no_augment": ("mix",)}, {"ensemble": 2}):
        with pytest.raises(UsageError, match="--allow-changed-options"):
            training.stored_run(run, dataclasses.replace(opts, **change), ["labels.csv"], "cls:")
    with pytest.raises(UsageError, match="data labels.csv"):
        training.stored_run(run, opts, ["other.csv"], "cls:")
    assert training.stored_run(run, dataclasses.replace(opts, resume=False), ["x"], "cls:") is None


def test_a_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    from birdsep import files

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")

    def full(_self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match="last.ckpt: cannot be written: no space left on device"):
        with files.atomic(target) as tmp:
            monkeypatch.setattr(Path, "write_bytes", full)
            tmp.write_bytes(b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    err = training._no_space(RuntimeError("logger failed"))
    assert err is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.csv"))
        except OSError:
            raise RuntimeError("Lightning's clean-up after the failure")
    except RuntimeError as exc:
        assert training._no_space(exc).path.endswith("metrics.csv")
