"""Models birdsep downloads or imports: Google's published bird MixIT separators (Denton, Wisdom &
Hershey, ICASSP 2022; google-research/sound-separation ``models/bird_mixit``, Apache-2.0),
pinned by size and sha256, converted into birdsep's format and installed in the user model folder.

    birdsep models download bird_mixit_m4   # fetch (resumable), verify, convert, install
    birdsep models import DIR               # the same from checkpoint files fetched another way

* **Where** (:func:`models_dir`): ``$BIRDSEP_MODELS_DIR``, else ``$XDG_DATA_HOME/birdsep/models``,
  else ``~/.local/share/birdsep/models``. One folder per installed model (``model.safetensors``,
  ``config.json``, ``card.json``); ``.downloads/<name>/`` holds the checkpoint files while they
  download (``<file>.part``, resumed with an HTTP Range request on the next call) and until the
  model is converted, then it is deleted.
* **From** ``$BIRDSEP_MODELS_URL/<subdir>/<file>`` (default :data:`BASE_URL`, Google's bucket
  over HTTPS), with the standard library's HTTP client.
* **Checked**: each file's size and sha256 against :data:`PUBLISHED` before anything is converted.
* **Installed** by one rename: the converter (``convert`` in
  ``birdsep.separation.architectures.bird_mixit``) writes into a temporary folder beside the
  final one, which is renamed into place only when it holds a whole model.

Each failure is one line (:class:`DownloadError`, a :class:`~birdsep.errors.UsageError`; or a
:class:`~birdsep.errors.StorageError` for a full disk) and leaves no model folder behind: a wrong
size or checksum (the download is deleted), an HTTP error, a dropped connection (the ``.part``
file stays and the next call resumes it), a full disk, a folder that holds other files.
Imports only the standard library and :mod:`birdsep.files` (the HTTP client and tqdm when a
download starts, the converter, and with it PyTorch, when a model is converted).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from birdsep import files
from birdsep.version import __version__
from birdsep.errors import StorageError, UsageError

#: Where the published checkpoints are served (``<BASE_URL>/<subdir>/<file>``); ``$BIRDSEP_MODELS_URL`` overrides it.
BASE_URL = "https://storage.googleapis.com/gresearch/sound_separation/bird_mixit_model_checkpoints"
URL_ENV = "BIRDSEP_MODELS_URL"
#: The user model folder; see :func:`models_dir`.
DIR_ENV = "BIRDSEP_MODELS_DIR"
DOWNLOADS = ".downloads"  # inside the model folder: checkpoint files being fetched
CARD_NAME = "card.json"
#: Where the converter lives (imported when a model is converted): ``convert(checkpoint_dir, out_dir, *, name) -> Path``.
CONVERTER = "birdsep.separation.architectures.bird_mixit"
SOURCE = "google-research/sound-separation, models/bird_mixit"
LICENCE = "Apache-2.0"
CHUNK = 1 << 20  # bytes read per step of a download
TIMEOUT_S = 60.0  # a server silent this long: the transfer counts as interrupted


class DownloadError(UsageError):
    """A published model could not be fetched (HTTP error, no connection, wrong size or checksum);
    ``str(err)`` is one line naming the URL or file and what to do."""


@dataclasses.dataclass(frozen=True)
class Pin:
    """One published file: its name, its size in bytes and its sha256."""

    name: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Published:
    """A published separator: birdsep's name for it (what ``--model`` takes), its folder in the
    bucket, its number of outputs M, its training step and its pinned files."""

    name: str
    subdir: str
    sources: int
    step: int
    files: tuple[Pin, ...]
    sample_rate: int = 22050
    window_ms: float = 1.0  # the learned basis (11-sample hop at 22.05 kHz)
    hop_ms: float = 0.5

    @property
    def checkpoint(self) -> tuple[Pin, ...]:
        """The files the converter reads: the variables (``inference.meta`` holds the graph only)."""
        return tuple(p for p in self.files if p.name.startswith("model.ckpt-"))


#: The two published separators, with the sizes and sha256 a public converter records
#: (nphil/kestrel-audio ``tools/convert_mixit.py``; issue 26).
PUBLISHED: dict[str, Published] = {
    "bird_mixit_m4": Published("bird_mixit_m4", "output_sources4", 4, 3223090, (
        Pin("inference.meta", 3_194_589, "cdc4187475d9b04ba2f25cb60d07276d2209f45dc13dddfb686085922339df31"),
        Pin("model.ckpt-3223090.index", 17_670, "d0f2a6eecdf6b6ed11c05a6d1a185dd2bc0158e53e808b8d6fe2ebacf7f05b85"),
        Pin("model.ckpt-3223090.data-00000-of-00001", 110_260_324,
            "5f95e80d7075dad964554e39aeef706ab5290ee5d5cd7783cea9c36e36c97e42"),
    )),
    "bird_mixit_m8": Published("bird_mixit_m8", "output_sources8", 8, 2178900, (
        Pin("inference.meta", 3_194_589, "7b3051302335f7536f2f8b628c60870c2148ddcadbb44f504016b72ab8adc428"),
        Pin("model.ckpt-2178900.index", 17_676, "6aba0125433ec2a593ce1c58ff02af991053815950af4a6a84bad5534a48bc3c"),
        Pin("model.ckpt-2178900.data-00000-of-00001", 113_406_052,
            "13b367efadc2472fa5357a9f518fdcfe6eb76328ee5990b6e0c56ddb18b8e8ce"),
    )),
}


# ----------------------------------------------------------------------------- where


def models_dir() -> Path:
    """The user model folder: ``$BIRDSEP_MODELS_DIR``, else ``$XDG_DATA_HOME/birdsep/models``
    (an absolute ``XDG_DATA_HOME`` only, as the XDG spec says), else ``~/.local/share/birdsep/models``."""
    given = os.environ.get(DIR_ENV)
    if given:
        return Path(given).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data) if data and os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "birdsep" / "models"


def base_url() -> str:
    return (os.environ.get(URL_ENV) or BASE_URL).rstrip("/")


def published(name: str) -> Published:
    """The published model called ``name``; an unknown name is one line listing the known ones."""
    if name not in PUBLISHED:
        raise UsageError(f"unknown model {name!r}: birdsep can download {', '.join(PUBLISHED)} "
                         "(`birdsep models` lists every model)")
    return PUBLISHED[name]


def installed(name: str) -> Path | None:
    """The folder of the model ``name`` in the user model folder, or None."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return None
    folder = models_dir() / name
    return folder if files.has_weights(folder) else None


# ----------------------------------------------------------------------------- download


def download(name: str, *, force: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """``birdsep models download NAME``: fetch the published files of ``name`` (resuming an
    interrupted download), check them, convert them and install the model.

    Returns (the model's folder, whether it was installed now); an installed model is left as it
    is unless ``force``. The checkpoint files are deleted once the model is installed."""
    model = published(name)
    root = models_dir()
    final = root / model.name
    if files.has_weights(final) and not force:
        return final, False
    cache = root / DOWNLOADS / model.name
    with _locked(root, model.name):
        _check_space(cache, model)
        url = base_url()
        for pin in model.files:
            _fetch(f"{url}/{model.subdir}/{pin.name}", cache / pin.name, pin, progress)
        if progress:
            print(f"{model.name}: {len(model.files)} files checked (size and sha256); converting", file=sys.stderr)
        _install(model, cache, final, force=force, how={
            "how": "birdsep models download", "url": f"{url}/{model.subdir}/",
            "files": {p.name: {"bytes": p.size, "sha256": p.sha256} for p in model.files}})
    shutil.rmtree(cache, ignore_errors=True)
    return final, True


def _fetch(url: str, dest: Path, pin: Pin, progress: bool) -> None:
    """``dest`` = the published file ``pin`` from ``url``, checked; a ``.part`` file an earlier
    call left is continued."""
    if dest.is_file():
        if dest.stat().st_size == pin.size and _sha256(dest) == pin.sha256:
            return
        dest.unlink()  # damaged since it was checked: fetch it again
    part = dest.with_name(dest.name + ".part")
    files.make_folder(dest.parent)
    for _ in range(2):  # a second time from the start if the server refuses to continue the .part
        have = part.stat().st_size if part.is_file() else 0
        if have > pin.size:
            part.unlink()
            have = 0
        if have == pin.size or not _transfer(url, part, have, pin, progress):
            break
        part.unlink(missing_ok=True)
    if not part.is_file():
        raise DownloadError(f"{url}: the server sent no file; nothing installed")
    _verify(part, pin, url)
    os.replace(part, dest)


def _transfer(url: str, part: Path, have: int, pin: Pin, progress: bool) -> bool:
    """Append the rest of ``url`` (from byte ``have``) to ``part``. True: the server cannot continue
    from ``have`` (start again from 0)."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    headers = {"User-Agent": f"birdsep/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # "range not satisfiable": the .part does not fit the file there
            return True
        hint = f" (is ${URL_ENV} right?)" if exc.code == 404 and os.environ.get(URL_ENV) else ""
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}{hint}; nothing installed") from None
    except ValueError:
        raise DownloadError(f"{url}: not a URL (check ${URL_ENV})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: cannot connect ({_reason(exc)}); nothing installed") from None
    with response:
        status = getattr(response, "status", None) or 200
        if status == 206:
            if not response.headers.get("Content-Range", "").replace(" ", "").startswith(f"bytes{have}-"):
                return True
        elif have:  # the server sent the whole file instead of the rest
            have = 0
        length = response.headers.get("Content-Length", "")
        expected = have + int(length) if length.isdigit() else None
        if expected is not None and expected != pin.size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: the server has {expected} bytes, the published file {pin.size}; "
                                "nothing downloaded or installed")
        bar = tqdm(total=pin.size, initial=have, desc=pin.name, unit="B", unit_scale=True, unit_divisor=1024,
                   disable=not progress, leave=False)
        too_long = False
        try:
            with open(part, "ab" if have else "wb") as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, short chunk
                        raise _interrupted(url, have, pin, _reason(exc)) from None
                    if not chunk:
                        break
                    if have + len(chunk) > pin.size:
                        too_long = True
                        break
                    _write(out, chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
        except OSError as exc:  # opening, writing or closing the .part (reading errors are handled above)
            error = files.storage_error(part, exc)
            if error is None:
                raise
            raise StorageError(part, f"{error.reason} (make room and run the same command again: "
                                     "the download continues where it stopped)") from None
        finally:
            bar.close()
    if too_long:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: longer than the published file ({pin.size} bytes); deleted, nothing installed")
    if have < (expected or pin.size):
        raise _interrupted(url, have, pin, "the connection closed early")
    return False


def _write(out, chunk: bytes) -> None:
    """One chunk into the ``.part`` file (a function of its own so that tests can fill the disk)."""
    out.write(chunk)


def _interrupted(url: str, have: int, pin: Pin, reason: str) -> DownloadError:
    return DownloadError(f"{url}: download interrupted at {_mb(have)} of {_mb(pin.size)} ({reason}); "
                         "run the same command again to continue it")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(exc).__name__
    return text[:200]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _verify(path: Path, pin: Pin, where: str) -> None:
    """Size and sha256 of a downloaded file; a file that is not the published one is deleted."""
    size = path.stat().st_size
    if size != pin.size:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{where}: {size} bytes, the published file has {pin.size}; deleted, nothing installed")
    digest = _sha256(path)
    if digest != pin.sha256:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{where}: sha256 {digest[:16]}… is not the published {pin.sha256[:16]}…; "
                            "deleted, nothing installed")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_space(cache: Path, model: Published) -> None:
    """Refuse up front when the disk cannot hold the rest of the download."""
    need = 0
    for pin in model.files:
        if (cache / pin.name).is_file():
            continue
        part = cache / f"{pin.name}.part"
        need += pin.size - (part.stat().st_size if part.is_file() else 0)
    folder = next((p for p in (cache, *cache.parents) if p.is_dir()), None)
    try:
        free = shutil.disk_usage(folder).free if folder is not None else None
    except OSError:
        free = None
    if free is not None and need > free:
        raise StorageError(cache, f"cannot be written: {_mb(need)} to download, {_mb(free)} free")


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One birdsep at a time installs ``name`` (a second one is one line, not a mixed download)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = files.make_folder(root / DOWNLOADS) / f"{name}.lock"
    try:
        handle = open(lock, "a")
    except OSError as exc:
        error = files.storage_error(lock, exc)
        if error is None:
            raise
        raise error from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{name}: another birdsep is installing it right now ({lock}); "
                             "run this again once it has finished") from None
        yield


# ----------------------------------------------------------------------------- import


def import_checkpoints(folder: str | os.PathLike, *, force: bool = False) -> list[tuple[str, Path, bool]]:
    """``birdsep models import DIR``: convert and install the published checkpoint files found in
    ``DIR`` (``model.ckpt-N.index`` + ``.data-00000-of-00001``; or in ``DIR/output_sources4`` and
    ``DIR/output_sources8``, as the bucket lays them out). The user's files are read, never changed.

    Returns (name, folder, installed now) for each model found."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError.of(folder, "no such folder")
    found = _identify(folder)
    for model, where in found:  # every file checked before anything is converted
        for pin in model.checkpoint:
            _check_given(where / pin.name, pin, model)
    done = []
    root = models_dir()
    for model, where in found:
        final = root / model.name
        if files.has_weights(final) and not force:
            done.append((model.name, final, False))
            continue
        with _locked(root, model.name):
            _install(model, where, final, force=force, linked=True, how={
                "how": "birdsep models import", "from": str(where.resolve()),
                "files": {p.name: {"bytes": p.size, "sha256": p.sha256} for p in model.checkpoint}})
        done.append((model.name, final, True))
    return done


def _identify(folder: Path) -> list[tuple[Published, Path]]:
    """The published models whose checkpoint files ``folder`` holds (or its bucket-style subfolders)."""
    def holding(where: Path) -> list[tuple[Published, Path]]:
        return [(m, where) for m in PUBLISHED.values() if any((where / p.name).exists() for p in m.checkpoint)]

    found = holding(folder)
    if not found:
        found = [(m, folder / m.subdir) for m in PUBLISHED.values() if holding(folder / m.subdir)]
    if not found:
        expected = " or ".join(f"{' + '.join(p.name for p in m.checkpoint)} ({m.name})" for m in PUBLISHED.values())
        raise UsageError.of(folder, f"not a published bird MixIT checkpoint: expected {expected}")
    return found


def _check_given(path: Path, pin: Pin, model: Published) -> None:
    """A user's checkpoint file: there, and the published one (size, then sha256)."""
    if not path.is_file():
        raise UsageError.of(path, f"missing ({model.name}'s checkpoint is "
                                  f"{' + '.join(p.name for p in model.checkpoint)})")
    size = path.stat().st_size
    if size != pin.size:
        raise UsageError.of(path, f"{size} bytes, not the published {model.name} file ({pin.size} bytes)")
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise UsageError.of(path, f"cannot be read ({_reason(exc)})") from None
    if digest != pin.sha256:
        raise UsageError.of(path, f"sha256 {digest[:16]}… is not the published {model.name} file's {pin.sha256[:16]}…")


# ----------------------------------------------------------------------------- convert and install


def converter() -> Callable[..., Path]:
    """``convert(checkpoint_dir, out_dir, *, name) -> Path`` of the bird MixIT architecture:
    reads ``model.ckpt-N.index`` + ``.data-00000-of-00001`` in ``checkpoint_dir``, writes
    ``model.safetensors``, ``config.json`` and ``card.json`` into ``out_dir`` (new or empty), and
    raises a one-line UsageError on a checkpoint that does not match. Imported when called."""
    import importlib

    try:
        module = importlib.import_module(CONVERTER)
    except ModuleNotFoundError as exc:
        if exc.name and CONVERTER.startswith(exc.name):
            raise UsageError(f"this birdsep cannot convert bird MixIT checkpoints ({CONVERTER} is missing)") from None
        raise UsageError(f"converting bird MixIT checkpoints needs the Python module {exc.name}, "
                         "which is not installed") from None
    return module.convert


def _install(model: Published, checkpoint: Path, final: Path, *, force: bool, how: dict,
             linked: bool = False) -> None:
    """Convert the checked files in ``checkpoint`` into a temporary folder beside ``final`` and
    rename it into place. ``linked``: the files are the user's; the converter sees links to them in
    a folder of their own."""
    root = files.make_folder(final.parent)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{model.name}.", suffix=".tmp", dir=root))
    except OSError as exc:
        raise (files.storage_error(root, exc) or exc) from None
    try:
        if linked:
            given, checkpoint = checkpoint, work / "checkpoint"
            checkpoint.mkdir()
            for pin in model.checkpoint:
                try:
                    (checkpoint / pin.name).symlink_to((given / pin.name).resolve())
                except OSError:  # no symbolic links here: a copy
                    shutil.copyfile(given / pin.name, checkpoint / pin.name)
        out = work / model.name
        convert = converter()
        try:
            convert(checkpoint, out, name=model.name)
        except OSError as exc:
            error = files.storage_error(final, exc)
            if error is None:
                raise
            raise error from None
        if not files.has_weights(out):
            raise UsageError(f"{model.name}: the converter wrote no model ({files.WEIGHTS_NAME} + {files.CONFIG_NAME})")
        card_path = out / CARD_NAME
        try:
            card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
        except (OSError, ValueError):
            card = {}
        card = card if isinstance(card, dict) else {}
        card.setdefault("source", SOURCE)
        card.setdefault("licence", LICENCE)
        card.setdefault("checkpoint_step", model.step)
        card["installed"] = {**how, "birdsep": __version__}
        files.write_json(card_path, card)
        _place(out, final, work, force)
    except OSError as exc:
        error = files.storage_error(final, exc)
        if error is None:
            raise
        raise error from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _place(made: Path, final: Path, work: Path, force: bool) -> None:
    """Rename the finished ``made`` to ``final``; with ``force`` the model there is replaced (moved
    into ``work`` first, and back if the rename fails)."""
    old = None
    if final.exists() or final.is_symlink():
        if not (force and final.is_dir()):
            raise UsageError.of(final, "already there" + (" and not a folder" if force else " (--force replaces it)"))
        old = work / "replaced"
        os.replace(final, old)
    try:
        os.replace(made, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise


__all__ = ["BASE_URL", "DIR_ENV", "URL_ENV", "PUBLISHED", "Pin", "Published", "DownloadError", "models_dir",
           "base_url", "published", "installed", "download", "import_checkpoints", "converter"]
