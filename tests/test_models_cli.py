"""`birdsep models` and choosing a shipped separator by name."""
import json
import shutil

import pytest

from birdsep import pretrained
from birdsep.cli import main
from birdsep.errors import UsageError


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
