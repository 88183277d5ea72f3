"""Species → genus / family / order lookup."""
import logging

import pytest

from birdsep.errors import UsageError
from birdsep.taxonomy import Taxonomy, normalise


@pytest.fixture(scope="module")
def tax():
    return Taxonomy.load()


def test_normalise_ignores_case_and_punctuation():
    assert normalise("Pallas's Leaf-Warbler") == normalise("pallass_leaf_warbler") == "pallassleafwarbler"


@pytest.mark.parametrize("label, genus, family, order", [
    ("european_robin", "Erithacus", "Muscicapidae", "Passeriformes"),
    ("Black-capped Chickadee", "Poecile", "Paridae", "Passeriformes"),
    ("spixs_guan", "Penelope", "Cracidae", "Galliformes"),
    ("Luscinia megarhynchos", "Luscinia", "Muscicapidae", "Passeriformes"),  # scientific name
    ("alpine_chough", "Pyrrhocorax", "Corvidae", "Passeriformes"),  # AviList name (Clements: Yellow-billed)
    ("blackcap", "Sylvia", "Sylviidae", "Passeriformes"),  # alias (Clements: Eurasian Blackcap)
])
def test_lookup_places_species(tax, label, genus, family, order):
    t = tax.lookup(label)
    assert (t.genus, t.family, t.order) == (genus, family, order)


def test_unknown_binomial_still_gives_genus(tax):
    t = tax.lookup("Turdus imaginarius")
    assert (t.genus, t.family, t.order) == ("Turdus", "Turdidae", "Passeriformes")


def test_unknown_species_warns_once_and_does_not_crash(tax, caplog):
    with caplog.at_level(logging.WARNING, logger="birdsep.taxonomy"):
        a = tax.lookup("mystery_bird_xyz")
        b = tax.lookup("Mystery Bird XYZ")
    assert (a.genus, a.family, a.order) == (None, None, None) == (b.genus, b.family, b.order)
    warnings = [r for r in caplog.records if "mystery" in r.getMessage().lower()]
    assert len(warnings) == 1 and "cannot place" in warnings[0].getMessage()


def test_user_csv_extends_and_overrides(tmp_path):
    f = tmp_path / "tax.csv"
    f.write_text("species,genus,family,order\nmystery_bird_xyz,Fooia,Fooidae,Fooiformes\n"
                 "european_robin,Erithacus,Robinidae,Passeriformes\n")
    tax = Taxonomy.load(f)
    assert tax.lookup("Mystery Bird XYZ").family == "Fooidae"
    assert tax.lookup("european_robin").family == "Robinidae"


def test_bad_user_csv_is_one_line_error(tmp_path):
    f = tmp_path / "tax.csv"
    f.write_text("name,kind\nx,y\n")
    with pytest.raises(UsageError, match="species,genus,family,order"):
        Taxonomy.load(f)
    with pytest.raises(UsageError, match="cannot read"):
        Taxonomy.load(tmp_path / "missing.csv")


def test_checklist_missing_means_user_csv_only(tmp_path):
    tax = Taxonomy.load(checklists=False)
    assert tax.lookup("european_robin", warn=False).family is None


def test_ebird_codes_and_field_codes():
    from birdsep.taxonomy import ebird_code, species_for_code

    assert ebird_code("Turdus merula_Eurasian Blackbird") == "eurbla"
    assert ebird_code("European Robin") == ebird_code("Erithacus rubecula") == "eurrob1"
    assert ebird_code("Curruca iberiae_Western Subalpine Warbler") == "subwar6"  # a 2021 split, as in BirdNET V2.4
    assert ebird_code("Engine_Engine") is None
    assert species_for_code("WOTH") == ["Hylocichla mustelina"]  # four-letter alpha code
    assert species_for_code("eato") == ["Pipilo erythrophthalmus"]
    assert species_for_code("Sylatr") == ["Sylvia atricapilla", "Sylvia atriceps"]  # genus + species initials
    assert "Erithacus rubecula" in species_for_code("Erirub")
    assert species_for_code("Cicorn") == []  # a cicada
