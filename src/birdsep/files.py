"""Files: every write atomic, inputs found, outputs named, model weights stored.

* **Atomic writes.** :func:`atomic` yields a temporary path beside the final one and renames
  it into place only when the block succeeds, so a ``kill -9`` never leaves a finished-looking
  half file; every writer in birdsep (audio, tables, JSON, pictures, checkpoints, weights)
  goes through it. A full disk is one :class:`~birdsep.errors.StorageError` line, the
  previous version of the file intact.
* **Inputs.** :func:`find_audio` expands files and folders into ``(file, root)`` pairs;
  :func:`output_path` names a file's outputs under OUT, mirroring the input tree.
* **Weights.** :func:`save_weights` / :func:`load_weights`: ``model.safetensors`` beside
  ``config.json`` = ``{"format_version": 1, "kind": ..., "config": {...}}`` for every model
  kind (separator, classifier). Folders written before ``kind`` was stored (classifier runs)
  still load. Never a pickle.

Imports nothing heavy (safetensors only when weights are read or written).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from birdsep.errors import StorageError, UsageError

#: Extensions collected when a folder is given (libsndfile's formats, MP3 included).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64", ".rf64"}
)

#: Written last into each folder of separated tracks; folder scans leave such folders' audio out.
RESULT_NAME = "separation.json"

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

_UMASK = os.umask(0)
os.umask(_UMASK)


# ----------------------------------------------------------------------------- atomic writes


def temp_beside(final: str | os.PathLike) -> Path:
    """A new empty temporary file beside ``final`` (same folder, so ``os.replace`` is atomic),
    named ``.<name>.<random>.tmp`` and with the mode a normal file would get."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished outputs get the usual mode
    return Path(tmp)


#: errno values of a full file system or quota
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values of an output its file system refuses: no permission, a read-only file system,
#: a file where a folder should be (or a folder where a file should be)
REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def make_folder(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` with its parents (nothing if it is there); one
    :class:`StorageError` line naming it when that cannot be done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = storage_error(path, exc)
        if error is None:
            raise
        raise error from None
    return path


def storage_error(final: str | os.PathLike, exc: BaseException) -> StorageError | None:
    """The one line for an output its file system will not take (full, refused), else None."""
    full = full_disk(exc)
    if full is not None:
        return StorageError(final, f"cannot be written: {os.strerror(full.errno).lower()}")
    if not isinstance(exc, OSError) or exc.errno not in REFUSED:
        return None
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and (in_the_way := file_in_the_way(final)) is not None:
        return in_the_way
    return StorageError(final, f"cannot be written: {os.strerror(exc.errno).lower()}")


def file_in_the_way(folder: str | os.PathLike) -> StorageError | None:
    """The error when ``folder``, or a folder above it, is a file (checked without creating anything)."""
    folder = Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is None:
        return None
    return StorageError(folder, "cannot be written: " + ("it is a file, not a folder" if blocking == folder
                                                         else f"{blocking} is a file, not a folder"))


@contextmanager
def atomic(final: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """``with atomic(path) as tmp: write tmp`` → ``path`` appears complete, or not at all.

    ``durable``: the data reaches the disk before the rename (for files a crash of the whole
    machine must not leave empty, e.g. checkpoints). A full disk raises :class:`StorageError`
    naming ``final``, whose previous version is left as it was.
    """
    tmp = None
    try:
        tmp = temp_beside(final)
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except Exception as exc:
        error = storage_error(final, exc)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def full_disk(exc: BaseException | None) -> OSError | None:
    """The "no space left" error behind ``exc``: itself, or one it was raised while handling
    (``torch.save`` turns it into a RuntimeError)."""
    for _ in range(64):  # along the chain of exceptions raised while handling others
        if exc is None or isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, blob, indent: int = 2) -> None:
    write_text(path, json.dumps(blob, indent=indent, default=str) + "\n")


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files an interrupted earlier run left in ``folder``."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def remove_temps_of(target: Path) -> None:
    """Delete the temporary files of the outputs of ``target``: inside it when it is a folder,
    and those named after it beside it (``.<name>.….tmp``, e.g. ``x.birdsep.results.csv``'s)."""
    import glob

    if target.is_dir():
        remove_stale_temps(target)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- inputs and outputs


def read_list(path: str | os.PathLike, what: str) -> list[str]:
    """A list file: one entry per line, blank lines and ``#`` comments ignored, repeats dropped.
    ``what`` names it in the UsageError raised when it cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError.of(path, f"cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from None
    return list(dict.fromkeys(s for s in (line.split("#", 1)[0].strip() for line in lines) if s))


def find_audio(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Expand files and folders (recursively) into ``(file, root)`` pairs, sorted.

    ``root`` is the folder the user named (or the file's parent), so that outputs can mirror
    the input tree. Inside folders, the tracks of a finished separation (a folder holding
    :data:`RESULT_NAME`) are outputs, not recordings, and are left out; a file named on its
    own is always taken. A missing path raises :class:`UsageError`.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                next(os.scandir(p), None)
            except PermissionError:
                raise UsageError.of(p, "permission denied (this folder cannot be listed)") from None
            tracks: dict[Path, bool] = {}  # folder → holds birdsep's separated tracks

            def separated(folder: Path) -> bool:
                if folder not in tracks:
                    tracks[folder] = (folder / RESULT_NAME).is_file()
                return tracks[folder]

            found += [(f, p) for f in sorted(p.rglob("*"))
                      if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file() and not separated(f.parent)]
        elif p.is_file():
            found.append((p, p.parent))
        else:
            raise UsageError.of(p, "no such file or folder")
    return found


def relative_stem(path: Path, root: Path) -> str:
    """``root/a/b.wav`` → ``a/b``: the name outputs for ``path`` are stored under."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return str(rel.with_suffix(""))


def has_format_twin(path: Path) -> bool:
    """Whether ``path``'s folder holds an audio file of the same name in another format
    (``x.wav`` beside ``x.flac``): then outputs are named after the whole file name."""
    others = {e for ext in AUDIO_EXTENSIONS for e in (ext, ext.upper())} - {path.suffix.lower(), path.suffix.upper()}
    return any(path.with_suffix(e).is_file() for e in others)


def output_path(path: Path, root: Path, out: Path) -> Path:
    """Where the outputs of input ``path`` (found under ``root``) go in ``out``: ``out/a/b``."""
    return out / relative_stem(path, root)


# ----------------------------------------------------------------------------- weights


def save_state(path: str | os.PathLike, state: dict, metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors (CPU, contiguous), atomically."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata)
    with atomic(path) as tmp:
        tmp.write_bytes(blob)  # written by Python, so that a full disk is an OSError (errno ENOSPC)


def save_weights(folder: str | os.PathLike, kind: str, config: dict, state: dict) -> Path:
    """``folder/model.safetensors`` + ``folder/config.json`` ({format_version, kind, config})."""
    folder = Path(folder)
    save_state(folder / WEIGHTS_NAME, state, {"format_version": str(FORMAT_VERSION), "kind": kind})
    write_json(folder / CONFIG_NAME, {"format_version": FORMAT_VERSION, "kind": kind, "config": config})
    return folder


def has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()


def read_config(folder: str | os.PathLike, kind: str) -> dict:
    """The ``config`` of a folder written by :func:`save_weights` for a model of ``kind``.

    Raises :class:`UsageError` naming the folder when it holds no such model. A header
    without ``kind`` (written before it was stored) is accepted for any kind.
    """
    folder = Path(folder)
    if not has_weights(folder):
        raise UsageError.of(folder, f"no {kind} here (expected {WEIGHTS_NAME} and {CONFIG_NAME})")
    try:
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError.of(folder / CONFIG_NAME, f"unreadable model config ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or "config" not in meta:
        raise UsageError.of(folder, f"unsupported model format {meta.get('format_version') if isinstance(meta, dict) else meta!r}")
    if meta.get("kind", kind) != kind:
        raise UsageError.of(folder, f"holds a {meta['kind']}, not a {kind}")
    return meta["config"]


def load_weights(folder: str | os.PathLike, kind: str, device: str = "cpu") -> tuple[dict, dict]:
    """(config, state dict) of a folder written by :func:`save_weights`; a damaged weights file
    (empty, truncated, not safetensors) is one :class:`UsageError` naming it."""
    config = read_config(folder, kind)
    return config, load_state(Path(folder) / WEIGHTS_NAME, device)


def load_state(path: str | os.PathLike, device: str = "cpu") -> dict:
    """The state dict in the safetensors file ``path``; :class:`UsageError` naming the file when
    it cannot be read or is not an intact safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except PermissionError:
        raise UsageError.of(path, "permission denied (cannot read the model's weights)") from None
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError.of(path, f"damaged or unreadable weights file ({reason})") from None


def load_strict(module, state: dict, path: str | os.PathLike) -> None:
    """``module.load_state_dict(state, strict=True)``, where a state of another design (missing,
    unexpected or differently shaped weights) is one :class:`UsageError` line naming ``path``
    and the first differences, not torch's multi-line report."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            problems.append(f"{len(items)} {what}: " + ", ".join(items[:3]) + (" …" if len(items) > 3 else ""))
    if problems:
        raise UsageError.of(path, "weights do not fit the model described by its config ("
                            + "; ".join(problems) + ")")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise UsageError.of(path, f"weights do not fit the model ({str(exc).strip().splitlines()[-1][:200]})") from None


def sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, computed once per path, size and modification time in this process."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
