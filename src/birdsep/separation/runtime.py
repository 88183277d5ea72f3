"""Where and in what arithmetic a separator runs: the device and precision policy, in one place.

Every command that runs a separator (``separate``, ``classify``, the Python API, the web page)
takes the same two flags, added by :func:`add_flags`, and turns them into a :class:`Runtime`
with :func:`resolve`:

* ``--device auto|cpu|cuda`` (default ``auto``: a CUDA GPU when there is one). ``cuda``
  without a GPU is a :class:`~birdsep.errors.UsageError`, raised before any file is touched.
* ``--precision auto|fp32|bf16`` (default ``auto``). ``auto`` measures, on a probe recording
  the caller passes (real birdsong at the model's rate), the inference engine in fp32 and bf16
  and takes bf16 only if

  - every source stays within ``MIN_SI_SNR_DB`` (40 dB) SI-SNR of fp32's, and
  - bf16 is at least ``MIN_SPEEDUP`` (1.15×) faster here.

  Timing on a shared machine is noisy (a single measurement taken while another job ran once
  read 0.89× where a calm one read 1.58×), so each measurement times the two precisions in
  alternation ``TIMINGS`` times and keeps the best time of each; a measurement is *in doubt*
  when its timings scatter (median more than ``NOISY`` × the best) or its speed-up lies within
  ``DOUBT`` of the threshold, and then it is repeated, pooling the timings, up to ``ROUNDS``
  times. Only a choice no longer in doubt is remembered on disk (``choices_file()``, keyed by
  the weights, the processor, PyTorch and these rules); one in doubt is measured again by the
  next process. :attr:`Runtime.reason` says in words why the precision was chosen; ``birdsep
  separate`` records it in ``separation.json``.

The module imports PyTorch only when it resolves a device or measures.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from birdsep.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

MIN_SI_SNR_DB = 40.0  # a reduced precision is used only if its sources stay this close to fp32's
MIN_SPEEDUP = 1.15  # … and only if it is at least this much faster
TIMINGS = 5  # alternating timings of each precision per measurement round; the best one counts
ROUNDS = 3  # at most this many rounds while the measurement is in doubt
NOISY = 1.3  # timings in doubt: median above this × the best
DOUBT = 0.15  # speed-up in doubt: within ±15 % of MIN_SPEEDUP
PROBE_SECONDS = 2.0  # probe length the callers pass (seconds of audio at the model's rate)

_choices: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {device: choice}


@dataclass(frozen=True)
class Runtime:
    """A resolved ``--device`` / ``--precision``: what a separator runs on, and why."""

    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    reason: str = "fp32 as asked"

    def to_dict(self) -> dict:
        return asdict(self)


def add_flags(parser) -> None:
    """Add ``--device`` and ``--precision`` (the same choices and defaults for every command)."""
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the separator runs (default auto: a CUDA GPU if there is one)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help=f"separator arithmetic (default auto: bf16 where measured ≥ {MIN_SPEEDUP:g}× faster here "
                             f"and within {MIN_SI_SNR_DB:g} dB SI-SNR of fp32, else fp32)")


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is there, else ``cpu``; ``cuda`` without one is a UsageError."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r} ({' | '.join(DEVICES)})")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("--device cuda asked for, but no CUDA device is available (use --device cpu or auto)")
    return "cpu"


def resolve(device: str = "auto", precision: str = "auto", model=None, probe=None) -> Runtime:
    """The :class:`Runtime` for the flags' values. ``precision="auto"`` needs the ``model`` and a
    ``probe`` recording to measure on: (T,) float32 at the model's rate, or a function returning
    it (called only when a measurement is needed), e.g. ``partial(pretrained.probe_audio, rate)``."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} ({' | '.join(PRECISIONS)})")
    dev = resolve_device(device)
    if precision != "auto":
        return Runtime(dev, precision, f"{precision} as asked")
    if model is None or probe is None:
        return Runtime(dev, "fp32", "fp32: nothing to measure on")
    choice = choose_precision(model, dev, probe)
    return Runtime(dev, choice["precision"], choice["reason"])


def settle(device: str = "auto", precision: str = "auto", *, load=None, model=None, given: Runtime | None = None):
    """``(separator, Runtime)``: where ``--device`` and ``--precision`` become a choice, the one
    function every command, the API, the page and each Ray worker call.

    ``load``: a function ``device -> separator`` (the model is loaded on the settled device), or
    ``model``: a separator already loaded; neither: no separator (fp32, nothing to choose; ``auto``
    is the CPU, and PyTorch is not imported). ``given``: a Runtime settled before (by the driver, by the page's first job),
    kept as it is, so nothing is measured twice; the model is then loaded on its device.
    ``auto`` precision measures on the bundled probe recording at the model's rate."""
    if given is not None:
        dev = given.device
    elif load is None and model is None and device == "auto":
        dev = "cpu"  # no separator: nothing runs on a GPU (BirdNET runs in LiteRT), and PyTorch is not loaded
    else:
        dev = resolve_device(device)
    if load is not None:
        model = load(dev)
    if given is not None:
        return model, given
    if model is None:
        return None, Runtime(dev, "fp32", "no separator")
    from birdsep.pretrained import probe_audio

    return model, resolve(dev, precision, model, partial(probe_audio, model.config.sample_rate))


# ----------------------------------------------------------------------------- measuring


def choose_precision(model, device: str, probe) -> dict:
    """What ``--precision auto`` picks for ``model`` on ``device``, measured on ``probe``.

    Returns {"precision", "si_snr_db", "speedup", "rounds", "confident", "reason"}. Remembered
    for the process per model and device, and on disk when confident.
    """
    cache = _choices.setdefault(model, {})
    if device not in cache:
        key = _machine_key(model, device)
        stored = _read_choices().get(key)
        if isinstance(stored, dict) and "precision" in stored and "reason" in stored:
            choice = {**stored, "reason": f"{stored['reason']} (remembered from {stored.get('measured', 'earlier')}; "
                                          f"delete {choices_file()} to measure again)"}
        else:
            choice = _measure(model, device, probe)
            if choice["confident"]:
                _store_choice(key, {**choice, "measured": time.strftime("%Y-%m-%d %H:%M")})
        cache[device] = choice
    return cache[device]


def forget(model) -> None:
    """Drop the precision choice remembered in this process for ``model`` (not the disk cache)."""
    _choices.pop(model, None)


def _measure(model, device: str, probe) -> dict:
    """On the CPU, measured as blocks are separated there (:func:`~birdsep.separation.apply.separated_blocks`):
    in a thread of its own with one PyTorch thread."""
    import torch

    if torch.device(device).type != "cpu":
        return _measure_here(model, device, probe)
    from concurrent.futures import ThreadPoolExecutor

    def one_thread():
        torch.set_num_threads(1)
        return _measure_here(model, device, probe)

    threads_before = torch.get_num_threads()  # the process's, which one_thread changes too
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="birdsep-measure") as pool:
            return pool.submit(one_thread).result()
    finally:
        torch.set_num_threads(threads_before)


def _measure_here(model, device: str, probe) -> dict:
    import torch

    from birdsep.separation.apply import DEFAULT_BLOCK_SECONDS
    from birdsep.separation.engine import engine_for
    from birdsep.separation.mixit import si_snr

    x = torch.as_tensor(probe() if callable(probe) else probe, dtype=torch.float32).reshape(1, -1)
    block = int(DEFAULT_BLOCK_SECONDS * model.config.sample_rate)  # timed on what is separated: a block
    x = x.repeat(1, -(-block // max(1, x.shape[1])))[:, :block].to(device)
    fp32 = engine_for(model, "fp32", device)
    try:
        bf16 = engine_for(model, "bf16", device)
        ref, low = fp32(x), bf16(x)  # also the warm-up of each
        quality = float(si_snr(ref[0].double(), low[0].double()).min())
    except RuntimeError:  # no bf16 kernels on this device
        return _decision("fp32", float("-inf"), 0.0, 0, True, "fp32: bf16 does not run on this device")
    if quality < MIN_SI_SNR_DB:  # deterministic: no timing needed, never in doubt
        return _decision("fp32", quality, 0.0, 0, True, f"fp32: bf16 puts a source only {quality:.1f} dB SI-SNR "
                                                          f"from fp32 (< {MIN_SI_SNR_DB:g} dB)")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for rounds in range(1, ROUNDS + 1):
        for _ in range(TIMINGS):  # alternating, so that a busy spell slows both alike
            times["fp32"].append(_time(fp32, x))
            times["bf16"].append(_time(bf16, x))
        best = {p: min(t) for p, t in times.items()}
        speedup = best["fp32"] / best["bf16"]
        noisy = max(sorted(t)[len(t) // 2] / best[p] for p, t in times.items()) > NOISY
        close = abs(speedup / MIN_SPEEDUP - 1) < DOUBT
        if not (noisy or close):
            break
    precision = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    why = ("≥" if precision == "bf16" else "<") + f" {MIN_SPEEDUP:g}×"
    # close to the threshold after every round: the two are about as fast, and either choice is
    # kept (measuring again at each start would cost more than it could gain); noisy timings
    # (a busy machine) are measured again by the next process
    reason = (f"{precision}: bf16 measured {speedup:.2f}× as fast as fp32 ({why}; best of {len(times['fp32'])} "
              f"alternating timings each on {x.shape[-1] / model.config.sample_rate:g} s of audio), worst source "
              f"{quality:.1f} dB SI-SNR from fp32 (≥ {MIN_SI_SNR_DB:g} dB)"
              + ("; close to the threshold: the two are about as fast" if close else "")
              + ("; still in doubt (noisy timings), so it is measured again next time" if noisy else ""))
    return _decision(precision, quality, speedup, rounds, not noisy, reason)


def _decision(precision: str, quality: float, speedup: float, rounds: int, confident: bool, reason: str) -> dict:
    return {"precision": precision, "si_snr_db": round(quality, 1), "speedup": round(speedup, 2), "rounds": rounds,
            "confident": confident, "reason": reason}


def _time(engine, x) -> float:
    t = time.perf_counter()
    engine(x)
    if x.is_cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- the disk cache


def choices_file() -> Path:
    """Where measured precision choices are kept ($BIRDSEP_CACHE or ~/.cache/birdsep)."""
    root = os.environ.get("BIRDSEP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "birdsep"
    return Path(root) / "precision_choices.json"


def _machine_key(model, device: str) -> str:
    import torch

    from birdsep.separation.engine import signature

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if torch.device(device).type == "cuda":
        processor = torch.cuda.get_device_name(torch.device(device))
    else:
        processor = f"{platform.machine()} {_cpu_name()} {torch.backends.cpu.get_cpu_capability()}"
    rules = f"v3/{MIN_SI_SNR_DB}/{MIN_SPEEDUP}/{TIMINGS}x{ROUNDS}/{NOISY}/{DOUBT}/{signature(model)}"
    return f"{digest.hexdigest()[:16]} | {processor} | torch {torch.__version__} | {rules}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _read_choices() -> dict:
    try:
        data = json.loads(choices_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_choice(key: str, choice: dict) -> None:
    from birdsep.files import write_json

    try:
        write_json(choices_file(), {**_read_choices(), key: choice}, indent=1)
    except OSError:  # a read-only home: measure again next time
        pass


# ----------------------------------------------------------------------------- the process


def tune_allocator() -> None:
    """Keep large freed blocks in glibc's heap instead of returning them to the kernel.

    Every activation of a long block is tens of MB; by default glibc hands such blocks back
    with munmap/trim and the next forward pass page-faults them in again (measured: up to
    440 000 page faults, ~0.6 s, per 6 s forward of the paper preset). Process-wide, so only
    the command line (which owns its process) calls it; memory then stays at the peak a block
    needs, which is flat in file length.
    """
    if sys.platform != "linux" or getattr(tune_allocator, "done", False):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest allowed value
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
    tune_allocator.done = True
