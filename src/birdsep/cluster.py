"""Ray: the files of a batch as tasks on the workers of a cluster (``--ray [ADDRESS]``).

The batch runner (:mod:`birdsep.batch`) keeps everything a batch means: finding inputs,
skipping finished ones, claims, ``errors.log``, retries, the progress bar and the summary.
This module is only an *executor* for it, the third beside "in this process" and "in worker
processes":

* **Workers.** One Ray actor per worker, each holding the command's work (its models loaded
  once), asking for ``threads`` CPUs and, where the cluster has GPUs and the device allows it,
  one GPU. By default as many workers as the cluster's CPUs (or GPUs) hold when the run starts,
  at most one per file; ``jobs`` sets the number. Each worker settles its own device and
  precision (``--precision auto`` measures on that node's hardware), runs in the driver's
  working directory when its node has it (so relative paths mean the same everywhere) and
  writes its outputs itself, atomically, into OUT: every node must see the inputs and OUT
  at the same paths (shared storage).
* **Files as tasks.** Each idle worker gets the next file from the runner; the result (or the
  error line) comes back as a value, so a file that fails for a reason of its own is reported
  once by the runner and not retried.
* **Faults.** A worker whose process or node dies loses its file: the runner is told
  (:class:`~birdsep.task.Lost`) and gives the file to another worker; a replacement worker
  is started and joins when the cluster has room for it.
* **Progress.** Busy workers are asked about once a second how far their file has got, so the
  bar counts hours of audio across the cluster, within long files too.

``address``: ``local`` starts a Ray instance on this machine (all its cores); ``auto`` joins the
cluster started on this machine with ``ray start``; ``HOST:PORT`` joins a cluster's head;
``ray://HOST:10001`` connects through Ray Client (this machine then needs the shared storage too).
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import time
from typing import Callable

from birdsep.errors import UsageError, require
from birdsep.task import Lost, Result, guarded

ASK_EVERY = 1.0  # seconds between progress questions to a busy worker
WAIT_NOTICE = 60.0  # say so when no worker has been ready for this long
LOCAL_OBJECT_STORE = 100_000_000  # bytes: only small values travel through Ray's object store
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address


class Worker:
    """The code of one Ray worker (made an actor by :class:`RayExecutor`): the command's work,
    built once from a pickled ``(make_worker, args)`` after the environment is set (so that the
    OpenMP settings come before PyTorch is imported). The payload is the driver's own, never a
    user's file."""

    def __init__(self, payload: bytes, threads: int, cwd: str):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # workers sharing a node must not spin
        if os.path.isdir(cwd):
            os.chdir(cwd)
        import ray

        self.where = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, pid {os.getpid()})"
        self.threads, self.current, self.error = threads, None, None
        try:
            import torch

            torch.set_num_threads(threads)
            make_worker, args = pickle.loads(payload)
            self.work = make_worker(*args)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), one line
            self.error = str(exc) if not isinstance(exc, ImportError) else f"{exc} (is birdsep installed on this node?)"

    def ready(self) -> tuple[str, str | None]:
        """(where it runs, why it could not start or None)."""
        return self.where, self.error

    def run(self, path: str, target: str | None) -> Result:
        import torch

        torch.set_num_threads(self.threads)  # OpenMP's thread count is per calling thread: set it in this one
        self.current = (path, 0.0)
        try:
            return guarded(self.work, path, target, lambda fraction: setattr(self, "current", (path, fraction)))
        finally:
            self.current = None

    def progress(self) -> tuple[str, float] | None:
        return self.current


def _ray():
    require("ray", "cluster", "--ray")
    import ray

    return ray


def connect(address: str, verbose: bool = False):
    """Join the Ray cluster at ``address`` (``local``: start one here, for this process alone,
    listening on loopback only). Returns (the ``ray`` module, whether this call connected: a
    caller already connected keeps its connection)."""
    if address == "local":  # Ray's switch for single-machine instances: the loopback address, no other nodes
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return ray, False
    if address not in ("local", "auto"):  # fail in seconds, not after Ray's minutes of retries
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
        except (OSError, ValueError) as exc:
            raise UsageError(f"--ray {address}: no Ray cluster answers there "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
    options = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    if address == "local":
        options.update(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE)
    else:
        options.update(address=address)
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({str(exc).splitlines()[0]})") from None
    return ray, True


def capacity(ray, threads: int, gpus: bool) -> int:
    """How many workers of ``threads`` CPUs (and one GPU each, with ``gpus``) the cluster's
    live nodes hold."""
    total = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            fit = int(have.get("CPU", 0) // threads)
            total += min(fit, int(have.get("GPU", 0))) if gpus else fit
    return total


class RayExecutor:
    """Files on the workers of a Ray cluster (see the module doc); an executor for
    :func:`birdsep.batch.run_batch`."""

    def __init__(self, address: str, make_worker: Callable, worker_args: tuple, *, jobs: int | None, threads: int,
                 device: str = "cpu", files: int = 1):
        self.address = address
        ray, self.connected = connect(address, verbose=logging.getLogger().getEffectiveLevel() <= logging.INFO)
        self.ray = ray
        try:
            gpus = device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) >= 1
            if device == "cuda" and not gpus:
                raise UsageError(f"--device cuda: the Ray cluster at {address} has no GPU")
            room = capacity(ray, threads, gpus)
            if not room and not jobs:
                raise UsageError(f"no node of the Ray cluster at {address} has {threads} CPU(s)"
                                 + (" and a GPU" if gpus else "") + " for a worker; lower --threads")
            self.wanted = max(1, min(jobs or room, files))
            payload = ray.cloudpickle.dumps((make_worker, worker_args))  # by value where it must be (a script's own)
            self.actor = ray.remote(Worker).options(num_cpus=threads, num_gpus=1 if gpus else 0, max_concurrency=2,
                                                    max_restarts=0)
            self.new_worker = lambda: self.actor.remote(payload, threads, os.getcwd())
        except BaseException:
            self._disconnect()
            raise
        self.starting: dict = {}  # ready() ref → actor
        self.idle: list = []
        self.running: dict = {}  # run() ref → (actor, path)
        self.asking: dict = {}  # progress() ref → actor
        self.where: dict = {}  # actor → "host (node address, pid …)"
        self.last_ask = self.since_ready = time.monotonic()
        self.noticed = False
        for _ in range(self.wanted):
            self._start()

    # --------------------------------------------------------------- the executor protocol

    @property
    def free(self) -> int:
        return len(self.idle)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, path: str, target: str | None) -> None:
        actor = self.idle.pop()
        self.running[actor.run.remote(path, target)] = (actor, path)

    def poll(self, timeout: float, progress: Callable[[str, float], None]) -> list:
        ray = self.ray
        self._ask()
        refs = [*self.starting, *self.running, *self.asking]
        if not refs:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        outcomes = []
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
            elif ref in self.running:
                outcomes.append(self._finished(ref))
            else:
                self.asking.pop(ref)
                try:
                    current = ray.get(ref)
                except ray.exceptions.RayError:
                    continue
                if current is not None:
                    progress(*current)
        self._notice()
        return outcomes

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for actor in [*self.starting.values(), *self.idle, *(a for a, _ in self.running.values())]:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._disconnect()

    def _disconnect(self) -> None:
        if self.connected:  # a local instance started here stops with it
            self.ray.shutdown()

    # --------------------------------------------------------------- workers coming and going

    def _start(self) -> None:
        actor = self.new_worker()
        self.starting[actor.ready.remote()] = actor

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            where, error = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:  # its node went away while it started
            self._start()
            return
        except self.ray.exceptions.RayError as exc:
            raise UsageError(f"a Ray worker could not start ({str(exc).splitlines()[0]})") from None
        if error:
            raise UsageError(f"the Ray worker on {where} could not start: {error}")
        self.where[actor] = where
        self.idle.append(actor)
        self.since_ready = time.monotonic()

    def _finished(self, ref):
        actor, path = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # not an error of the work (guarded catches those)
            self.idle.append(actor)
            return path, None, f"{path}: internal error on a Ray worker ({str(exc).splitlines()[0]})", str(exc)
        except self.ray.exceptions.RayError as exc:  # the worker or its node died
            self._start()
            return Lost(path, f"its Ray worker on {self.where.pop(actor, '?')} was lost ({type(exc).__name__})")
        self.idle.append(actor)
        return result

    def _ask(self) -> None:
        """Ask the busy workers how far they are (at most one question each in flight)."""
        if time.monotonic() - self.last_ask < ASK_EVERY:
            return
        self.last_ask = time.monotonic()
        asked = set(map(id, self.asking.values()))
        for actor, _ in self.running.values():
            if id(actor) not in asked:
                self.asking[actor.progress.remote()] = actor

    def _notice(self) -> None:
        if self.noticed or self.idle or self.running or time.monotonic() - self.since_ready < WAIT_NOTICE:
            return
        self.noticed = True
        print(f"birdsep: waiting for Ray workers: {len(self.starting)} asked for, none has started yet "
              f"(does the cluster at {self.address} have free resources?)", file=sys.stderr)
