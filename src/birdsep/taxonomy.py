"""Species → genus, family and order, for the classifier's taxonomy heads (paper §2.3).

Sources, in the order they are consulted:

1. a user CSV (``--taxonomy FILE``) with a header row and the columns
   ``species,genus,family,order`` (optional ``scientific_name``): the way to place a species
   the checklists do not know, or to override them. ``species`` is the label as it appears in
   the data (folder name or CSV label);
2. the eBird/Clements 2024 checklist as shipped by the ``birdnames`` package (MIT licence;
   it also carries the AviList 2025 and BirdLife 2024 checklists, whose common names are
   accepted too, so that "Alpine Chough" finds *Pyrrhocorax graculus* although Clements calls
   it Yellow-billed Chough). Only its CSV files are read; pandas is not imported;
3. a handful of older Xeno-canto common names that none of the checklists uses (``ALIASES``);
4. a scientific binomial that no table knows still gives its genus (first word).

Labels are matched case- and punctuation-insensitively: ``pallass_leaf_warbler``,
``Pallas's Leaf Warbler`` and ``Phylloscopus proregulus`` are the same species. A species that
cannot be placed gets one warning and ``None`` at the missing levels; the classifier then
skips those levels' losses for its recordings instead of failing.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LEVELS = ("genus", "family", "order")

#: Xeno-canto names (pre-split or regional) that no shipped checklist spells this way.
ALIASES = {
    "blackcap": "Sylvia atricapilla",  # Clements: Eurasian Blackcap
    "whitebrowedrosefinch": "Carpodacus thura",  # split; XC's older name = Himalayan
    "yellowbilledhornbill": "Tockus leucomelas",  # split; Southern Yellow-billed Hornbill
    "subalpinewarbler": "Curruca cantillans",  # split; genus/family/order as the Western one
}

#: birdnames' files, the first one being the authority for genus/family/order.
_CHECKLISTS = (
    ("ebird_2024_taxonomy.csv", "ebird_common_name", "ebird_family", "ebird_order"),
    ("avilist_2025_taxonomy.csv", "avilist_common_name", "avilist_family", "avilist_order"),
    ("birdlife_2024_taxonomy.csv", "birdlife_common_name", "birdlife_family", "birdlife_order"),
)


@dataclass(frozen=True)
class Taxon:
    """Where a species label sits; a level is ``None`` when it is not known."""

    species: str
    scientific_name: str | None
    genus: str | None
    family: str | None
    order: str | None

    def level(self, name: str) -> str | None:
        return getattr(self, name)


def normalise(name: str) -> str:
    """Lower case, letters and digits only: the key every lookup goes through."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def split_label(label: str) -> tuple[str, str]:
    """``"Turdus merula_Eurasian Blackbird"`` (BirdNET's labels) → (scientific, common); a plain
    name → (name, name)."""
    sci, sep, common = label.partition("_")
    return (sci, common) if sep and common else (label, label)


def label_names(label: str) -> set[str]:
    """The names a label answers to, normalised (:func:`normalise`): itself and, for a
    BirdNET-style ``Scientific_Common`` label (or an eBird code with a common name), its two
    parts; a folder-style label (``european_robin``) is one name."""
    sci, common = split_label(label)
    parts = sci == common or " " in sci.strip() or any(c.isupper() or c == " " for c in common)
    return {normalise(n) for n in ((label, sci, common) if parts else (label,))} - {""}


def read_species_list(path: str | os.PathLike) -> list[str]:
    """A species list: one name per line (a full label, a scientific or a common name); blank
    lines and ``#`` comments ignored, repeats dropped. Raises UsageError naming the file."""
    from birdsep.errors import UsageError
    from birdsep.files import read_list

    species = read_list(path, "species list")
    if not species:
        raise UsageError.of(path, "species list is empty")
    return species


def _birdnames_data() -> Path | None:
    """The folder of birdnames' checklist CSVs, found without importing birdnames (pandas)."""
    spec = importlib.util.find_spec("birdnames")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "processed"
    return folder if folder.is_dir() else None


class Taxonomy:
    """Look-up table from species labels to :class:`Taxon`.

    >>> Taxonomy.load().lookup("european_robin").family
    'Muscicapidae'
    """

    def __init__(self) -> None:
        self._by_scientific: dict[str, tuple[str, str | None, str | None]] = {}  # key → (sci, family, order)
        self._by_name: dict[str, str] = {}  # normalised common/scientific name → scientific name
        self._common: dict[str, str] = {}  # normalised scientific name → common name (first checklist)
        self._user: dict[str, Taxon] = {}
        self._warned: set[str] = set()
        self.sources: list[str] = []

    # ------------------------------------------------------------------ building
    @classmethod
    def load(cls, user_csv: str | os.PathLike | None = None, *, checklists: bool = True) -> "Taxonomy":
        tax = cls()
        if checklists:
            tax._load_checklists()
        for common, sci in ALIASES.items():
            tax._by_name.setdefault(common, sci)
        if user_csv is not None:
            tax.add_csv(user_csv)
        return tax

    def _load_checklists(self) -> None:
        folder = _birdnames_data()
        if folder is None:
            log.warning("taxonomy: the 'birdnames' package is not installed; only a user taxonomy CSV "
                        "and scientific binomials can place species (pip install birdnames)")
            return
        for i, (fname, common_col, family_col, order_col) in enumerate(_CHECKLISTS):
            path = folder / fname
            if not path.is_file():
                continue
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    if row.get("avilist_taxon_rank", "species") != "species":
                        continue
                    sci = row["scientific_name"].strip()
                    key = normalise(sci)
                    if i == 0 or key not in self._by_scientific:
                        self._by_scientific.setdefault(
                            key, (sci, row.get(family_col) or None, (row.get(order_col) or "").title() or None))
                    self._by_name.setdefault(key, sci)
                    if row.get(common_col):
                        self._by_name.setdefault(normalise(row[common_col]), sci)
                        self._common.setdefault(key, row[common_col].strip())
            self.sources.append(f"birdnames:{fname}")

    def add_csv(self, path: str | os.PathLike) -> None:
        """Add (or override) species from a CSV with columns species,genus,family,order."""
        from birdsep.errors import UsageError

        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise UsageError.of(path, f"cannot read taxonomy CSV ({exc.strerror})") from None
        if not rows or "species" not in rows[0]:
            raise UsageError.of(path, "taxonomy CSV needs a header with species,genus,family,order")
        for row in rows:
            species = (row.get("species") or "").strip()
            if not species:
                continue
            get = lambda k: (row.get(k) or "").strip() or None  # noqa: E731
            self._user[normalise(species)] = Taxon(species, get("scientific_name"), get("genus"), get("family"),
                                                    get("order"))
        self.sources.append(str(path))

    # ------------------------------------------------------------------ lookup
    def lookup(self, species: str, *, warn: bool = True) -> Taxon:
        """The taxon of a species label; unknown levels are ``None`` (one warning per label)."""
        key = normalise(species)
        if key in self._user:
            t = self._user[key]
            return Taxon(species, t.scientific_name, t.genus, t.family, t.order)
        sci = self._by_name.get(key)
        if sci is not None:
            found = self._by_scientific.get(normalise(sci))
            family, order = (found[1], found[2]) if found else (None, None)
            if found is None:
                family, order = self._family_of_genus(sci.split()[0])
            taxon = Taxon(species, sci, sci.split()[0], family, order)
        else:
            words = re.split(r"[\s_]+", species.strip())
            if len(words) == 2 and words[0][:1].isupper() and words[1].islower():  # "Genus species"
                genus = words[0]
                family, order = self._family_of_genus(genus)
                taxon = Taxon(species, " ".join(words), genus, family, order)
            else:
                taxon = Taxon(species, None, None, None, None)
        missing = [lvl for lvl in LEVELS if taxon.level(lvl) is None]
        if missing and warn and key not in self._warned:
            self._warned.add(key)
            log.warning("taxonomy: cannot place species '%s' (%s unknown); only its species label is "
                        "trained; add it to a taxonomy CSV (species,genus,family,order) to fix this",
                        species, "/".join(missing))
        return taxon

    def names(self, label: str) -> tuple[str, str | None]:
        """(common name, scientific name) of a classifier label: BirdNET's
        ``Scientific_Common``, a common name, a scientific name or a folder-style label
        (``european_robin``); the scientific name is None where no checklist knows it."""
        sci, sep, common = label.partition("_")
        if sep and sci == common:  # BirdNET's non-bird classes, e.g. Engine_Engine
            return common, None
        if sep and re.fullmatch(r"[A-Z][a-z]+ [a-z-]+", sci) and common:  # BirdNET
            return common, sci
        found = self.lookup(label, warn=False).scientific_name
        if found is None:
            return label.replace("_", " ").strip(), None
        known = self._common.get(normalise(found))
        if normalise(label) == normalise(found) or label.islower():  # no usable common name in the label
            return known or label.replace("_", " "), found
        return label.replace("_", " ").strip(), found

    def _family_of_genus(self, genus: str) -> tuple[str | None, str | None]:
        prefix = normalise(genus)
        for key, (sci, family, order) in self._by_scientific.items():
            if key.startswith(prefix) and normalise(sci.split()[0]) == prefix:
                return family, order
        return None, None

    def __len__(self) -> int:
        return len(self._by_scientific) + len(self._user)


# ------------------------------------------------------------------------------ codes

#: eBird/Clements checklists, newest first: a code from an older one fills what a newer one renamed.
_EBIRD = ("ebird_2024_taxonomy.csv", "ebird_2023_taxonomy.csv", "ebird_2022_taxonomy.csv", "ebird_2021_taxonomy.csv")
#: Four-letter alpha codes (Institute for Bird Populations, then the Bird Banding Laboratory).
_ALPHA = (("ibp_2024_taxonomy.csv", "ibp_alpha"), ("bbl_2025_taxonomy.csv", "bbl_alpha"))


def _rows(name: str):
    """Rows of one of birdnames' checklist CSVs as dicts (nothing if birdnames or the file is missing)."""
    folder = _birdnames_data()
    path = folder / name if folder is not None else None
    if path is not None and path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            for row in reader:
                yield dict(zip(header, row))


@functools.lru_cache(maxsize=1)
def _ebird_codes() -> dict[str, str]:
    """Normalised scientific or common name → eBird code (newest checklist first)."""
    table: dict[str, str] = {}
    for name in _EBIRD:
        for row in _rows(name):
            code = row.get("ebird_ebird_code", "").strip()
            if code:
                table.setdefault(normalise(row["scientific_name"]), code)
                table.setdefault(normalise(row.get("ebird_common_name", "")), code)
    table.pop("", None)
    return table


@functools.lru_cache(maxsize=1)
def _field_codes() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(alpha code → scientific name, six-letter genus+species abbreviation → scientific names)."""
    alpha: dict[str, str] = {}
    abbrev: dict[str, set[str]] = {}
    for name, column in _ALPHA:
        for row in _rows(name):
            if row.get(column):
                alpha.setdefault(row[column].strip().upper(), row["scientific_name"].strip())
            if row.get("ibp_alpha6"):
                abbrev.setdefault(row["ibp_alpha6"].strip().lower(), set()).add(row["scientific_name"].strip())
    for name in [c[0] for c in _CHECKLISTS] + list(_EBIRD):
        for row in _rows(name):
            words = row["scientific_name"].split()
            if len(words) == 2:
                abbrev.setdefault((words[0][:3] + words[1][:3]).lower(), set()).add(" ".join(words))
    return alpha, abbrev


def ebird_code(label: str) -> str | None:
    """The eBird species code of a label (``Scientific_Common``, a scientific or a common name),
    as BirdNET-Analyzer writes it in a Raven table's "Species Code" column; None if unknown."""
    table = _ebird_codes()
    sci, _, common = label.partition("_")
    return table.get(normalise(sci)) or (table.get(normalise(common)) if common else None)


def species_for_code(code: str) -> list[str]:
    """Scientific names a field code may stand for: a four-letter alpha code (``WOTH``) or a
    six-letter genus + species abbreviation (``Sylatr``, ``HYLMUS``), sorted; [] if none."""
    alpha, abbrev = _field_codes()
    code = code.strip()
    if len(code) == 4 and code.upper() in alpha:
        return [alpha[code.upper()]]
    return sorted(abbrev.get(code.lower(), ()))
