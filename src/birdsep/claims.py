"""Claims: several runs writing into one output folder share its files instead of doing them twice.

Two runs on the same OUT (two cluster jobs started by mistake, SLURM jobs split by hand, a
``birdsep separate`` left running in another terminal) must not both work on a file. Before a
run works on an input it *claims* it: ``OUT/.birdsep/claims/<name>.claim`` appears by
``os.link`` of a complete temporary file, which succeeds for exactly one run, on local disks
and on NFS alike. The claim names its run; the run keeps a *lease*
(``OUT/.birdsep/runs/<run>.json``) whose modification time a thread refreshes every
:data:`HEARTBEAT` seconds while it lives.

* A file claimed by a live run is left to it ("busy"); once that run has finished it, this
  run finds it done and skips it.
* A file a run *failed* keeps its claim, marked failed with the time, after that run ends:
  a run that was already going when the file failed neither retries it nor logs it a second
  time; a run started later retries it (and takes the mark over), as a re-run does without
  claims.
* A claim is *stale* when its run's lease is gone, or older than :data:`LEASE` seconds, or
  its process is gone (same host only; a process is known by its pid and its start time, so
  a pid the system has since given to another process does not keep a dead run alive). A
  stale claim is taken over: renamed away (only one run's rename succeeds), checked to be
  the claim that was judged stale, then claimed anew.
* At its end, an interrupted one included, a run removes its lease and its claims but the
  failed marks, so a folder without failures is left as it was. A run killed with
  ``kill -9`` leaves them; they go stale after :data:`LEASE` seconds (at once for a process
  on the same host), and the next run clears them when it starts (:meth:`Claims.sweep`):
  the dead run's lease and its claims but the failed marks, whether or not it works on
  their files.

Clocks: staleness compares a lease's modification time with this host's clock; a lease of
two minutes absorbs the skew of ordinary NTP-synchronised nodes.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from birdsep import files

FOLDER = ".birdsep"  # under OUT: claims/ and runs/
HEARTBEAT = 15.0  # seconds between lease refreshes
LEASE = 120.0  # a lease not refreshed for this long belongs to a dead run
MINE, BUSY, FAILED = "mine", "busy", "failed"


class Claims:
    """This run's claims on the files of one output folder ``out`` (see the module doc).

    Use as a context manager: it takes the lease on entry and gives everything back on exit.
    """

    def __init__(self, out: Path, started: float | None = None):
        """``started``: when the run began (default now); see :meth:`take`."""
        self.out = Path(out)
        self.root = self.out / FOLDER
        self.claims_dir, self.runs_dir = self.root / "claims", self.root / "runs"
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.run = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.lease = self.runs_dir / f"{self.run}.json"
        self.mine: dict[Path, str] = {}  # claim file → state
        self.started = time.time() if started is None else started
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ the run's lease

    def __enter__(self) -> "Claims":
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.claims_dir.glob(".*.tmp"):  # left by a run killed while it claimed
            if _age(tmp) > LEASE:
                tmp.unlink(missing_ok=True)
        files.write_json(self.lease, self._lease_record())
        self.sweep()
        self._beat = threading.Thread(target=self._heartbeat, name="birdsep-lease", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        for claim, state in list(self.mine.items()):
            if state != FAILED:  # a failed mark stays (see the module doc)
                self._drop(claim)
        self.mine.clear()
        self.lease.unlink(missing_ok=True)
        for folder in (self.claims_dir, self.runs_dir, self.root):  # only if nobody else uses them
            try:
                folder.rmdir()
            except OSError:
                pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.lease)
            except FileNotFoundError:  # removed by hand: put it back
                files.write_json(self.lease, self._lease_record())
            except OSError:
                pass  # storage hiccup: try again at the next beat

    def _lease_record(self) -> dict:
        return {"run": self.run, "host": self.host, "pid": self.pid, "pid_start": process_start(self.pid),
                "started": time.time()}

    def sweep(self) -> None:
        """Remove what dead runs left (a run killed with ``kill -9``): their claims but the
        failed marks, then their leases. Live runs' files are not touched."""
        try:
            claims = list(self.claims_dir.glob("*.claim"))
            leases = [lease for lease in self.runs_dir.glob("*.json") if lease != self.lease]
        except OSError:
            return
        for claim in claims:
            owner = _read(claim)
            if owner is None or owner.get("state") == FAILED:
                continue  # unreadable ones are judged by their age in take(); failed marks stay
            if not self.alive(owner.get("run", ""), owner.get("host"), owner.get("pid"), owner.get("pid_start")):
                try:
                    self._take_over(claim, owner)
                except OSError:
                    continue  # the storage refused: another sweep or take() will get to it
        for lease in leases:
            record = _read(lease)
            if record is None:
                if _age(lease) > LEASE:
                    lease.unlink(missing_ok=True)
                continue
            if not self.alive(lease.stem, record.get("host"), record.get("pid"), record.get("pid_start")):
                lease.unlink(missing_ok=True)

    # ------------------------------------------------------------------ claims

    def path(self, target: Path) -> Path:
        """The claim file of an input whose outputs go to ``target`` (a path under OUT)."""
        try:
            rel = Path(target).resolve().relative_to(self.out.resolve())
        except ValueError:
            rel = Path(target)
        digest = hashlib.sha1(str(rel).encode()).hexdigest()[:12]
        return self.claims_dir / f"{rel.name[:60]}-{digest}.claim"

    def take(self, target: Path) -> str:
        """Claim ``target``: :data:`MINE` (this run may work on it), :data:`BUSY` (a live run
        works on it) or :data:`FAILED` (a live run failed it, or a run that failed it while this
        one was going)."""
        claim = self.path(target)
        if claim in self.mine:
            return MINE
        for _ in range(5):
            if self._create(claim, target):
                return MINE
            owner = _read(claim)
            if owner is None:  # vanished between the two calls, or unreadable
                if claim.exists() and _age(claim) > LEASE:
                    claim.unlink(missing_ok=True)  # a claim nobody can read: garbage
                continue
            failed = owner.get("state") == FAILED
            if self.alive(owner.get("run", ""), owner.get("host"), owner.get("pid"), owner.get("pid_start")):
                return FAILED if failed else BUSY
            if failed and owner.get("since", 0) >= self.started:  # failed by a run that overlapped this one
                return FAILED
            self._take_over(claim, owner)
        return BUSY

    def failed(self, target: Path, line: str) -> None:
        """Mark this run's claim on ``target`` as failed (the mark outlives the run)."""
        claim = self.path(target)
        if claim in self.mine:
            files.write_json(claim, {**self._record(target), "state": FAILED, "error": line})
            self.mine[claim] = FAILED

    def release(self, target: Path) -> None:
        """Give up the claim on ``target`` (its outputs are complete, or it goes back to the queue)."""
        claim = self.path(target)
        if self.mine.pop(claim, None) is not None:
            self._drop(claim)

    def _drop(self, claim: Path) -> None:
        """Remove ``claim`` if it is still this run's (not if it was taken over while this run's
        lease had lapsed)."""
        if (_read(claim) or {}).get("run") == self.run:
            claim.unlink(missing_ok=True)

    def alive(self, run: str, host: str | None = None, pid: int | None = None, pid_start: int | None = None
              ) -> bool:
        """Whether the run ``run`` still holds its lease: a fresh one, and (on this host) its
        process ``pid`` lives, and is the one that started at ``pid_start`` where that is known."""
        if run == self.run:
            return True
        lease = self.runs_dir / f"{run}.json"
        try:
            fresh = time.time() - lease.stat().st_mtime < LEASE
        except OSError:
            return False
        if fresh and host == self.host and pid:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return False
            except (PermissionError, ValueError, OverflowError):
                pass
            if pid_start is not None and process_start(pid) not in (None, pid_start):
                return False  # the pid now names another process: the run is dead
        return fresh

    def _record(self, target: Path) -> dict:
        return {"run": self.run, "host": self.host, "pid": self.pid, "pid_start": process_start(self.pid),
                "target": str(target), "state": "working", "since": time.time()}

    def _create(self, claim: Path, target: Path) -> bool:
        """Make ``claim`` appear complete, unless it exists (``link`` is atomic and exclusive)."""
        tmp = files.temp_beside(claim)
        try:
            tmp.write_text(json.dumps(self._record(target)))
            os.link(tmp, claim)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.mine[claim] = "working"
        return True

    def _take_over(self, claim: Path, owner: dict) -> None:
        """Remove the stale claim ``owner``; if another run replaced it meanwhile, put that one back."""
        grave = claim.with_name(f"{claim.name}.{self.run}.stale")
        try:
            os.rename(claim, grave)
        except FileNotFoundError:
            return  # another run took it over first
        try:
            if _read(grave) != owner:  # a fresh claim made since we read the stale one: give it back
                try:
                    os.link(grave, claim)
                except FileExistsError:
                    pass
        finally:
            grave.unlink(missing_ok=True)


def process_start(pid) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None where that is
    unknown: with its pid, it names one process, as a pid alone does not once reused."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError, TypeError, OverflowError):
        return None


def tidy(out: Path) -> None:
    """Clear what dead runs left in ``out`` (:meth:`Claims.sweep`), for a run with nothing to do."""
    from birdsep.errors import StorageError

    if (Path(out) / FOLDER).is_dir():
        try:
            with Claims(out):
                pass
        except (OSError, StorageError):  # a folder this run may not write: what is left stays
            pass


def _read(claim: Path) -> dict | None:
    try:
        blob = json.loads(claim.read_text())
    except (OSError, ValueError):
        return None
    return blob if isinstance(blob, dict) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
