"""Bad input, odd numbers and failing storage: one clear line and a non-zero exit, never a
traceback or a hang (issue 29)."""
import shutil

import numpy as np
import pytest
import torch

from birdsep.cli import main
from birdsep.errors import UsageError
from birdsep.pretrained import MODELS
from birdsep.separation.model import Separator, SeparatorConfig, save_model

TINY = SeparatorConfig(num_coeffs=16, bottleneck=8, hidden=16, repeats=1, blocks=3)


def _damage(path, how: str) -> None:
    blob = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "bad-header":
        path.write_bytes((16).to_bytes(8, "little") + b'{"a": [1, 2, 3' + b" " * 100)


@pytest.fixture
def tiny_folder(tmp_path):
    torch.manual_seed(0)
    return save_model(Separator(TINY).eval(), tmp_path / "tiny")


@pytest.mark.parametrize("how", ["empty", "truncated", "random", "bad-header"])
def test_damaged_weights_are_one_line(tiny_folder, tmp_path, capsys, how):
    from birdsep.pretrained import load_model

    _damage(tiny_folder / "model.safetensors", how)
    with pytest.raises(UsageError, match="model.safetensors: damaged or unreadable weights file"):
        load_model(tiny_folder)
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(8000, np.float32), 16000)
    assert main(["separate", str(wav), "--model", str(tiny_folder), "-o", str(tmp_path / "out"), "-q"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "damaged or unreadable weights file" in err
    log = tmp_path / "out" / "errors.log"
    assert not log.exists() or "Traceback" not in log.read_text()


def test_damaged_classifier_weights_are_one_line(tmp_path):
    from birdsep import files
    from birdsep.classification import model as cm

    folder = tmp_path / "clf"
    files.save_weights(folder, cm.KIND, {}, {"w": torch.zeros(2)})
    _damage(folder / "model.safetensors", "truncated")
    with pytest.raises(UsageError, match="damaged or unreadable weights file"):
        cm.load(folder)


def test_weights_of_another_shape_name_the_differences_in_one_line(tmp_path):
    from birdsep.pretrained import load_model

    folder = tmp_path / "mixed"
    shutil.copytree(MODELS / "separator_stft_m4", folder)
    shutil.copy(MODELS / "separator_stft_m8" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(UsageError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "\n" not in msg and "wrong shape" in msg and "do not fit" in msg and "(" in msg and "≠" in msg
