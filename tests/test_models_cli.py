"""`birdsep models` and choosing a separator by name: shipped, then installed in the user model
folder ($BIRDSEP_MODELS_DIR; downloads themselves are tested in test_modelstore.py)."""
import json
import shutil

import pytest

from birdsep import pretrained
from birdsep.cli import main
from birdsep.errors import UsageError


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    """A private, empty user model folder (not the user's ~/.local/share/birdsep/models)."""
    folder = tmp_path / "user_models"
    monkeypatch.setenv("BIRDSEP_MODELS_DIR", str(folder))
    return folder


def test_models_lists_every_shipped_separator(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    shipped = pretrained.shipped_separators()
    assert shipped and shipped[0]["default"]
    for m in shipped:
        assert m["name"] in out
        if m["card"].get("momi_heldout_db") is not None:
            assert f"{m['card']['momi_heldout_db']:.2f} dB" in out
    assert "(default)" in out


def test_resolve_by_name_with_or_without_prefix():
    for m in pretrained.shipped_separators():
        folder = pretrained.resolve(m["name"])
        assert folder == pretrained.MODELS / m["name"]
        if m["name"].startswith("separator_"):
            assert pretrained.resolve(m["name"][len("separator_"):]) == folder
    for bad in ("nosuch", "../models", ".."):
        with pytest.raises(UsageError, match="birdsep models"):
            pretrained.resolve(bad)


def test_card_is_read_and_shown(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    shutil.copytree(pretrained.DEFAULT_SEPARATOR, models / "separator_test_m4")
    (models / "separator_test_m4" / pretrained.CARD_NAME).write_text(json.dumps({
        "momi_heldout_db": 9.87, "momi_heldout_ci": [9.1, 10.5], "track_purity": 0.93,
        "training": {"steps": 1234, "cpu_hours": 5.5, "audio_hours": 4.08}, "eval": "held-out test set"}))
    (models / "not_a_model").mkdir()
    monkeypatch.setattr(pretrained, "MODELS", models)
    monkeypatch.setattr(pretrained, "DEFAULT_SEPARATOR", models / "separator_test_m4")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "separator_test_m4 (default)" in out and "9.87 dB [9.10, 10.50]" in out and "0.93" in out
    assert "1234 steps, 5.5 CPU-h, 4.08 h of audio" in out and "MoMi: held-out test set" in out
    assert "not_a_model" not in out


def test_installed_models_come_after_the_shipped_ones(user_models, capsys):
    shutil.copytree(pretrained.MODELS / "separator_small_m4", user_models / "my_separator")
    shutil.copytree(pretrained.MODELS / "separator_small_m4", user_models / "separator_stft_m4")  # shadowed
    shutil.copytree(pretrained.MODELS / "separator_small_m4", user_models / ".downloads" / "hidden")
    (user_models / "notes").mkdir()
    assert pretrained.resolve("my_separator") == user_models / "my_separator"
    assert pretrained.resolve("stft_m4") == pretrained.resolve("separator_stft_m4") == pretrained.DEFAULT_SEPARATOR
    assert pretrained.portable(user_models / "my_separator") == "my_separator"
    assert pretrained.portable(user_models / "separator_stft_m4") == str((user_models / "separator_stft_m4").resolve())
    assert pretrained.portable(pretrained.DEFAULT_SEPARATOR) == "separator_stft_m4"
    listed = [(m["name"], m["where"]) for m in pretrained.shipped_separators()]
    assert listed.count(("my_separator", "installed")) == 1 and [n for n, _ in listed].count("separator_stft_m4") == 1
    assert listed[0] == ("separator_stft_m4", "shipped") and listed[-1] == ("my_separator", "installed")
    for hidden in (".downloads", "hidden", "notes"):
        assert pretrained.shipped(hidden) is None
    assert main(["models"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert next(r for r in rows if r.startswith("my_separator")).split()[1] == "installed"
    assert next(r for r in rows if r.startswith("bird_mixit_m8")).split()[1:3] == ["to", "download"]
    assert pretrained.load_model("my_separator").config.num_sources == 4


def test_unknown_or_uninstalled_names_say_what_there_is(capsys):
    with pytest.raises(UsageError, match="bird_mixit_m4: not installed .*birdsep models download bird_mixit_m4"):
        pretrained.resolve("bird_mixit_m4")
    with pytest.raises(UsageError, match="nosuch: no model here .*known names: separator_stft_m4, "):
        pretrained.resolve("nosuch")
    assert main(["classify", "x.flac", "--model", "bird_mixit_m8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "birdsep models download bird_mixit_m8" in err


def test_models_help_names_download_and_import(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--help"])
    out = capsys.readouterr().out
    assert "download" in out and "import" in out
    with pytest.raises(SystemExit):
        main(["models", "download", "--help"])
    assert "bird_mixit_m4 or bird_mixit_m8" in capsys.readouterr().out
